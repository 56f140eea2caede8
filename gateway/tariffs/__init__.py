"""Tariffs: versioned price data and pure, exact pricing of energy intervals and standing charges.

``model`` holds the frozen tariff values and their strict loaders, ``pricing`` prices an interval,
``apportion`` splits integer energy exactly and ``timeline`` cuts an interval where prices change.
"""

"""Lawful pay-before-use enforcement policy: pure decisions with rule traces (see ``decide``)."""

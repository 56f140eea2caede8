"""pmg: the prepaid meter gateway daemon (ledger, policy, enforcement, sync, CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prepaid-meter-gateway")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

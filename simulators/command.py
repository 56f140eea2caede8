"""What the simulators' commands share: their options, serving until a signal, the fast-clock warning.

``pmg sim dlt645``, ``pmg sim modbus`` and ``pmg sim fleet`` are click commands like the rest of
``pmg`` (``python -m simulators.dlt645`` runs the same command).  They say the same thing the same
way: ``--meters N``, ``--power-w W``, ``--speed X``, ``--tcp PORT`` or ``--pty``, ``--host``,
``--baud``; a number out of range (``nan`` included) is one line and exit status 2 before anything
is served.  The simulators import nothing of the gateway, so the finite-number type is this
package's own.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# The validity the gateway gives a DL/T 645 trip command (gateway/store/relay_queue.py, RELAY_VALIDITY;
# tests/unit/simulators/test_sim_command.py keeps the two equal).  A meter refuses a command whose
# deadline its own clock has passed (DL/T 645-2007 relay control, N3..N8; docs/sources/protocols.md).
GATEWAY_RELAY_VALIDITY_S = 30 * 60


class Finite(click.FloatRange):
    """A float within a range that also refuses ``nan`` and ``inf`` (``FloatRange`` lets ``nan`` through:
    every comparison with it is false, and a ``nan`` speed would reach a clock)."""

    name = "finite number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def meters_option(maximum: int, what: str) -> Callable[[F], F]:
    return click.option(
        "--meters",
        type=click.IntRange(1, maximum),
        default=None,
        help=f"Number of meters on the bus, 1-{maximum}: {what}.  [default: 1]",
    )


def power_option(f: F) -> F:
    return click.option(
        "--power-w",
        type=click.IntRange(0, 10_000_000),
        default=None,
        help="Constant load of each meter in watts while its relay is closed.  [default: 500]",
    )(f)


def speed_option(f: F) -> F:
    return click.option(
        "--speed",
        type=Finite(1e-6, 1e6),
        default=1.0,
        show_default=True,
        help="The meters' clocks run this many times faster than real time (energy accrues faster).",
    )(f)


def where_options(f: F) -> F:
    """``--tcp PORT`` or ``--pty`` (exactly one; :func:`endpoint` checks), and ``--host``."""
    f = click.option(
        "--host", default="127.0.0.1", show_default=True, help="Address to listen on with --tcp."
    )(f)
    f = click.option("--pty", is_flag=True, help="Serve on a new pseudo-terminal (its path is printed).")(f)
    return click.option(
        "--tcp",
        type=click.IntRange(0, 65535),
        metavar="PORT",
        default=None,
        help="Serve on this TCP port (0: any free port; the URL is printed).",
    )(f)


def endpoint(tcp: int | None, pty: bool) -> None:
    """Exactly one of ``--tcp`` and ``--pty``: a usage error otherwise."""
    if (tcp is None) == (not pty):
        raise click.UsageError("give exactly one of --tcp PORT and --pty")


def alias(value: Any, old: Any, new_name: str, old_name: str, default: Any) -> Any:
    """The value of an option that also answers to an earlier, hidden name (``--units``, ``--watts``)."""
    if value is not None and old is not None:
        raise click.UsageError(f"{old_name} is the earlier name of {new_name}: give one of them")
    if value is not None:
        return value
    return old if old is not None else default


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set.  Called before the simulator says where it listens, so a
    signal sent as soon as that line is read stops it cleanly (exit 0, ``stopped``)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    return stop


def serve_until(stop: threading.Event) -> None:
    """Block until ``stop`` is set (by a signal: :func:`stop_on_signals`)."""
    while not stop.wait(0.5):
        pass


def refusal_after_s(speed: float, validity_s: float = GATEWAY_RELAY_VALIDITY_S) -> float | None:
    """Real seconds after which meter clocks running ``speed`` times real time are ``validity_s`` ahead
    of a real-time gateway, so every command it sends has expired on arrival; None when never."""
    if speed <= 1:
        return None
    return validity_s / (speed - 1)


def _span(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def fast_clock_warning(speed: float, setting: str | None = None) -> str | None:
    """One line for a DL/T 645 simulator whose clock outruns the gateway's relay command validity.

    A simulated meter checks a relay command's deadline against its own clock, which runs ``speed``
    times real time; the gateway's clock runs at real time.  Once the meters are a validity ahead,
    every trip the gateway sends is refused as expired, which the gateway reports as ``refused relay
    trip: other`` (the abnormal reply's only flag for it).  Said once, at start; ``setting`` names where
    the speed came from (by default ``--speed X``; the fleet names its file's ``speed``).
    """
    after = refusal_after_s(speed)
    if after is None:
        return None
    return (
        f"warning: {setting or f'--speed {speed:g}'} runs the meters' clocks {speed:g}x real time: after "
        f"{_span(after)} they "
        f"are {_span(GATEWAY_RELAY_VALIDITY_S)} (the validity of the gateway's relay commands) ahead of a "
        "real-time gateway and refuse every trip as expired ('refused relay trip: other'); "
        "use speed 1 to test relay control"
    )


def warn(line: str | None) -> None:
    """A start-up warning: one line on stderr, so stdout keeps only where to connect."""
    if line:
        print(line, file=sys.stderr, flush=True)

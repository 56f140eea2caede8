"""``pmg sim dlms``: serve simulated DLMS/COSEM meters until Ctrl-C or SIGTERM.

Examples: ``pmg sim dlms --pty --meters 3`` serves HDLC physical addresses 17..19 on one new
pseudo-terminal (its path is printed); ``--tcp 4059 --wrapper`` serves one meter on the DLMS/COSEM TCP
wrapper (IEC 62056-9-7), while ``--tcp PORT`` alone carries HDLC over TCP as a serial device server
would (the gateway's URL is ``socket://host:port``).  ``--opening iec62056-21`` makes the meter an
optical port that needs the IEC 62056-21 mode E opening (``mode-c``: one that answers the sign-on
without mode E).  The meters are ``simulators.dlms_meter``'s on the Gurux peer
(``simulators.dlms_line`` for HDLC); options shared with the other simulators: simulators/command.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import click

from simulators.command import (
    endpoint,
    meters_option,
    power_option,
    serve_until,
    speed_option,
    stop_on_signals,
    where_options,
)
from simulators.dlms_line import BAUD_CHARS, DlmsLine
from simulators.dlms_meter import FAULTS, DlmsMeterModel, DlmsTcpServer
from simulators.model import FastClock


def clock_now(clock: FastClock) -> datetime:
    """The fast clock as the aware datetime a ``DlmsMeterModel`` keeps."""
    return datetime.fromtimestamp(clock(), UTC)


@click.command("dlms", context_settings={"help_option_names": ["-h", "--help"]})
@meters_option(100, "HDLC physical addresses --address .. --address+N-1 on one line")
@click.option(
    "--address",
    "first",
    type=click.IntRange(16, 0x3FFD),
    default=17,
    show_default=True,
    help="HDLC physical address of the first meter (the others follow).",
)
@where_options
@click.option("--wrapper", is_flag=True, help="With --tcp: the DLMS/COSEM TCP wrapper (one meter) instead of HDLC.")
@click.option(
    "--baud",
    type=click.IntRange(300, 115200),
    default=None,
    help="Pace replies at this line speed (with --opening: the baud the meter offers, 300-19200).  "
    "[default: as fast as the pty or socket goes; 9600 offered]",
)
@click.option(
    "--opening",
    type=click.Choice(["iec62056-21", "mode-c"]),
    default=None,
    help="Require the IEC 62056-21 mode E opening before HDLC (one meter; mode-c: answer without mode E).",
)
@power_option
@speed_option
@click.option("--control-mode", type=click.IntRange(0, 6), default=1, show_default=True, help="Class 70 control mode.")
@click.option("--fault", type=click.Choice([f for f in FAULTS if f]), default=None, help="Every meter shows this fault.")
def command(
    meters: int | None,
    first: int,
    tcp: int | None,
    pty: bool,
    host: str,
    wrapper: bool,
    baud: int | None,
    opening: str | None,
    power_w: int | None,
    speed: float,
    control_mode: int,
    fault: str | None,
) -> None:
    """Serve simulated DLMS meters (HDLC on a pseudo-terminal or TCP, or the TCP wrapper) until Ctrl-C or SIGTERM."""
    endpoint(tcp, pty)
    count = meters or 1
    if wrapper and (pty or count > 1 or opening):
        raise click.UsageError("--wrapper serves one meter on --tcp, without --opening")
    if opening and count > 1:
        raise click.UsageError("--opening is point to point (an optical port): one meter only")
    if opening and baud is not None and baud not in BAUD_CHARS:
        raise click.UsageError(f"--opening needs a mode E baud: one of {', '.join(map(str, BAUD_CHARS))}")
    if first + count - 1 > 0x3FFD:
        raise click.UsageError(f"HDLC addresses {first}..{first + count - 1} exceed 16381")
    clock = FastClock(speed)
    models = {
        first + i: DlmsMeterModel(
            power_w=Decimal(500 if power_w is None else power_w),
            control_mode=control_mode,
            fault=fault,
            now=lambda: clock_now(clock),
        )
        for i in range(count)
    }
    stop = stop_on_signals()
    if wrapper:
        server = DlmsTcpServer(models[first], host=host, port=tcp or 0).start()
        print(f"DLMS meter (TCP wrapper, logical device 1) listening on {server.url}", flush=True)
        try:
            serve_until(stop)
        finally:
            server.stop()
        print("stopped", flush=True)
        return
    with DlmsLine(models, baud=baud or 9600, opening=opening, emulate_timing=baud is not None) as line:
        where = line.start_pty() if pty else f"socket://{host}:{line.start_tcp(host, tcp or 0)}"
        said = f", IEC 62056-21 opening ({opening})" if opening else ""
        print(f"DLMS x{count} (HDLC addresses {first}..{first + count - 1}{said}) listening on {where}", flush=True)
        serve_until(stop)
    print("stopped", flush=True)


if __name__ == "__main__":
    command(prog_name="python -m simulators.dlms_cli")

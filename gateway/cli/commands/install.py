"""``pmg install-config``: lay out ``/etc/pmg`` from the examples the wheel ships.

The installed layout (README, "Running under systemd"; docs/operations.md, "Installing the service")
is a virtual environment in ``/opt/pmg``, the configuration in ``/etc/pmg`` and the state in
``/var/lib/pmg``.  An installed wheel has no ``config/`` folder to copy from, so this command writes
``etc/pmg/gateway.toml`` (from ``gateway/examples/gateway.example.toml``) and ``etc/pmg/tariffs/``
(from ``gateway/tariffs/examples/``, the ``tariff_dir`` the example names) under ``--root`` (``/`` by
default; a staging tree or an image otherwise: the files still name ``/etc/pmg`` and ``/var/lib/pmg``).

A file that exists is kept, never overwritten: running it again after editing loses nothing, and
adds only what is missing (a new example tariff of a newer version).
"""

from __future__ import annotations

import grp
import os
import shutil
from importlib import resources
from pathlib import Path

import click

from gateway.cli.common import CliFailure, emit_json, json_option
from gateway.tariffs.model import example_dir

CONFIG_DIR = Path("etc/pmg")
DIR_MODE = 0o750  # root:pmg — the service reads it, nobody else (the MQTT key and password live here)
FILE_MODE = 0o640


def example_config() -> Path:
    """The example configuration shipped in the wheel (package data of ``gateway``)."""
    return Path(str(resources.files("gateway") / "examples" / "gateway.example.toml"))


def _group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise CliFailure(f"--group: no group '{name}' (create the service user first: README)", 2) from None


def _place(target: Path, mode: int, gid: int | None, source: Path | None) -> bool:
    """Create ``target`` (a directory when ``source`` is None, else a copy of it) unless it exists;
    True when it was created.  Mode and group are set on what this creates only."""
    if target.exists():
        return False
    if source is None:
        target.mkdir(mode=mode)
    else:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)  # a reader never sees half a file
    os.chmod(target, mode)  # whatever the umask
    if gid is not None:
        os.chown(target, -1, gid)
    return True


@click.command("install-config")
@click.option(
    "--root",
    "root_text",
    type=click.Path(file_okay=False),
    default="/",
    show_default=True,
    help="Lay out ROOT/etc/pmg (a staging tree or an image); it must exist.",
)
@click.option("--group", metavar="NAME", help="Give what it creates to this group (the service's: pmg).")
@json_option
def install_config(root_text: str, group: str | None, as_json: bool) -> None:
    """Write /etc/pmg/gateway.toml and /etc/pmg/tariffs/ from the shipped examples; existing files are kept.

    Then edit gateway.toml (gateway_id, buses, meters, [mqtt]) and check it with
    `pmg run --check -c /etc/pmg/gateway.toml`.
    """
    if not root_text.strip():  # Path("") is the current directory: a script's unset variable
        raise CliFailure("--root: must not be empty (/ for this machine, or a staging tree)", 2)
    root = Path(root_text)
    if not root.is_dir():
        raise CliFailure(f"--root: {root} is not a directory", 2)
    gid = _group_id(group)
    etc = root / CONFIG_DIR
    etc.parent.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[Path, Path | None]] = [(etc, None), (etc / "gateway.toml", example_config())]
    plan.append((etc / "tariffs", None))
    plan += [(etc / "tariffs" / f.name, f) for f in sorted(example_dir().glob("*.toml"))]
    written: list[str] = []
    kept: list[str] = []
    for target, source in plan:
        created = _place(target, DIR_MODE if source is None else FILE_MODE, gid, source)
        if created:
            written.append(str(target))
        elif source is not None:  # an existing directory is not news
            kept.append(str(target))
    if as_json:
        emit_json({"root": str(root), "written": written, "kept": kept})
        return
    for path in written:
        click.echo(f"wrote {path}")
    for path in kept:
        click.echo(f"kept {path} (exists)")
    click.echo(f"next: edit {etc / 'gateway.toml'}, then pmg run --check -c {etc / 'gateway.toml'}")

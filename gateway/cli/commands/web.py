"""``pmg web``: the local web console (docs/web.md), and its accounts (``passwd``, ``token``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.cli.common import CliFailure, config_option, load


@click.group(invoke_without_command=True)
@config_option
@click.pass_context
def web(ctx: click.Context, config_path: Path) -> None:
    """Serve the web console (default 127.0.0.1:8080; [web] in the configuration).

    A separate process: it reads the database and hands actions to the daemon as the CLI does.
    """
    if ctx.invoked_subcommand is not None:
        return
    from gateway.web.server import serve

    serve(load(config_path), config_path)


def _users_file(config_path: Path) -> Path:
    from gateway.config import resolve

    cfg = load(config_path)
    if cfg.web.users_file is None:
        raise CliFailure(f"{config_path}: set [web] users_file first (the file pmg web reads accounts from)", 2)
    return resolve(config_path, cfg.web.users_file)


def _name(name: str) -> str:
    from gateway.web.auth import NAME

    if not NAME.match(name):
        raise CliFailure(f"'{name}' is not an account name (letters, digits, '_', '.', '@', '-'; 64 at most)", 2)
    return name


@web.command("passwd")
@config_option
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "readonly"]), default="readonly", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (scripts).")
def passwd(config_path: Path, name: str, role: str, password_stdin: bool) -> None:
    """Add NAME to the users file, or set its password and role (scrypt hash; the file is 0600)."""
    from gateway.web.auth import MIN_PASSWORD, User, hash_password, save_user

    path, name = _users_file(config_path), _name(name)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise CliFailure(f"the password must have at least {MIN_PASSWORD} characters", 2)
    new = save_user(path, User(name, role, hash_password(password)))
    click.echo(f"{'added' if new else 'updated'} {name} ({role}) in {path}; restart pmg web to apply")


@web.command("token")
@config_option
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "readonly"]), default="readonly", show_default=True)
def token(config_path: Path, name: str, role: str) -> None:
    """Give NAME a new API token (sent as 'Authorization: Bearer TOKEN'); printed once, stored hashed."""
    from gateway.web.auth import User, hash_token, new_token, save_user

    path, name = _users_file(config_path), _name(name)
    secret = new_token()
    save_user(path, User(name, role, hash_token(secret)))
    click.echo(secret)

"""Option types for the head office's commands, whose values reach other programs verbatim.

An empty ``--dsn ""`` is not "no database": libpq reads it as "every default", so a script's unset
variable would connect to whatever PostgreSQL runs on the machine.  An empty ``--host`` reaches paho
as a host name.  A prefix or a shared-subscription group with a wildcard or a level separator
subscribes to something else than was meant (MQTT 5.0, 4.7.1 and 4.8.2: a ShareName contains no
``/``, ``+`` or ``#``).  Each is refused at the command line with one line, exit 2, before anything
connects.
"""

from __future__ import annotations

import re
from typing import Any

import click

from gateway.cli.common import AuditText

_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_\-/]{1,200}")  # as the gateway's [mqtt] topic_prefix
_SHARE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # both whole: fullmatch ($ lets "x\n" by)


class ConnectionText(AuditText):
    """A connection string or host name: not blank, no control characters, bounded (the checks of an
    audited text, with room for a DSN)."""

    def __init__(self) -> None:
        super().__init__(max_length=2000)


class TopicPrefix(click.ParamType):
    """The first topic levels every gateway publishes under (the gateway's ``[mqtt] topic_prefix``)."""

    name = "prefix"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not _TOPIC_PREFIX.fullmatch(text):
            self.fail(f"{text[:40]!r} is not a topic prefix (A-Z a-z 0-9 _ - /, as the gateway's [mqtt] topic_prefix)", param, ctx)
        return text


class ShareName(click.ParamType):
    """The group of a shared subscription (``$share/<group>/…``)."""

    name = "group"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not _SHARE_NAME.fullmatch(text):
            self.fail(f"{text[:40]!r} is not a share name (1-64 of A-Z a-z 0-9 _ . -)", param, ctx)
        return text

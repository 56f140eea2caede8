"""A paho-mqtt client served by the asyncio loop instead of paho's own network thread.

paho can run its network loop on a thread of its own (``loop_start``) or be driven by the
application's event loop through its socket callbacks (``on_socket_open`` / ``on_socket_close`` /
``on_socket_register_write`` / ``on_socket_unregister_write``) and ``loop_read`` / ``loop_write`` /
``loop_misc`` (paho-mqtt's documentation, "External event loop support").  The gateway uses the
second: with paho's thread, every PUBACK, every publish and every wake-up crossed between two Python
threads, and the two threads spent a fifth of a burst's CPU handing the interpreter lock back and
forth (a kernel futex wake per hand-off) — the outbox drained at half the rate of bare paho with
the same instructions.  On the loop there is one thread, no lock to hand over and no self-pipe
byte per publish.

What paho's thread did besides reading and writing is done here:

- **connecting**: ``reconnect()`` resolves, connects and (with TLS) completes the handshake with
  blocking calls (paho's connect timeout bounds the TCP connect and each TLS read or write, not name
  resolution), so it runs on a worker thread; the socket it opens is registered with the loop from
  there through ``call_soon_threadsafe``, and the loop calls no paho method while it runs;
- **reconnecting** after a lost connection or a failed attempt, waiting ``min_delay`` doubling up to
  ``max_delay`` between attempts and back to ``min_delay`` after a connection the broker accepted
  (paho's ``reconnect_delay_set`` semantics);
- **keepalive**: ``loop_misc`` once a second sends PINGREQ and drops a connection whose PINGRESP
  never came;
- **TLS**: a TLS socket can hold decrypted bytes the descriptor no longer signals, so a read goes
  on while ``pending()`` says bytes wait.

Every paho callback (``on_connect``, ``on_publish``, ``on_message``, ...) then runs on the loop
thread, inside ``loop_read``/``loop_write``/``loop_misc``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as paho

from gateway.core.idle import Idle

log = logging.getLogger("pmg.mqtt")

MISC_INTERVAL_S = 1.0  # loop_misc this often: keepalive pings and their timeout (paho's select timeout)
# How long stop() waits for a connection attempt under way.  paho bounds the TCP connect and each TLS
# read or write by its connect timeout (5 s), but not name resolution nor the handshake as a whole;
# an attempt still running after this cannot bring its connection up (``_register``).
ATTEMPT_WAIT_S = 11.0
# What a connection attempt can raise: socket and TLS errors (ssl.SSLError and socket.timeout are
# OSErrors), and paho's ValueError for an empty host or a bad port.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)


class PahoOnLoop:
    """Drives one paho client from the running asyncio loop; ``run`` until ``stop``."""

    def __init__(
        self,
        client: paho.Client,
        *,
        on_connect_failed: Callable[[BaseException], None],
        min_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
    ) -> None:
        self.client = client
        self.on_connect_failed = on_connect_failed
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._sock: Any = None  # the socket registered with the loop (paho's, plain or TLS)
        self._delay_s: float | None = None  # the wait before the next attempt (None: none yet)
        self._idle = Idle()  # the keeper's sleeps, cut short by a lost socket or stop()
        self._connecting: asyncio.Future[Any] | None = None
        self._stopping = False
        client.on_socket_open = self._socket_opened
        client.on_socket_close = self._socket_closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write

    # -- paho's socket callbacks: on the loop thread, or on the connecting worker -------------------
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _socket_opened(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._register, sock)

    def _socket_closed(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._unregister, sock)

    def _want_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, sock)

    def _no_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer, sock)

    # -- on the loop thread ------------------------------------------------------------------------
    def _register(self, sock: Any) -> None:
        if sock.fileno() < 0:  # closed again before the loop got to it
            return
        if self._stopping:  # an attempt that outlived stop(): its connection must not come up
            _close(sock)
            return
        self._sock = sock
        self._loop.add_reader(sock, self._readable)

    def _unregister(self, sock: Any) -> None:
        fd = sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        if self._sock is sock:
            self._sock = None
            self._idle.wake()  # the keeper reconnects (after its wait)

    def _add_writer(self, sock: Any) -> None:
        if sock is self._sock and sock.fileno() >= 0:
            self._loop.add_writer(sock, self._writable)

    def _remove_writer(self, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        sock = self._sock
        self.client.loop_read()
        # TLS: bytes already decrypted into the SSL object do not make the descriptor readable again
        while sock is not None and sock is self._sock and isinstance(sock, ssl.SSLSocket) and sock.pending():
            self.client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    @property
    def has_socket(self) -> bool:
        return self._sock is not None

    def accepted(self) -> None:
        """The broker accepted a connection (CONNACK success): the next wait starts short again."""
        self._delay_s = None

    async def run(self) -> None:
        """Connect, keep the connection alive and reconnect after losing it, until ``stop``."""
        first = True
        while not self._stopping:
            if self._sock is None:
                if not first:
                    await self._wait_before_attempt()
                    if self._stopping:
                        break
                first = False
                await self._attempt()
                continue
            await self._idle.sleep(MISC_INTERVAL_S)
            if self._sock is not None and not self._stopping:
                try:
                    self.client.loop_misc()
                except Exception:  # keepalive must go on: one odd failure must not end the link
                    log.warning("mqtt keepalive step failed", exc_info=True)

    async def _wait_before_attempt(self) -> None:
        delay = self.min_delay_s if self._delay_s is None else min(self._delay_s * 2, self.max_delay_s)
        self._delay_s = delay
        await self._idle.sleep(delay)

    async def _attempt(self) -> None:
        self._connecting = asyncio.ensure_future(asyncio.to_thread(self.client.reconnect))
        try:
            await asyncio.shield(self._connecting)
        except CONNECT_ERRORS as exc:
            self.on_connect_failed(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # paho raising something unforeseen must not end the link
            log.warning("mqtt connection attempt failed unexpectedly", exc_info=True)
            self.on_connect_failed(exc)
        finally:
            self._connecting = None

    async def stop(self, goodbye: Callable[[], Awaitable[None]] | None = None, deadline_s: float = 1.0) -> None:
        """Stop for good: no reconnect, and no socket left open or registered.

        In order, all on the loop thread: an attempt under way is waited for (``ATTEMPT_WAIT_S``), so
        that no paho call of ours runs while the worker is inside ``reconnect()``; if a connection is
        up, ``goodbye`` runs (the caller's last messages, acknowledged meanwhile), then paho sends its
        DISCONNECT and closes the socket itself (within ``deadline_s``); whatever is left is closed
        here.  An attempt that outlives the wait cannot bring its connection up: its socket is closed
        when it arrives (``_register``)."""
        self._stopping = True
        self._idle.wake()
        attempt = self._connecting
        if attempt is not None:
            try:
                await asyncio.wait_for(asyncio.shield(attempt), ATTEMPT_WAIT_S)
            except Exception:  # a failed or late attempt: said by the attempt itself
                pass
        settled = attempt is None or attempt.done()
        if settled and self._sock is not None:
            if goodbye is not None:
                try:
                    await goodbye()
                except Exception:  # a goodbye that fails must not keep the socket open
                    log.warning("mqtt goodbye failed", exc_info=True)
            if self._sock is not None:
                self.client.disconnect()  # queued; the writer sends it and paho then closes the socket
                end = self._loop.time() + deadline_s
                while self._sock is not None and self._loop.time() < end:
                    await asyncio.sleep(0.01)
        sock = self._sock
        if sock is not None:
            self._unregister(sock)
            _close(sock)


def _close(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()



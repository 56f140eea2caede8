"""The console's routes: pages, their live fragments, the two actions, login and logout.

Server-rendered HTML (Starlette with Jinja2); the only script, ``static/live.js``, replaces a page's
live block with a fresh fragment every two seconds.  Each request opens the database read-only (WAL
lets the daemon write meanwhile); an action opens it for writing for its one transaction, as the CLI
does.  Everything that is not the login page needs a session when a users file is configured.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway.config import GatewayConfig, resolve
from gateway.core.timeutil import iso
from gateway.ledger.forecast import DailyCostCache
from gateway.runtime.components import Components, build_components
from gateway.store.db import Store, open_store
from gateway.web import actions, auth, chart, fmt, views
from gateway.web.i18n import LANGS, translate

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "pmg_session"
LANG_COOKIE = "pmg_lang"
PARTS_TTL_S = 60.0  # tariffs and calendar years may change under the daemon: rebuilt this often
READ_WAIT_S = 5.0  # how long "Read now" waits for the daemon's outcome before showing it as pending
READ_POLL_S = 0.05  # how often the request's row is looked at meanwhile
VERIFY_EVERY_S = 600.0  # ``pmg ledger verify`` reads the whole ledger: in the background, this often
AUDIT_COLUMNS = ("id", "at", "kind", "severity", "account_id", "meter_id", "actor", "rules", "detail")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class Console:
    """The running console's state: configuration, accounts, sessions and caches."""

    cfg: GatewayConfig
    config_path: Path
    users: dict[str, auth.User] | None  # None: no users file (loopback only): read-only, no login
    secure_cookies: bool
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sessions: auth.Sessions = field(init=False)
    limiter: auth.LoginLimiter = field(default_factory=auth.LoginLimiter)
    costs: DailyCostCache = field(default_factory=DailyCostCache)
    verified: dict[str, Any] = field(default_factory=lambda: {"state": "pending"})
    _parts: tuple[float, Components] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.sessions = auth.Sessions(self.cfg.web.session_hours * 3600)

    @property
    def db(self) -> Path:
        return resolve(self.config_path, self.cfg.database)

    @contextmanager
    def reading(self) -> Iterator[Store]:
        store = open_store(self.db, readonly=True)
        try:
            yield store
        finally:
            store.close()

    def parts(self, store: Store) -> Components:
        with self._lock:
            if self._parts is None or time.monotonic() - self._parts[0] > PARTS_TTL_S:
                self._parts = (time.monotonic(), build_components(self.cfg, self.config_path, store))
                self.costs.forget()
            return self._parts[1]

    def verify_now(self) -> None:
        """``pmg ledger verify --json`` in a child process at low priority: the very check the CLI
        runs, and its CPU (the whole ledger is read) is not taken from page loads."""
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "ledger", "verify", "--json", "-c", str(self.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        with suppress(OSError):  # it may have finished already
            os.setpriority(os.PRIO_PROCESS, proc.pid, 10)
        stdout, stderr = proc.communicate(timeout=3600)
        try:
            out = json.loads(stdout)
        except ValueError:
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            self.verified = {"state": "error", "problems": [last], "count": 1, "at": iso(self.clock())}
            return
        self.verified = {
            "state": "ok" if out.get("ok") else "failed",
            "problems": list(out.get("mismatches", []))[:5],
            "count": len(out.get("mismatches", [])),
            "at": fmt.local(iso(self.clock()), self.cfg.tz),
            "took_ms": round((time.monotonic() - started) * 1000),
        }

    def verify_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.verify_now()
            except (OSError, subprocess.SubprocessError) as exc:  # shown on the site page
                self.verified = {"state": "error", "problems": [str(exc)], "count": 1, "at": iso(self.clock())}
            stop.wait(VERIFY_EVERY_S)


@dataclass
class Who:
    session: auth.Session | None
    user: auth.User | None
    lang: str
    new_cookie: str | None = None

    @property
    def may_act(self) -> bool:
        return self.user is not None and self.user.may_act


def create_app(console: Console) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["version"] = __import__("gateway").__version__
    for template in templates.env.list_templates():  # compiled now, not on someone's first visit
        templates.env.get_template(template)

    def who(request: Request) -> Who:
        lang = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or "en"
        lang = lang if lang in LANGS else "en"
        session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
        user = session.user if session else None
        bearer = request.headers.get("authorization", "")
        if user is None and bearer.lower().startswith("bearer ") and console.users:
            token = bearer[7:].strip()
            user = next((u for u in console.users.values() if u.secret.startswith("sha256$")
                         and auth.check_secret(u.secret, token)), None)
            return Who(None, user, lang)
        new_cookie = None
        if session is None:
            session = console.sessions.new()
            new_cookie = session.id
        return Who(session, user, lang, new_cookie)

    def finish(response: Response, w: Who, request: Request) -> Response:
        for k, v in SECURITY_HEADERS.items():
            response.headers[k] = v
        if w.new_cookie:
            response.set_cookie(SESSION_COOKIE, w.new_cookie, httponly=True, samesite="strict",
                                secure=console.secure_cookies, path="/")
        if request.query_params.get("lang") in LANGS:
            response.set_cookie(LANG_COOKIE, w.lang, max_age=365 * 86400, samesite="strict",
                                secure=console.secure_cookies, path="/")
        return response

    def render(request: Request, w: Who, template: str, status: int = 200, **ctx: Any) -> Response:
        ctx.update(
            t=lambda s: translate(w.lang, s), lang=w.lang, user=w.user, may_act=w.may_act,
            csrf=w.session.csrf if w.session else "", gateway_id=console.cfg.gateway_id,
            auth_on=console.users is not None, path=request.url.path,
        )
        return finish(templates.TemplateResponse(request, template, ctx, status_code=status), w, request)

    def gate(request: Request) -> tuple[Who, Response | None]:
        """The visitor, and a response when they may not see the page (a redirect to the login)."""
        w = who(request)
        if console.users is not None and w.user is None:
            if request.headers.get("x-live"):
                return w, finish(PlainTextResponse("log in again", status_code=401), w, request)
            return w, finish(RedirectResponse("/login", status_code=303), w, request)
        return w, None

    async def form_of(request: Request, w: Who) -> tuple[dict[str, str], Response | None]:
        """The posted fields, or a refusal: a browser session must echo its CSRF token."""
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if w.session is not None and not secrets.compare_digest(fields.get("csrf", ""), w.session.csrf):
            return fields, finish(PlainTextResponse("refused: the form's CSRF token is missing or wrong; "
                                                    "nothing changed", status_code=403), w, request)
        return fields, None

    async def operator_form(request: Request) -> tuple[Who, dict[str, str], Response | None]:
        """An action's visitor and posted fields, or the refusal: logged in (``gate``), the form's CSRF
        token (``form_of``), and the operator role — in that order, for every action."""
        w, denied = gate(request)
        if denied:
            return w, {}, denied
        fields, refused = await form_of(request, w)
        if refused:
            return w, fields, refused
        if not w.may_act:
            return w, fields, render(request, w, "error.html", status=403,
                                     message=translate(w.lang, "read-only: you cannot act"))
        return w, fields, None

    # -- pages -------------------------------------------------------------------------------------
    def site_page(request: Request) -> Response:
        w, denied = gate(request)
        if denied:
            return denied
        with console.reading() as store:
            data = views.site(store, console.parts(store), console.clock(), console.verified)
        fragment = "_site_live.html" if request.headers.get("x-live") else "site.html"
        return render(request, w, fragment, s=data)

    def meters_page(request: Request) -> Response:
        w, denied = gate(request)
        if denied:
            return denied
        qp = request.query_params
        try:
            page = max(1, min(10_000, int(qp.get("page", "1"))))
        except ValueError:
            page = 1
        query = views.Query(q=qp.get("q", "")[:64].strip(), state=qp.get("state", ""),
                            sort=qp.get("sort", "meter"), page=page)
        with console.reading() as store:
            data = views.meters(store, console.parts(store), console.costs, query, console.clock())
        fragment = "_meters_rows.html" if request.headers.get("x-live") else "meters.html"
        return render(request, w, fragment, m=data, query=query, states=views.STATES, sorts=list(views.SORTS))

    def meter_page(request: Request, *, status: int = 200, errors: dict[str, Any] | None = None,
                   form: dict[str, str] | None = None, flash: dict[str, Any] | None = None) -> Response:
        w, denied = gate(request)
        if denied:
            return denied
        meter_id = request.path_params["meter_id"]
        with console.reading() as store:
            parts = console.parts(store)
            if request.headers.get("x-live"):
                live = views.meter_live(store, parts, meter_id, console.clock())
                if live is None:
                    return finish(PlainTextResponse("no such meter", status_code=404), w, request)
                return render(request, w, "_meter_live.html", d=live)
            data = views.meter_page(store, parts, console.costs, meter_id, console.clock())
        if data is None:
            return render(request, w, "error.html", status=404, message=f"no meter '{meter_id}'")
        labels = {"title": translate(w.lang, "Last 7 days"), "energy": translate(w.lang, "Energy per day"),
                  "balance": translate(w.lang, "Balance at day end")}
        svg = chart.week_svg(data["series"], console.cfg.minor_digits, labels)
        if flash is None and w.session is not None:
            flash, w.session.flash = w.session.flash, None
        return render(request, w, "meter.html", status=status, d=data, chart=svg, errors=errors or {},
                      form=form or {"payment_id": actions.new_payment_id(), "hours": "24"}, flash=flash,
                      currency=console.cfg.currency)

    async def act(request: Request, kind: str) -> Response:
        w, fields, refused = await operator_form(request)
        if refused:
            return refused
        assert w.user is not None
        meter_id = request.path_params["meter_id"]
        try:
            with console.reading() as store:
                parts = console.parts(store)
                account = store.scalar("SELECT account_id FROM meters WHERE id = ?", meter_id)
            if account is None:
                return render(request, w, "error.html", status=404, message=f"no meter '{meter_id}'")
            now = console.clock()
            if kind == "payment":
                result = actions.record_payment(console.cfg, console.db, parts, account, fields, w.user.name, now)
            else:
                result = actions.request_close(console.cfg, console.db, parts, meter_id, fields, w.user.name, now)
        except actions.Refused as exc:
            return meter_page(request, status=400, errors={kind: exc.errors}, form=fields)
        if w.session is not None:
            if "until" in result:
                result["until"] = fmt.local(result["until"], console.cfg.tz)
            w.session.flash = {"kind": kind, **result}
        return finish(RedirectResponse(f"/meters/{meter_id}", status_code=303), w, request)

    async def payment(request: Request) -> Response:
        return await act(request, "payment")

    async def read_now(request: Request) -> Response:
        """``pmg meter read-now``'s path: a request the daemon serves; the outcome is waited for up to
        ``READ_WAIT_S`` (a bus answers in well under a second) and shown, or the request is said to be
        still pending (is the daemon running?)."""
        w, _fields, refused = await operator_form(request)
        if refused:
            return refused
        assert w.user is not None
        meter_id = request.path_params["meter_id"]
        try:
            request_id = actions.request_read(console.cfg, console.db, meter_id, w.user.name, console.clock())
        except actions.Refused as exc:
            return meter_page(request, status=400, errors={"read": exc.errors})
        deadline = time.monotonic() + READ_WAIT_S
        outcome = actions.read_outcome(console.db, request_id)
        while outcome is None and time.monotonic() < deadline:
            await asyncio.sleep(READ_POLL_S)
            outcome = actions.read_outcome(console.db, request_id)
        result = outcome or {"request_id": request_id, "status": "pending"}
        if "taken_at" in result:
            result["taken_at"] = fmt.local(result["taken_at"], console.cfg.tz)
        if w.session is not None:
            w.session.flash = {"kind": "read", **result}
            return finish(RedirectResponse(f"/meters/{meter_id}", status_code=303), w, request)
        # a script (a bearer token, no session): the outcome as JSON; 200 read, 502 not read, 504 no outcome yet
        code = {"done": 200, "pending": 504}.get(result["status"], 502)
        return finish(JSONResponse(result, status_code=code), w, request)

    async def close(request: Request) -> Response:
        return await act(request, "close")

    def events_query(request: Request) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """The filters as typed, as the query wants them (bounds in UTC), and any mistakes."""
        qp = request.query_params
        typed = {k: qp.get(k, "")[:64].strip() for k in ("kind", "meter", "actor", "start", "end")}
        query, errors = dict(typed), {}
        for k in ("start", "end"):
            if typed[k]:
                try:
                    query[k] = views.local_bound(typed[k], console.cfg.tz)
                except ValueError:
                    errors[k] = "a date like 2026-05-01 or 2026-05-01T08:00"
                    query[k] = ""
        return typed, query, errors

    def events_page(request: Request) -> Response:
        w, denied = gate(request)
        if denied:
            return denied
        typed, query, errors = events_query(request)
        with console.reading() as store:
            rows = views.events(store, console.cfg.tz, **query, limit=views.EVENT_LIMIT)
        return render(request, w, "events.html", status=400 if errors else 200, rows=rows, f=typed,
                      errors=errors, csv_query=request.url.query)

    def events_csv(request: Request) -> Response:
        w, denied = gate(request)
        if denied:
            return denied
        with console.reading() as store:
            rows = views.events(store, console.cfg.tz, **events_query(request)[1], limit=100_000)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=AUDIT_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for r in reversed(rows):
            writer.writerow({**r, "detail": json.dumps(r["detail"], ensure_ascii=False, sort_keys=True)})
        response = Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": 'attachment; filename="pmg-audit.csv"'})
        return finish(response, w, request)

    # -- login ---------------------------------------------------------------------------------------
    async def login(request: Request) -> Response:
        w = who(request)
        if console.users is None:
            return finish(RedirectResponse("/", status_code=303), w, request)
        if request.method == "GET":
            return render(request, w, "login.html", error=None, name="")
        fields, refused = await form_of(request, w)
        if refused:
            return refused
        name = fields.get("name", "").strip()[:64]
        client = f"ip:{request.client.host if request.client else '?'}"
        if console.limiter.blocked(client, f"user:{name}"):
            return render(request, w, "login.html", status=429, name=name,
                          error=translate(w.lang, "Too many failed logins: wait a few minutes."))
        user = console.users.get(name)
        if user is None or not auth.check_secret(user.secret, fields.get("password", "")):
            console.limiter.failed(client, f"user:{name}")
            return render(request, w, "login.html", status=401, name=name,
                          error=translate(w.lang, "Wrong name or password."))
        console.limiter.succeeded(f"user:{name}")
        if w.session is not None:
            console.sessions.drop(w.session.id)  # a fresh id at login: no session fixation
        session = console.sessions.new(user)
        response = RedirectResponse("/", status_code=303)
        return finish(response, Who(session, user, w.lang, session.id), request)

    async def logout(request: Request) -> Response:
        w = who(request)
        _fields, refused = await form_of(request, w)
        if refused:
            return refused
        if w.session is not None:
            console.sessions.drop(w.session.id)
        response = RedirectResponse("/login" if console.users else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return finish(response, Who(None, None, w.lang), request)

    routes = [
        Route("/", site_page),
        Route("/meters", meters_page),
        Route("/meters/{meter_id}", meter_page),
        Route("/meters/{meter_id}/payment", payment, methods=["POST"]),
        Route("/meters/{meter_id}/close", close, methods=["POST"]),
        Route("/meters/{meter_id}/read", read_now, methods=["POST"]),
        Route("/events", events_page),
        Route("/events.csv", events_csv),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes)


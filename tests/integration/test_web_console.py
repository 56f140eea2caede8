"""The web console in a real browser against a running gateway (docs/web.md).

A real ``pmg run`` polls two DL/T 645 simulators on TCP; ``m1`` has no credit and is cut on its
first poll (the immediate test policy), ``m2`` is paid.  ``pmg web`` runs as its own process on a
free loopback port, and Debian's Chromium, driven by Playwright, does what a person would:

- logs in and sees the gateway's meters;
- records a cash payment for the cut meter and sees the relay confirmed closed on the page within
  2 s of submitting, without reloading (the live block);
- reads a meter now (the daemon serves the request, the page shows the reading);
- bad input gets a message on the form and writes nothing; a forged form without its CSRF token and
  a read-only user's post are refused and write nothing;
- at 360 px the pages do not scroll sideways.

``PMG_WEB_SCREENSHOTS=DIR`` also saves the documentation's screenshots there.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.gateway_harness import base_config, write_config
from support.waiting import wait_for
from support.web_rig import PASSWORD, REPO, add_user, browser, free_port, pmg, web_process, web_section

from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

PHONE = {"width": 360, "height": 760}
LAPTOP = {"width": 1280, "height": 860}


@dataclass
class Site:
    cfg: Path
    db: Path
    url: str

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        if not self.db.exists():  # the daemon has not created it yet
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return list(conn.execute(sql, params).fetchall())
        except sqlite3.OperationalError:  # not created yet
            return []
        finally:
            conn.close()

    def counts(self) -> tuple[Any, ...]:
        """What an action would write: payments, overrides, relay commands, audit events by people, read requests."""
        return (
            self.query("SELECT COUNT(*) FROM payments")[0][0],
            self.query("SELECT COUNT(*) FROM overrides")[0][0],
            self.query("SELECT COUNT(*) FROM relay_commands WHERE actor LIKE 'web:%'")[0][0],
            self.query("SELECT COUNT(*) FROM events WHERE actor LIKE 'web:%'")[0][0],
            self.query("SELECT COUNT(*) FROM read_requests")[0][0],
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web")
    models = [MeterModel("000000000001", profile=LoadProfile((2000,))),
              MeterModel("000000000002", profile=LoadProfile((800,)))]
    sim = SimulatedDlt645Bus(models, baud=115200, response_delay_s=0.002)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        sim_port = sim.start_tcp()
        db, port = tmp / "pmg.db", free_port()
        body = base_config(db) + (
            f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "socket://127.0.0.1:{sim_port}"\nbaud = 115200\n'
            "poll_interval_s = 0.3\ntimeout_s = 0.5\nretries = 1\n"
            '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "a1"\ntariff = "flat-cn"\n'
            '\n[[meters]]\nid = "m2"\nbus = "b1"\naddress = "000000000002"\naccount = "a2"\ntariff = "flat-cn"\n'
            + web_section(port, tmp / "users")
        )
        cfg = write_config(tmp / "gw.toml", body)
        add_user(cfg, "olga", "operator")
        add_user(cfg, "rita", "readonly")
        s = Site(cfg, db, f"http://127.0.0.1:{port}")
        log = (tmp / "daemon.log").open("ab")
        daemon = subprocess.Popen([sys.executable, "-m", "gateway.cli.main", "run", "-c", str(cfg)],
                                  cwd=REPO, stdout=log, stderr=log)
        wait_for(lambda: s.query("SELECT 1 FROM relay_commands WHERE meter_id = 'm1' AND action = 'trip' "
                                 "AND status = 'confirmed'"), timeout=30, what="m1 cut by the daemon")
        assert pmg("payment", "add", "-c", str(cfg), "a2", "100.00", "--actor", "setup").returncode == 0
        wait_for(lambda: s.query("SELECT 1 FROM meters WHERE id = 'm2' AND relay = 'closed' AND "
                                 "(SELECT policy_state FROM accounts WHERE id = 'a2') = 'normal'"),
                 timeout=30, what="m2 on supply")
        with web_process(cfg, port, tmp / "web.log"):
            yield s
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)
        sim.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


def login(chromium: Any, site: Site, name: str, viewport: dict[str, int] = LAPTOP) -> Any:
    page = chromium.new_context(viewport=viewport).new_page()
    page.goto(site.url + "/meters")
    assert page.url.endswith("/login")  # no session: the login first
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("#login button[type=submit]")
    page.wait_for_url(site.url + "/")
    return page


def test_an_operator_pays_for_a_cut_meter_and_sees_the_relay_close_within_2_s(chromium: Any, site: Site) -> None:
    page = login(chromium, site, "olga")
    assert page.inner_text("#gateway-id") == "gw-test"
    page.click("nav >> text=Meters")
    rows = page.locator("table.meters tbody tr")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.meter)")) == ["m1", "m2"]
    assert "cut" in page.inner_text("tr[data-meter=m1]")
    page.click("a[href='/meters/m1']")
    assert page.get_attribute("#relay", "data-relay") == "open"
    shots = os.environ.get("PMG_WEB_SCREENSHOTS")
    page.fill("#payment-form input[name=amount]", "10.00")
    page.click("#payment-form button[type=submit]")
    page.wait_for_url(site.url + "/meters/m1")
    assert "applied: 10.00 CNY" in page.inner_text("#flash")
    # The live block refreshes every second; the daemon closes and reads back within about one.
    page.wait_for_selector("#relay[data-relay=closed]", timeout=2000)
    [(payment_id, source)] = site.query("SELECT payment_id, source FROM payments WHERE account_id = 'a1'")
    assert source == "web:olga"
    assert site.query("SELECT status FROM relay_commands WHERE meter_id = 'm1' AND action = 'direct_close' "
                      "AND payment_id = ?", payment_id) == [("confirmed",)]
    if shots:
        for name, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.goto(site.url + "/meters/m1")
            page.screenshot(path=f"{shots}/web-meter-{name}.png")
            page.goto(site.url + "/")
            page.screenshot(path=f"{shots}/web-site-{name}.png")
    page.context.close()


def test_an_operator_reads_a_meter_now_and_sees_the_reading(chromium: Any, site: Site) -> None:
    page = login(chromium, site, "olga")
    page.goto(site.url + "/meters/m2")
    page.click("#read-form button[type=submit]")
    page.wait_for_url(site.url + "/meters/m2")
    flash = page.inner_text("#flash")
    [(status, reading_id, who)] = site.query(
        "SELECT status, reading_id, requested_by FROM read_requests WHERE meter_id = 'm2' ORDER BY id DESC LIMIT 1"
    )
    assert (status, who) == ("done", "web:olga"), flash
    assert f"reading {reading_id})" in flash and "kWh" in flash
    assert site.query("SELECT meter_id, quality FROM readings WHERE id = ?", reading_id) == [("m2", "ok")]
    assert site.query("SELECT COUNT(*) FROM events WHERE kind = 'read_requested' AND actor = 'web:olga'")[0][0] >= 1
    page.context.close()


def test_bad_input_gets_a_message_on_the_form_and_writes_nothing(chromium: Any, site: Site) -> None:
    page = login(chromium, site, "olga")
    page.goto(site.url + "/meters/m2")
    before = site.counts()
    for amount, message in (("12.345", "more than 2 decimal places"), ("-5", "a decimal amount"),
                            ("0", "more than zero"), ("", "a decimal amount")):
        page.fill("#payment-form input[name=amount]", amount)
        page.click("#payment-form button[type=submit]")
        assert message in page.inner_text("#amount-error")
    page.fill("#close-form input[name=reason]", "   ")
    page.fill("#close-form input[name=hours]", "nan")
    page.click("#close-form button[type=submit]")
    assert page.inner_text("#reason-error") == "must not be empty"
    assert "number of hours" in page.inner_text("#hours-error")
    assert site.counts() == before
    page.context.close()


def test_a_forged_form_without_its_csrf_token_is_refused(chromium: Any, site: Site) -> None:
    page = login(chromium, site, "olga")
    before = site.counts()
    # The session cookie goes with it (same browser), but not the form's token.
    r = page.request.post(site.url + "/meters/m2/payment", form={"amount": "5.00", "payment_id": "forged"})
    assert r.status == 403 and "CSRF" in r.text()
    r = page.request.post(site.url + "/meters/m2/payment",
                          form={"amount": "5.00", "payment_id": "forged", "csrf": "guess"})
    assert r.status == 403
    r = page.request.post(site.url + "/meters/m2/read", form={})
    assert r.status == 403
    assert site.counts() == before
    page.context.close()


def test_a_read_only_user_sees_but_cannot_act(chromium: Any, site: Site) -> None:
    page = login(chromium, site, "rita")
    page.goto(site.url + "/meters/m2")
    assert page.locator("#payment-form").count() == 0 and page.locator("#close-form").count() == 0
    assert page.locator("#read-form").count() == 0
    csrf = page.get_attribute("header input[name=csrf]", "value")
    before = site.counts()
    r = page.request.post(site.url + "/meters/m2/payment", form={"amount": "5.00", "csrf": csrf or ""})
    assert r.status == 403
    r = page.request.post(site.url + "/meters/m2/close", form={"reason": "x", "hours": "1", "csrf": csrf or ""})
    assert r.status == 403
    r = page.request.post(site.url + "/meters/m2/read", form={"csrf": csrf or ""})
    assert r.status == 403
    assert site.counts() == before
    page.context.close()


def test_the_phone_layout_does_not_scroll_sideways_and_chinese_is_one_click_away(
    chromium: Any, site: Site
) -> None:
    page = login(chromium, site, "rita", viewport=PHONE)
    for path in ("/", "/meters", "/meters/m1", "/meters/m2", "/events"):
        page.goto(site.url + path)
        width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert width[0] <= width[1], f"{path}: {width[0]} px wide in a {width[1]} px window"
    page.click("text=中文")
    assert "电表" in page.inner_text("nav")
    page.goto(site.url + "/meters")  # remembered
    assert "余额" in page.inner_text("table.meters thead")
    page.context.close()


def test_the_audit_log_names_the_person_and_exports_as_csv(chromium: Any, site: Site) -> None:
    page = login(chromium, site, "olga")
    page.goto(site.url + "/events?actor=web:olga")
    assert "payment_applied" in page.inner_text("table.events")
    r = page.request.get(site.url + "/events.csv?actor=web:olga")
    assert r.status == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text().splitlines()
    assert lines[0] == "id,at,kind,severity,account_id,meter_id,actor,rules,detail"
    assert any(",web:olga," in line for line in lines[1:])
    page.context.close()


def test_off_loopback_without_accounts_it_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "pmg.db"
    cfg = write_config(tmp_path / "gw.toml", base_config(db) + '\n[web]\nlisten = "0.0.0.0:0"\n')
    assert pmg("payment", "--help").returncode == 0
    done = pmg("web", "-c", str(cfg))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "users_file" in done.stderr

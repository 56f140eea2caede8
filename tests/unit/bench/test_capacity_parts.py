"""The capacity benchmark's parts: the CPU of the main thread told apart from the other threads', and
the configuration that runs the same gateway with no broker."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bench.bench_capacity import without_mqtt
from bench.common import CpuWindow


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_spent_by_another_thread_is_not_counted_as_the_main_threads() -> None:
    window = CpuWindow(os.getpid()).start()
    worker = threading.Thread(target=_burn, args=(0.3,))
    worker.start()
    worker.join()  # the main thread waits, spending nothing
    share = window.share()
    other_threads = share - window.main_share
    assert other_threads > 2 * window.main_share
    assert share > 0


def test_cpu_spent_by_the_main_thread_is_its_share() -> None:
    window = CpuWindow(os.getpid()).start()
    _burn(0.3)
    share = window.share()
    assert window.main_share > 0.5 * share > 0


def test_without_mqtt_drops_the_mqtt_table_and_keeps_the_rest(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        'database = "gw.db"\n\n[gateway]\ngateway_id = "g"\n\n[mqtt]\nhost = "127.0.0.1"\nport = 1884\n\n'
        '[[buses]]\nid = "bus1"\n\n[[meters]]\nid = "m1"\nbus = "bus1"\n'
    )
    text = without_mqtt(config, tmp_path / "unsent.toml").read_text()
    assert "[mqtt]" not in text and "port = 1884" not in text
    assert 'database = "gw.db"' in text and '[[buses]]\nid = "bus1"' in text and 'id = "m1"' in text
    assert '[gateway]\ngateway_id = "g"' in text


def test_without_mqtt_can_move_the_run_to_its_own_database(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('database = "gw.db"\n\n[mqtt]\nport = 1884\n\n[[buses]]\nid = "bus1"\n')
    text = without_mqtt(config, tmp_path / "unsent.toml", tmp_path / "unsent.db").read_text()
    assert f'database = "{tmp_path / "unsent.db"}"' in text and "gw.db" not in text

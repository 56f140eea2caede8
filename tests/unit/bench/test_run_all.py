"""``bench.run_all --repeat N``: one row per figure, the median run shown, the spread beside it, and a
verdict that fails when any run failed."""

from __future__ import annotations

from bench.common import Result
from bench.run_all import combine, spread, table, verdict


def result(name: str, ratio: float | None, ok: bool | None, figure: str = "") -> Result:
    return Result(name, figure or f"{ratio}", "base", ratio, ">= 0.8", ok, "note")


def test_the_median_run_is_shown_with_the_min_max_of_its_ratio() -> None:
    runs = [
        [result("history", 0.91, True), result("other", None, None, "p99 0.30 s")],
        [result("history", 0.44, False), result("other", None, None, "p99 0.27 s")],
        [result("history", 0.85, True), result("other", None, None, "p99 1,200.5 s")],
    ]
    history, other = combine(runs, 90.0)
    assert history.shown.ratio == 0.85
    assert spread(history) == "ratio 0.440–0.910, median 0.850 (3 runs)"
    assert verdict(history) == "FAIL (1 of 3 runs)"
    assert other.shown.figure == "p99 0.30 s"  # no ratio: the figure's first number
    assert spread(other) == "figure 0.27–1200.5, median 0.3 (3 runs)"
    assert verdict(other) == "-"


def test_one_run_keeps_the_table_as_it_was() -> None:
    rows = combine([[result("history", 0.9, True)]], 20.0)
    assert verdict(rows[0]) == "pass" and spread(rows[0]) == "-"
    text = table(rows)
    assert text.splitlines()[0] == "| Benchmark | Figure | Baseline | Ratio | Target | Verdict | Notes |"
    assert "| history | 0.9 | base | 0.900 | >= 0.8 | pass | note; 20 s |" in text
    assert "Spread" in table(combine([[result("h", 0.9, True)], [result("h", 0.8, True)]], 1.0), 2)

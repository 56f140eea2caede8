"""The calendar imports the one country it needs from ``holidays``, and reads the same days from it.

``holidays.countries`` imports every country when it is imported as a package (8 MB of a running
gateway's memory); the calendar registers it bare so that only the configured country's module runs
(``gateway.core.calendar._one_country_at_a_time``).  Both facts are checked in fresh interpreters: the
modules loaded, and the holiday table against one built by ``holidays`` imported the usual way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

THROUGH_CALENDAR = """
import json, sys
from datetime import date
import holidays
from gateway.core.calendar import WorkCalendar
cal = WorkCalendar("UTC", sys.argv[1])
table = holidays.country_holidays(sys.argv[1], years=2026, language="en_US")
print(json.dumps({
    "countries": sorted(m for m in sys.modules if m.startswith("holidays.countries.")),
    "days": {d.isoformat(): str(n) for d, n in sorted(table.items())},
    "types": [str(cal.day_type(date(2026, 1, 1).fromordinal(date(2026, 1, 1).toordinal() + i))) for i in range(365)],
}))
"""

THE_USUAL_WAY = """
import json, sys
import holidays, holidays.countries
table = holidays.country_holidays(sys.argv[1], years=2026, language="en_US")
print(json.dumps({d.isoformat(): str(n) for d, n in sorted(table.items())}))
"""


def _run(code: str, country: str) -> object:
    out = subprocess.run(
        [sys.executable, "-c", code, country], capture_output=True, text=True, timeout=120, cwd=REPO, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("country", ["CN", "GB", "US"])
def test_one_country_is_imported_and_its_days_are_the_same(country: str) -> None:
    seen = _run(THROUGH_CALENDAR, country)
    assert isinstance(seen, dict)
    assert 1 <= len(seen["countries"]) <= 3, seen["countries"]  # the country (and a parent it extends)
    assert seen["days"] == _run(THE_USUAL_WAY, country)
    assert seen["types"].count("holiday") >= len(seen["days"]) // 2  # the calendar reads those days


def test_the_package_still_names_every_country_for_other_users() -> None:
    """Another user of ``holidays`` in the process still finds ``holidays.countries.<Class>``."""
    code = (
        "from gateway.core.calendar import WorkCalendar\n"
        "WorkCalendar('UTC', 'CN')\n"
        "from holidays.countries import UnitedKingdom, GB\n"
        "import holidays.countries as countries\n"
        "assert UnitedKingdom.__name__ == 'UnitedKingdom' and GB is not None and countries.UnitedStates\n"
        "try:\n    countries.NoSuchCountry\nexcept AttributeError:\n    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.strip() == "ok", out.stderr

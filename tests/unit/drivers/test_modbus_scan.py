"""The Modbus scan: a short first pass, confirmation at the configured timeout, and each unit named by
the profile whose identifying registers answer, on a simulated bus of mixed meter models."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.modbus_fixtures import PROFILES, profile, run, sim_bus, with_link  # noqa: F401  (fixture)

from drivers.modbus.link import ModbusLink
from drivers.modbus.profile import Profile, load_profile
from drivers.modbus.scan import ScanResult, UnitFound, scan_units
from drivers.tomlsource import TomlError
from simulators.model import Fault, MeterModel

MIXED = {2: "sdm120", 3: "sdm630", 9: "ddsu666", 17: "dds238", 18: "dds238", 30: "sdm630"}

ONE_REGISTER = """\
[meter]
name = "{name}"

[points.energy_import]
register = 0x0048
function = 4
type = "float32"
unit = "kWh"

[identify]
present = [{{ function = 4, register = 0x0048, count = 2 }}]
"""


def test_identifying_registers_default_to_what_the_profile_reads() -> None:
    dds = profile("dds238").identifying()
    assert [(p.function, p.address, p.count) for p in dds.present] == [
        (3, 0, 2),
        (3, 0x0C, 1),
        (3, 0x0D, 1),
        (3, 0x0E, 1),
        (3, 0x1A, 1),
    ]
    sdm630 = profile("sdm630").identifying()
    assert {p.address for p in sdm630.present} == {0x0002, 0x0004, 0x0034, 0x0048}


def test_an_identify_section_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(ONE_REGISTER.format(name="x").replace("present = [", "present = []\nabsent = ["))
    with pytest.raises(TomlError):
        load_profile(str(bad))
    typo = tmp_path / "typo.toml"
    typo.write_text(ONE_REGISTER.format(name="x").replace("count = 2", "count = 2, lenght = 1"))
    with pytest.raises(TomlError, match="lenght"):
        load_profile(str(typo))


def test_a_mixed_bus_is_found_and_each_unit_named(sim_bus) -> None:  # noqa: F811
    url = f"tcp://127.0.0.1:{sim_bus({u: (MeterModel(str(u)), profile(p)) for u, p in MIXED.items()}).start_tcp()}"
    seen: list[tuple[int, int, int]] = []

    async def body(link: ModbusLink) -> ScanResult:
        result = await scan_units(
            link,
            range(1, 41),
            [profile(p) for p in PROFILES],
            probe_timeout_s=0.05,
            progress=lambda *a: seen.append(a),
        )
        assert (link.timeout_s, link.retries) == (0.5, 1)  # the configured timing is restored
        return result

    result = run(with_link(url, body, timeout_s=0.5, retries=1))
    assert {u.unit: u.profile for u in result.units} == MIXED
    assert all(not u.ambiguous and len(u.profiles) == 1 for u in result.units)
    assert result.stats.probed == 40 and result.stats.candidates == 6 and result.stats.confirmed == 6
    assert len(seen) == 40 and seen[-1] == (40, 6, 40)


def test_a_relative_that_answers_more_comes_first_and_a_tie_is_ambiguous(sim_bus, tmp_path: Path) -> None:  # noqa: F811
    for name in ("tiny", "twin"):
        (tmp_path / f"{name}.toml").write_text(ONE_REGISTER.format(name=name))
    tiny, twin = (load_profile(str(tmp_path / f"{n}.toml")) for n in ("tiny", "twin"))
    url = f"tcp://127.0.0.1:{sim_bus({5: (MeterModel('5'), profile('sdm630'))}).start_tcp()}"

    def scan(profiles: list[Profile]) -> UnitFound:
        async def body(link: ModbusLink) -> ScanResult:
            return await scan_units(link, [4, 5], profiles, probe_timeout_s=0.05)

        (found,) = run(with_link(url, body)).units
        return found

    best = scan([tiny, profile("sdm630")])
    assert best.profiles == ("sdm630", "tiny") and best.profile == "sdm630" and not best.ambiguous
    tie = scan([tiny, twin])
    assert tie.ambiguous and tie.profile is None and set(tie.profiles) == {"tiny", "twin"}


def test_a_silent_unit_is_not_found_and_an_unknown_model_is_named_none(sim_bus) -> None:  # noqa: F811
    models = {1: (MeterModel("1"), profile("dds238")), 2: (MeterModel("2"), profile("sdm120"))}
    models[1][0].faults.add(Fault.NO_ANSWER)
    url = f"tcp://127.0.0.1:{sim_bus(models).start_tcp()}"

    async def body(link: ModbusLink) -> ScanResult:
        return await scan_units(link, [1, 2, 3], [profile("dds238")], probe_timeout_s=0.05)

    result = run(with_link(url, body))
    # unit 2 answers but is no dds238: found, with no profile named
    assert [(u.unit, u.profiles, u.profile) for u in result.units] == [(2, (), None)]
    assert result.stats.candidates == 1

"""The product speaks of itself alone: every fact it relies on is stated in its own ``docs/``.

Code, configuration, tests and docs once cited files outside the repository (a shared folder of notes, a
design document that is not in it) and issue numbers of a tracker a reader of the source does not have.
Such a citation cannot be followed from a checkout or an installed wheel.  These tests fail on any of
them, check that each ``docs/…`` page cited exists, and check the facts written in docs/sources/ against
what the code ships (the DL/T 645 test vectors' checksums, the profiles' register addresses).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SELF = Path(__file__).resolve().relative_to(REPO).as_posix()

# Spelt in pieces so that this file does not match itself.
OUTSIDE = [
    re.compile(re.escape("/" + "work/")),
    re.compile(re.escape(".." + "/shared")),
    re.compile(re.escape("shared" + "/domain")),
    re.compile(r"\b" + "iss" + r"ue\s*#?\d+", re.IGNORECASE),
    re.compile(r"\bproject\s+" + "iss" + r"ues?\b", re.IGNORECASE),
    re.compile(re.escape("prepaid-" + "rules.md")),  # the outside notes' names; docs/sources/ holds the facts
    re.compile(re.escape("seed-" + "summary.md")),
]
NAMED_DOCS = ["DESIGN" + ".md", "STYLE" + ".md"]
DOC_CITATION = re.compile(r"(?<![\w/.-])docs/[\w./-]+?\.(?:md|yaml)\b")


def _tracked() -> list[str]:
    done = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
    )
    return [p for p in done.stdout.decode().split("\0") if p]


def _texts() -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in _tracked():
        path = REPO / rel
        if rel == SELF or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary
        out[rel] = data.decode("utf-8", errors="replace")
    return out


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    found = _texts()
    assert len(found) > 100, "git ls-files found too little: not a checkout?"
    return found


def test_no_file_cites_a_path_outside_the_repository_or_an_issue_number(texts: dict[str, str]) -> None:
    bad = [
        f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
        for rel, text in texts.items()
        for pattern in OUTSIDE
        for m in pattern.finditer(text)
    ]
    assert not bad, "cite docs/ instead:\n" + "\n".join(bad)


def test_no_file_cites_a_design_document_the_repository_does_not_have(texts: dict[str, str]) -> None:
    present = {Path(rel).name for rel in texts}
    bad = [
        f"{rel}: {name}"
        for name in NAMED_DOCS
        if name not in present
        for rel, text in texts.items()
        if name in text
    ]
    assert not bad, "cite docs/ instead:\n" + "\n".join(bad)


def test_every_cited_docs_page_exists(texts: dict[str, str]) -> None:
    missing = sorted(
        {
            f"{rel}: {m.group(0)}"
            for rel, text in texts.items()
            for m in DOC_CITATION.finditer(text)
            if not (REPO / m.group(0)).is_file()
        }
    )
    assert not missing, "\n".join(missing)


def test_the_sources_pages_exist_and_the_presets_name_their_sources() -> None:
    for page in ("rules", "protocols", "tariffs"):
        assert (REPO / "docs" / "sources" / f"{page}.md").is_file(), page
    for preset in sorted((REPO / "gateway" / "presets").glob("*.toml")):
        sources = tomllib.loads(preset.read_text(encoding="utf-8"))["sources"]
        assert sources and all(isinstance(s, str) and s.strip() for s in sources), preset.name


def _frames(section: str) -> list[bytes]:
    return [bytes.fromhex(m) for m in re.findall(r"`((?:[0-9A-F]{2} )+[0-9A-F]{2})`", section)]


def test_the_documented_dlt645_vectors_have_correct_checksums() -> None:
    from drivers.dlt645.frame import decode

    text = (REPO / "docs" / "sources" / "protocols.md").read_text(encoding="utf-8")
    section = text.split("## Test vectors", 1)[1].split("\n## ", 1)[0]
    frames = [f for f in _frames(section) if len(f) > 10]
    assert len(frames) == 7
    for frame in frames:
        body = frame.lstrip(b"\xfe")
        assert sum(body[:-2]) & 0xFF == body[-2], frame.hex(" ")
        decode(frame)  # the codec accepts what the page states


def test_every_shipped_profile_register_is_in_the_documented_map() -> None:
    from drivers.base import Point
    from drivers.modbus.profile import builtin_dir, list_profiles, load_profile

    text = (REPO / "docs" / "sources" / "protocols.md").read_text(encoding="utf-8")
    assert builtin_dir().is_dir()
    for name in list_profiles():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name}: no row in docs/sources/protocols.md"
        profile = load_profile(name)
        assert profile.meter.source and profile.meter.source.split(",")[0] in row, name
        for point in Point:
            spec = profile.point(point)
            if spec is not None:
                assert f"0x{spec.address:04X}" in row, f"{name} {point.value} 0x{spec.address:04X}"
        if profile.relay is not None:
            assert f"0x{profile.relay.state.address:04X}" in row, f"{name} relay"

"""Advisory rules on their own: which ids name one advisory, how answers merge, which versions one affects, ignores."""

from __future__ import annotations

import json
import subprocess
from datetime import date
from typing import Any

import pytest

from jobs.dependencies.advisories import Ignore, affects, fixed_in, found_on, known_ids, merge_advisories
from tests.conftest import FIXTURES
from tests.test_semver import needs_node, npm_semver
from worker.vendors.osv import advisory_of

ADVISORIES = FIXTURES / "advisories"
MULTER = json.loads((ADVISORIES / "multer-bulk.json").read_text())["multer"]
SEMVER = json.loads((ADVISORIES / "semver-bulk.json").read_text())["semver"]
SEMVER_VERSIONS = ["5.7.1", "6.3.0", "7.5.1", "5.7.2", "6.3.1", "7.5.2", "7.0.0", "6.0.0", "5.0.0", "7.6.3"]
OSV = {p.stem: json.loads(p.read_text()) for p in (ADVISORIES / "osv").glob("GHSA-*.json")}


def osv(ghsa: str) -> dict[str, Any]:
    """The OSV record `ghsa` as the OSV source hands it on: in the registry's advisory shape, for multer."""
    advisory = advisory_of(OSV[ghsa], "multer")
    assert advisory is not None
    return advisory


def test_known_ids_reads_the_ghsa_from_the_registrys_url() -> None:
    """The registry's numbered advisory is known by the GHSA id its URL links to; a bare number is not an id."""
    registry = next(a for a in MULTER if "GHSA-44fp-w29j-9vj5" in a["url"])
    assert known_ids(registry) == {"GHSA-44fp-w29j-9vj5"}
    assert known_ids(osv("GHSA-44fp-w29j-9vj5")) >= {"GHSA-44fp-w29j-9vj5", "CVE-2025-47935"}


def test_an_advisory_both_sources_know_is_merged_once_with_both_names() -> None:
    """registry + OSV: the two shared advisories are one entry each (registry's first, both sources); OSV's third
    stays, from OSV alone."""
    answers = {"registry": {"multer": MULTER}, "osv": {"multer": [osv(g) for g in sorted(OSV)]}}
    merged = merge_advisories(answers)["multer"]
    assert len(merged) == 3
    sources = {tuple(a["sources"]) for a in merged}
    assert sources == {("osv", "registry"), ("osv",)}
    assert [a["id"] for a in merged if a["sources"] == ["osv"]] == ["GHSA-g5hg-p3ph-g8qg"]
    assert answers["registry"]["multer"] == MULTER, "merging does not change the sources' answers"


def test_the_same_source_twice_is_not_merged_into_one() -> None:
    """Two registry advisories with different ids and no shared GHSA stay two."""
    first, second = ({"id": n, "url": f"https://npmjs.com/advisories/{n}", "vulnerable_versions": "<1"} for n in (1, 2))
    assert len(merge_advisories({"registry": {"x": [first, second]}})["x"]) == 2


def test_one_advisory_in_three_records_keeps_every_range() -> None:
    """GHSA-c2qf-rxjj-qqgw as npm's bulk endpoint answers it (three records, three ranges) is one advisory that
    affects semver 5.7.1, 6.3.0 and 7.5.1 and not 5.7.2, 6.3.1 or 7.5.2, each fixed on its own line."""
    merged = merge_advisories({"registry": {"semver": SEMVER}})["semver"]
    assert len(merged) == 1
    chains = {("semver", v): [["app", "semver"]] for v in SEMVER_VERSIONS}
    versions = {"versions": {v: {} for v in ["5.7.1", "5.7.2", "6.3.0", "6.3.1", "7.5.1", "7.5.2"]}}
    found = {f["version"]: f["fixed_in"] for f in found_on(chains, {"semver": merged}, {"semver": versions})}
    assert found == {"5.7.1": "5.7.2", "6.3.0": "6.3.1", "7.5.1": "7.5.2", "7.0.0": "7.5.2", "6.0.0": "6.3.1",
                     "5.0.0": "5.7.2"}  # fmt: skip


@needs_node
def test_the_merged_semver_advisory_flags_what_npms_own_semver_flags() -> None:
    """Differential: a version is affected by the merged advisory exactly when npm's semver module says it satisfies
    one of the three records' ranges (npm audit's test: includePrerelease, loose)."""
    script = """
const semver = require(process.argv[1]);
const [records, versions] = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log(JSON.stringify(versions.map(v => records.some(
  r => semver.satisfies(v, r.vulnerable_versions, {includePrerelease: true, loose: true})))));
"""
    result = subprocess.run(["node", "-e", script, str(npm_semver())], input=json.dumps([SEMVER, SEMVER_VERSIONS]),
                            capture_output=True, text=True, check=True)  # fmt: skip
    npm = dict(zip(SEMVER_VERSIONS, json.loads(result.stdout), strict=True))
    merged = merge_advisories({"registry": {"semver": SEMVER}})["semver"][0]
    assert {v: affects(merged, v) for v in SEMVER_VERSIONS} == npm
    assert [v for v, hit in npm.items() if hit] == ["5.7.1", "6.3.0", "7.5.1", "7.0.0", "6.0.0", "5.0.0"]


def test_records_of_one_advisory_from_two_sources_keep_both_ranges_and_the_higher_severity() -> None:
    """The same GHSA from the registry and OSV with different ranges affects every version either names, at the
    higher of the two severities."""
    registry = {"id": 1, "url": "https://github.com/advisories/GHSA-c2qf-rxjj-qqgw", "severity": "moderate",
                "vulnerable_versions": "<5.7.2"}  # fmt: skip
    other = {"id": "GHSA-c2qf-rxjj-qqgw", "severity": "high", "vulnerable_versions": ">=6.0.0 <6.3.1",
             "aliases": ["CVE-2022-25883"]}  # fmt: skip
    merged = merge_advisories({"registry": {"semver": [registry]}, "osv": {"semver": [other]}})["semver"]
    assert len(merged) == 1
    assert merged[0]["severity"] == "high"
    assert merged[0]["sources"] == ["osv", "registry"]
    assert affects(merged[0], "5.7.1")
    assert affects(merged[0], "6.3.0")
    assert not affects(merged[0], "6.3.1")
    assert registry["vulnerable_versions"] == "<5.7.2", "merging does not change the sources' answers"


@pytest.mark.parametrize(("version", "vulnerable"), [
    ("1.4.5-lts.2", True),   # a prerelease is inside `<2.0.0`, as npm audit's includePrerelease test has it
    ("2.0.0", False),
    ("2.0.1", False),
])  # fmt: skip
def test_affects_is_npm_audits_test(version: str, vulnerable: bool) -> None:
    """`<2.0.0` (GHSA-44fp-w29j-9vj5) affects multer 1.4.5-lts.2 and not 2.0.0 or later."""
    advisory = osv("GHSA-44fp-w29j-9vj5")
    assert affects(advisory, version) is vulnerable


def test_fixed_in_is_the_first_stable_release_outside_the_range() -> None:
    """From 1.4.5-lts.2 under `>=1.4.4-lts.1 <2.0.1`: 2.0.1, passing over 2.0.0 (still vulnerable) and prereleases."""
    versions = ["1.4.4", "1.4.5-lts.1", "1.4.5-lts.2", "2.0.0-rc.1", "2.0.0", "2.0.1-rc.1", "2.0.1", "2.0.2"]
    assert fixed_in(">=1.4.4-lts.1 <2.0.1", "1.4.5-lts.2", versions) == "2.0.1"
    assert fixed_in("*", "1.4.5-lts.2", versions) is None


def test_found_on_names_each_affected_version_with_its_chain_and_fix() -> None:
    """An affected (package, version) gets every advisory on it, how it is installed, its aliases and its fix;
    a version outside every range gets none."""
    advisories = merge_advisories({"osv": {"multer": [osv(g) for g in sorted(OSV)]}})
    metas = {"multer": {"versions": {"1.4.5-lts.2": {}, "2.0.0": {}, "2.0.1": {}}}}
    found = found_on({("multer", "1.4.5-lts.2"): [["uploads", "multer"]], ("multer", "2.0.1"): [["multer"]]},
                     advisories, metas)  # fmt: skip
    assert {a["version"] for a in found} == {"1.4.5-lts.2"}
    by_id = {a["id"]: a for a in found}
    assert set(by_id) == set(OSV)
    assert by_id["GHSA-g5hg-p3ph-g8qg"]["fixed_in"] == "2.0.1"
    assert by_id["GHSA-44fp-w29j-9vj5"]["fixed_in"] == "2.0.0"
    assert by_id["GHSA-44fp-w29j-9vj5"]["via"] == [["uploads", "multer"]]
    assert "CVE-2025-47935" in by_id["GHSA-44fp-w29j-9vj5"]["aliases"]


def test_ignore_by_ghsa_id_covers_the_registrys_numbered_advisory() -> None:
    """An ignore naming GHSA-44fp-w29j-9vj5 silences the registry's advisory 1104917, which links to it."""
    advisory = {"package": "multer", "version": "1.4.5-lts.2", "id": 1104917, "severity": "high", "title": "DoS",
                "url": "https://github.com/advisories/GHSA-44fp-w29j-9vj5", "fixed_in": "2.0.0", "via": [["multer"]],
                "aliases": ["GHSA-44fp-w29j-9vj5"]}  # fmt: skip
    ignore = Ignore(advisory="GHSA-44fp-w29j-9vj5", reason="uploads off")
    assert ignore.covers(advisory, date(2026, 12, 1))
    assert not Ignore(advisory="GHSA-4pg4-qvpc-4q3h", reason="other").covers(advisory, date(2026, 12, 1))


def test_an_expired_ignore_silences_nothing() -> None:
    """`until: 2026-11-30` covers its package up to that day and not the day after."""
    ignore = Ignore(package="multer", reason="upgrade planned", until=date(2026, 11, 30))
    advisory = {"package": "multer", "id": "GHSA-44fp-w29j-9vj5"}
    assert ignore.covers(advisory, date(2026, 11, 30))
    assert not ignore.covers(advisory, date(2026, 12, 1))


def test_an_ignore_names_exactly_one_target() -> None:
    """Neither or both of advisory and package is a configuration error that says the rule."""
    with pytest.raises(ValueError, match="exactly one of advisory or package"):
        Ignore(reason="why")
    with pytest.raises(ValueError, match="exactly one of advisory or package"):
        Ignore(advisory="GHSA-44fp-w29j-9vj5", package="multer", reason="why")

"""Our semver against npm's own `semver` module, run by the machine's node, on a table of (version, range) pairs."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from jobs.dependencies import semver

VERSIONS = [
    "1.4.5-lts.2", "2.0.0-rc.5", "2.0.1-rc.26", "2.0.0", "1.9.9", "0.4.1", "0.5.0", "0.0.3", "0.0.3-beta", "1.2.3",
    "1.2.3-alpha.1", "1.2.3-alpha.10", "1.2.3-alpha.2", "v1.2.3", "=1.2.3", " 1.2.3 ", "1.2.3+build.5", "1.2.3-0",
    "3.0.0-0", "10.0.0", "1.2.4-beta", "1.3.0", "0.0.0", "1.2", "01.2.3", "1.2.3-beta.01", "2.0.0-0", "4.17.21",
    "5.0.0-beta.1", "1.0.0-rc.1+meta", "1.2.3beta", "latest", "", "1.2.3.4", "2.0.0-rc.1", "9007199254740992.0.0",
]  # fmt: skip
RANGES = [
    "<2.0.0", "<2.0.1", ">=1.2.3", "^1.2.3", "~1.2.3", "^0.4.1", "^0.0.3", "1.x", "1.2.x", "*", "", "x",
    "1.2.3 - 2.0.0", "1.2 - 2", "<=1.2.3 || >=2.0.0-rc.1", ">1.2.3-alpha.1 <1.3.0", "~1.2.3-beta", "^1.2.3-alpha.1",
    "=1.2.3", ">=1.2.3 <2.0.0-0", "<0.0.0-0", "<1.0.0 || >=1.2.3 <1.2.4", "~> 1.2", "^0", "^0.0", "~0.4",
    "1.2.3-0 - 1.2.4", ">=2.0.0-rc.1", "~1", "^1.x", "1.2.3 || 2.x", ">= 1.2.3", "<  2.0.0", "<=1.x", ">1.2",
    "x.1", "1.2.3+build", ">=0.0.0", "*-0", "not a range", "<=2.0.0-rc.5", "1.2.3 - 2.0.0-rc.1",
]  # fmt: skip
PAIRS = [(v, r) for v in VERSIONS for r in RANGES]
JUDGE = """
const semver = require(process.argv[1]);
const pairs = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = {};
for (const inc of [false, true]) {
  out[inc] = pairs.map(([v, r]) => semver.satisfies(v, r, {includePrerelease: inc, loose: true}));
}
out.sorted = semver.sort(%s.filter(v => semver.valid(v, true)), true).map(v => semver.parse(v, true).version);
console.log(JSON.stringify(out));
"""


@functools.cache
def npm_semver() -> Path | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, check=False).stdout.strip()
    module = Path(root) / "npm" / "node_modules" / "semver"
    return module if module.is_dir() else None


@functools.cache
def npm_answers() -> dict[str, list[object]]:
    module = npm_semver()
    assert module is not None
    script = JUDGE % json.dumps(VERSIONS)
    result = subprocess.run(["node", "-e", script, str(module)], input=json.dumps(PAIRS), capture_output=True,
                            text=True, check=True)  # fmt: skip
    answers: dict[str, list[object]] = json.loads(result.stdout)
    return answers


needs_node = pytest.mark.skipif(
    npm_semver() is None,
    reason="node and npm (with its bundled semver) are not on PATH: apt-get install nodejs npm (as root)",
)


def test_the_table_is_large_enough() -> None:
    """The differential table holds at least 300 (version, range) pairs, as the issue asks."""
    assert len(PAIRS) >= 300


@needs_node
@pytest.mark.parametrize("include_prerelease", [False, True])
def test_satisfies_agrees_with_npm_on_every_pair(include_prerelease: bool) -> None:
    """satisfies(version, range) is npm's answer for every pair, with and without includePrerelease (loose)."""
    theirs = npm_answers()[str(include_prerelease).lower()]
    ours = [semver.satisfies(v, r, include_prerelease=include_prerelease) for v, r in PAIRS]
    wrong = [(v, r, o) for (v, r), o, t in zip(PAIRS, ours, theirs, strict=True) if o != t]
    assert wrong == []


@needs_node
def test_versions_sort_as_npm_sorts_them() -> None:
    """Valid versions sort in npm's order (numeric prerelease ids numerically, a release after its prereleases)."""
    valid = [v for v in VERSIONS if semver.parse(v) is not None]
    ours = sorted(valid, key=functools.cmp_to_key(semver.compare))
    assert [semver.parse(v).version for v in ours] == npm_answers()["sorted"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("version", "range_"), [("1.4.5-lts.2", "<2.0.0"), ("2.0.0-rc.5", "<2.0.0"),
                                                 ("2.0.1-rc.26", "<2.0.1")])  # fmt: skip
def test_prereleases_the_issue_names_are_vulnerable(version: str, range_: str) -> None:
    """The three prerelease versions npm audit flags (multer, vue-toastification, h3) satisfy their advisory range."""
    assert semver.satisfies(version, range_, include_prerelease=True)


def test_hostile_range_is_refused_quickly_not_matched() -> None:
    """A very long range of spaces and digits parses in bounded regex time and matches nothing it should not."""
    assert not semver.satisfies("1.2.3", ">" + " " * 50_000 + "1" * 300)


def test_sort_key_orders_as_compare_does() -> None:
    """SemVer.key sorts every pair of table versions exactly as compare() orders them."""
    parsed = [p for v in VERSIONS if (p := semver.parse(v)) is not None]
    for a in parsed:
        for b in parsed:
            assert (a.key > b.key) - (a.key < b.key) == a.compare(b), (a, b)

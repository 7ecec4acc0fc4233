"""Outdated: what an update would install (`wanted`, as npm picks it), and how far `latest` is (`update_kind`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from jobs.dependencies import semver


def update_kind(locked: str, latest: str | None) -> str:
    """patch, minor, major, or none: how far the locked version is behind `latest`.

    Below 1.0.0 a caret range pins the minor (`^0.4.1` allows only 0.4.x) and for 0.0.x the
    patch, so such a step is as breaking as a major one and is called major.
    """
    have, want = semver.parse(locked), semver.parse(latest) if latest else None
    if have is None or want is None or want.compare(have) <= 0:
        return "none"
    if want.major != have.major:
        return "major"
    if have.major == 0 and (want.minor != have.minor or (have.minor == 0 and want.patch != have.patch)):
        return "major"
    return "minor" if want.minor != have.minor else "patch"


def pick(meta: Mapping[str, Any], spec: str, *, node: str | None = None, before: datetime | None = None,
         newest: list[str] | None = None) -> str | None:  # fmt: skip
    """The version npm would pick for `spec` from a (trimmed) document: npm-pick-manifest's rules. Pure.

    A dist-tag names its version (or, when that is newer than `before`, the newest version at or below it).
    A range takes the `latest` tag if it satisfies the range, is not deprecated, was published by `before`
    and its `engines.node` accepts `node`; else, of the versions in the range published by `before`, the newest
    that is neither deprecated nor refuses `node`, then the newest `node` can run, then the newest not
    deprecated, then the newest. `node` None (not known) refuses nothing; `before` None (no
    `min-release-age`) excludes nothing, nor does it when the document carries no publication times.
    `npm outdated`'s `wanted` is `pick(meta, specifier)` and its `latest` is `pick(meta, "*")`.
    """
    tags, versions = meta.get("dist-tags") or {}, meta.get("versions") or {}
    times = meta.get("time") or {}
    cutoff = before.timestamp() if before is not None and times else None

    def published(version: str) -> bool:
        at = times.get(version)
        return cutoff is None or not at or _timestamp(at) <= cutoff

    def engine_ok(version: str) -> bool:
        needs = ((versions.get(version) or {}).get("engines") or {}).get("node")
        return node is None or not needs or semver.satisfies(node, str(needs), include_prerelease=True)

    text = spec.strip()
    exact = semver.parse(text)
    if text and exact is None and not semver.valid_range(text):  # a dist-tag
        tagged = tags.get(text)
        if not isinstance(tagged, str) or tagged not in versions:
            return None
        return tagged if published(tagged) else pick(meta, f"<={tagged}", node=node, before=before, newest=newest)
    if exact is not None and text not in ("*", ""):
        return exact.version if exact.version in versions and published(exact.version) else None
    range_ = text or "*"
    latest = tags.get("latest")
    if (isinstance(latest, str) and latest in versions and (range_ == "*" or semver.satisfies(latest, range_))
            and published(latest) and engine_ok(latest) and not versions[latest].get("deprecated")):  # fmt: skip
        return latest
    best: tuple[int, str] | None = None  # (tier, version): 3 clean, 2 runs on `node`, 1 not deprecated, 0 any
    for version in newest if newest is not None else newest_first(versions):
        if not published(version) or not semver.satisfies(version, range_):
            continue
        runs, live = engine_ok(version), not (versions.get(version) or {}).get("deprecated")
        tier = 3 if runs and live else 2 if runs else 1 if live else 0
        if best is None or tier > best[0]:
            best = (tier, version)
            if tier == 3:
                break
    return best[1] if best else None


def wanted(specifier: str, meta: Mapping[str, Any], newest: list[str] | None = None) -> str | None:
    """What `npm update` would install for the specifier, with no engine or release-age rule (see `pick`)."""
    return pick(meta, specifier, newest=newest)


def _timestamp(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")  # npm's Date.parse gives NaN, and `NaN <= cutoff` is false: not published by then


def newest_first(versions: Iterable[str]) -> list[str]:
    """Versions npm can read, newest first by npm's ordering."""
    parsed = [(p, v) for v in versions if (p := semver.parse(v)) is not None]
    return [v for _, v in sorted(parsed, key=lambda pair: pair[0].key, reverse=True)]


class Picks:
    """`pick` for each (package, range, Node.js, cutoff) once per run, from each document sorted once: a workspace
    repeats them."""

    def __init__(self) -> None:
        self._sorted: dict[str, list[str]] = {}
        self._picked: dict[tuple[str, str, str | None, datetime | None], str | None] = {}

    def pick(self, name: str, specifier: str, meta: Mapping[str, Any], *, node: str | None = None,
             before: datetime | None = None) -> str | None:  # fmt: skip
        key = (name, specifier, node, before)
        if key not in self._picked:
            if name not in self._sorted:
                self._sorted[name] = newest_first((meta.get("versions") or {}).keys())
            self._picked[key] = pick(meta, specifier, node=node, before=before, newest=self._sorted[name])
        return self._picked[key]

    def wanted(self, name: str, specifier: str, meta: Mapping[str, Any]) -> str | None:
        return self.pick(name, specifier, meta)

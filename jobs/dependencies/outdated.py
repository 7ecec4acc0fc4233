"""Outdated: what an update would install (`wanted`, as npm picks it), and how far `latest` is (`update_kind`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def wanted(specifier: str, meta: Mapping[str, Any], newest: list[str] | None = None) -> str | None:
    """What `npm update` / `pnpm update` would install for the specifier, as npm-pick-manifest picks it.

    A dist-tag names its version; else the `latest` tag if the range allows it; else the
    newest non-deprecated version in the range (prereleases only if the range names one),
    else the newest deprecated one. `newest` is the document's versions newest first, when
    the caller has them sorted already.
    """
    tags, versions = meta.get("dist-tags") or {}, meta.get("versions") or {}
    spec = specifier.strip() or "*"
    if spec in tags:
        return str(tags[spec])
    if not semver.valid_range(spec):
        return None
    latest = tags.get("latest")
    if isinstance(latest, str) and latest in versions and semver.satisfies(latest, spec):
        return latest
    fallback = None
    for version in newest if newest is not None else newest_first(versions):
        if semver.satisfies(version, spec):
            if not (versions.get(version) or {}).get("deprecated"):
                return version
            fallback = fallback or version
    return fallback


def newest_first(versions: Iterable[str]) -> list[str]:
    """Versions npm can read, newest first by npm's ordering."""
    parsed = [(p, v) for v in versions if (p := semver.parse(v)) is not None]
    return [v for _, v in sorted(parsed, key=lambda pair: pair[0].key, reverse=True)]


class Picks:
    """`wanted` for each (package, range) once per run, from each document sorted once: a workspace repeats both."""

    def __init__(self) -> None:
        self._sorted: dict[str, list[str]] = {}
        self._picked: dict[tuple[str, str], str | None] = {}

    def wanted(self, name: str, specifier: str, meta: Mapping[str, Any]) -> str | None:
        key = (name, specifier)
        if key not in self._picked:
            if name not in self._sorted:
                self._sorted[name] = newest_first((meta.get("versions") or {}).keys())
            self._picked[key] = wanted(specifier, meta, self._sorted[name])
        return self._picked[key]

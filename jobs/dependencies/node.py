"""Is the app's Node.js runtime still supported? Its declared version against the release data.

Pure functions of the release schedule (nodejs/Release schedule.json), the release index
(nodejs.org/dist/index.json or index.tab) and `today`; reading the project is at the edge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

from jobs.dependencies import semver
from jobs.dependencies.lockfiles.model import LockfileError, read_manifest


@dataclass(frozen=True)
class Release:
    """One Node.js release from the index."""

    version: tuple[int, int, int]
    released: date
    lts: str | None
    security: bool

    @property
    def text(self) -> str:
        return "v" + ".".join(map(str, self.version))


@dataclass(frozen=True)
class Declared:
    """The runtime a project asks for, and where it says so."""

    source: str
    spec: str
    line: int
    exact: tuple[int, int, int] | None


def parse_index(text: str) -> list[Release]:
    """nodejs.org/dist/index.json or index.tab, newest first."""
    text = text.lstrip()
    rows: list[dict[str, Any]]
    if text.startswith("["):
        rows = json.loads(text)
    else:
        lines = text.splitlines()
        header = lines[0].split("\t")
        rows = [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line.strip()]
    releases = []
    for row in rows:
        version = _triple(str(row["version"]))
        if version is None:
            continue
        lts = row.get("lts")
        releases.append(Release(
            version, date.fromisoformat(str(row["date"])),
            None if lts in (False, "-", "", None) else str(lts),
            row.get("security") in (True, "true"),
        ))  # fmt: skip
    return sorted(releases, key=lambda r: r.version, reverse=True)


def _triple(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _runtime_files(folder: Path) -> list[tuple[str, str]]:
    """(source, spec) of the files in one folder that pin the Node.js that runs: .nvmrc, .node-version, Dockerfile."""
    found: list[tuple[str, str]] = []
    for name in (".nvmrc", ".node-version"):
        if (folder / name).is_file():
            found.append((name, (folder / name).read_text(encoding="utf-8-sig").strip()))
    dockerfile = folder / "Dockerfile"
    if dockerfile.is_file():
        text = dockerfile.read_text(encoding="utf-8-sig", errors="replace")
        # The last stage is the image that runs; a build stage may use another Node.js.
        matches = re.findall(r"^FROM\s+(?:--\S+\s+)*(?:\S+/)?node:(\S+)", text, re.M | re.I)
        if matches:
            found.append(("Dockerfile FROM node", matches[-1]))
    return found


def engines(folder: Path) -> str | None:
    """package.json's `engines.node` (a UTF-8 byte-order mark tolerated), or None."""
    if not (folder / "package.json").is_file():
        return None
    try:
        doc = read_manifest(folder / "package.json")
    except LockfileError:  # the project check names an unreadable package.json; here it just declares nothing
        return None
    node = (doc.get("engines") or {}).get("node") if isinstance(doc.get("engines"), dict) else None
    return str(node) if node else None


def declared_runtime(folder: Path, codenames: Mapping[str, int] | None = None, root: Path | None = None,
                     ) -> Declared | None:  # fmt: skip
    """The Node.js a project runs on: its own .nvmrc, .node-version or Dockerfile, else those of the folders
    above it up to `root` (the repository: a root Dockerfile builds client/ and server/), else engines.node."""
    folders = [folder]
    if root is not None and folder.resolve() != root.resolve() and folder.resolve().is_relative_to(root.resolve()):
        here = folder.resolve().parent
        while here != root.resolve().parent:
            folders.append(here)
            here = here.parent
    for index, place in enumerate(folders):
        for source, spec in _runtime_files(place):
            parsed = parse_spec(spec, codenames or {})
            if parsed is not None:
                where = source if index == 0 else f"{place.relative_to(root.resolve()).as_posix() or '.'}/{source}"  # type: ignore[union-attr]
                return Declared(where, spec, *parsed)
    wanted = engines(folder)
    if wanted:
        parsed = parse_spec(wanted, codenames or {})
        if parsed is not None:
            return Declared("package.json engines.node", wanted, *parsed)
    return None


def satisfying_lines(spec: str, schedule: Mapping[str, Any], releases: list[Release]) -> list[int]:
    """The release lines of the schedule with a version in the `engines` range, newest first.

    A line counts if any of its known releases, its first (x.0.0) or a far later one
    (x.999999.0, for a line newer than the index) satisfies the range, with npm's semver.
    """
    lines = sorted((int(key[1:]) for key in schedule if re.fullmatch(r"v\d+", key)), reverse=True)
    by_line: dict[int, list[str]] = {}
    for release in releases:
        by_line.setdefault(release.version[0], []).append(".".join(map(str, release.version)))
    return [
        line
        for line in lines
        if any(semver.satisfies(v, spec) for v in [*by_line.get(line, []), f"{line}.0.0", f"{line}.999999.0"])
    ]


def parse_spec(spec: str, codenames: Mapping[str, int]) -> tuple[int, tuple[int, int, int] | None] | None:
    """(release line, exact version if pinned) from `20.11.1`, `v20`, `^20.11`, `>=18`, `lts/iron`, `20-alpine`."""
    text = spec.strip().lower()
    if text.startswith("lts/"):
        line = codenames.get(text[4:])
        return (line, None) if line is not None else None
    exact = _triple(text)
    match = re.search(r"(\d+)", text)
    if not match:
        return None
    return int(match[1]), exact


@dataclass(frozen=True)
class RuntimeVerdict:
    """How supported a release line is today."""

    line: int
    status: str
    """eol | maintenance | active-lts | current | unknown"""
    eol_date: str | None
    latest_lts: str | None
    newest_in_line: str | None
    security_release: str | None
    """A newer release in the same line that is a security release, if the exact version is known."""
    lines: tuple[int, ...] | None = None
    """For an `engines` range: the release lines that satisfy it (newest first)."""


def assess(declared: Declared, schedule: Mapping[str, Any], releases: list[Release], today: date) -> RuntimeVerdict:
    """Judge a declared runtime against the schedule and release index. Pure."""
    entry = schedule.get(f"v{declared.line}") or {}
    end = _day(entry.get("end"))
    lts_lines = [int(key[1:]) for key, info in schedule.items() if re.fullmatch(r"v\d+", key) and _lts_on(info, today)]
    latest_lts_line = max(lts_lines, default=None)
    latest_lts = next((r.text for r in releases if latest_lts_line and r.version[0] == latest_lts_line), None)
    if latest_lts is None and latest_lts_line is not None:
        latest_lts = f"v{latest_lts_line}"  # the index may be older than the schedule
    if not entry:
        status = "unknown"
    elif end and today > end:
        status = "eol"
    elif _day(entry.get("maintenance")) and today >= _day(entry.get("maintenance")):  # type: ignore[operator]
        status = "maintenance"
    elif _day(entry.get("lts")) and today >= _day(entry.get("lts")):  # type: ignore[operator]
        status = "active-lts"
    else:
        status = "current"
    in_line = [r for r in releases if r.version[0] == declared.line]
    security = None
    if declared.exact is not None:
        newer = [r for r in in_line if r.version > declared.exact and r.security]
        security = max(newer, key=lambda r: r.version).text if newer else None
    return RuntimeVerdict(declared.line, status, end.isoformat() if end else None, latest_lts,
                          in_line[0].text if in_line else None, security)  # fmt: skip


_PREFERENCE = {"active-lts": 0, "maintenance": 1, "current": 2}


def assess_declared(declared: Declared, schedule: Mapping[str, Any], releases: list[Release],
                    today: date) -> RuntimeVerdict:  # fmt: skip
    """Judge a pinned runtime by its line; an `engines` range by the best supported line that satisfies it.

    `>= 20.4.0` is not "Node 20": 22 and 24 satisfy it too, so it is as supported as the
    best of them (an active LTS before a maintenance line before a current one).
    """
    if declared.source != "package.json engines.node":
        return assess(declared, schedule, releases, today)
    lines = satisfying_lines(declared.spec, schedule, releases)
    if not lines:
        return assess(declared, schedule, releases, today)
    verdicts = [assess(Declared(declared.source, declared.spec, line, None), schedule, releases, today)
                for line in lines]  # fmt: skip
    started = {line for line in lines if (_day((schedule.get(f"v{line}") or {}).get("start")) or today) <= today}
    supported = [v for v in verdicts if v.status in _PREFERENCE and v.line in started]
    best = min(supported, key=lambda v: (_PREFERENCE[v.status], -v.line)) if supported else verdicts[-1]
    return replace(best, lines=tuple(v.line for v in supported))


def _lts_on(info: Mapping[str, Any], today: date) -> bool:
    """Whether a line is in its LTS period (active or maintenance) on `today`."""
    lts, end = _day(info.get("lts")), _day(info.get("end"))
    return lts is not None and end is not None and lts <= today < end


def _day(text: Any) -> date | None:
    return date.fromisoformat(str(text)) if text else None


def codenames(schedule: Mapping[str, Any]) -> dict[str, int]:
    """LTS codenames (lower case) to release lines, for `lts/iron` style specs."""
    return {str(info["codename"]).lower(): int(key[1:]) for key, info in schedule.items()
            if re.fullmatch(r"v\d+", key) and info.get("codename")}  # fmt: skip

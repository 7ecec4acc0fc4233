"""The project's Node.js as a report shows it: what it declares, judged against the release data.

The judging is node.py's (pure); this module reads the project's files and fetches the release
data, keeping the last copy fetched so a failed fetch still judges (and says so, as a gap).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from datetime import date
from typing import Any

from jobs.dependencies import semver
from jobs.dependencies.advisories import source_gap
from jobs.dependencies.node import Declared, Release, assess_declared, codenames, declared_runtime, engines, parse_index
from jobs.dependencies.project import Located
from worker.http import HttpError
from worker.vendors.nodejs import release_data


def node_finding(located: Located, runtime: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The report's `node`: the declared runtime judged against the release data; None without either."""
    if not runtime:
        return None
    schedule, releases, today = runtime["schedule"], runtime["releases"], runtime["today"]
    declared = declared_runtime(located.folder, codenames(schedule), root=located.root)
    if declared is None:
        return None
    verdict = assess_declared(declared, schedule, releases, today)
    node: dict[str, Any] = {"declared": f"{declared.spec} ({declared.source})", "line": verdict.line,
                            "status": verdict.status, "eol_date": verdict.eol_date, "latest_lts": verdict.latest_lts,
                            "security_release": verdict.security_release}  # fmt: skip
    if verdict.lines is not None:
        node["lines"] = list(verdict.lines)
    spec = engines(located.folder)
    if spec and declared.source != "package.json engines.node":
        running = f"{declared.exact[0]}.{declared.exact[1]}.{declared.exact[2]}" if declared.exact else None
        candidates = [running] if running else [r.text[1:] for r in releases if r.version[0] == declared.line][:1]
        if candidates and not semver.satisfies(candidates[0], spec):
            node["engines_mismatch"] = f"engines.node is {spec}, but {declared.source} runs Node.js {declared.spec}"
    node["runs"], node["runs_from"] = runs_on(declared, releases)
    return node


def node_version(located: Located, runtime: Mapping[str, Any] | None) -> str | None:
    """The Node.js version a project's dependencies are judged against (`runs_on`); None when not known: nothing
    declared, or only a line and no release data to say which release of it."""
    schedule = runtime["schedule"] if runtime else {}
    releases = runtime["releases"] if runtime else []
    declared = declared_runtime(located.folder, codenames(schedule) if schedule else {}, root=located.root)
    if declared is None or (declared.exact is None and not releases):
        return None
    return runs_on(declared, releases)[0]


def runs_on(declared: Declared, releases: list[Release]) -> tuple[str, str]:
    """(the Node.js version the project's dependencies are judged against, and what that version is).

    Exact when the project names one (`.nvmrc` 22.12.0, a Dockerfile's node:22.12.0); otherwise an
    assumption, said as one: the newest release of the line it names (`.nvmrc` 22, node:22-slim), or of the
    newest line its `engines.node` range allows, which is only what it permits, not what it runs on.
    """
    if declared.exact is not None:
        return ".".join(map(str, declared.exact)), f"exact ({declared.source})"
    newest = next((r for r in releases if r.version[0] == declared.line), None)
    version = newest.text[1:] if newest else f"{declared.line}.0.0"
    if declared.source == "package.json engines.node":
        return version, (f"assumed: the newest Node.js {declared.line} release, the newest line engines.node "
                         f"{declared.spec} allows (a range the project permits, not a version it runs on)")  # fmt: skip
    return version, f"assumed: the newest Node.js {declared.line} release ({declared.source} names only the line)"


async def release_data_for(index_url: str, schedule_url: str, cache: MutableMapping[str, Any],
                           gaps: list[dict[str, str]], today: date) -> dict[str, Any] | None:  # fmt: skip
    """The schedule and releases, fetched; else the last copy fetched (a gap either way); None if there is none."""
    try:
        schedule, index = await release_data(index_url, schedule_url)
        releases = parse_index(index)
        rows = [[r.text, r.released.isoformat(), r.lts, r.security] for r in releases]
        cache["node"] = {"fetched": today.isoformat(), "schedule": schedule, "releases": rows}
    except (HttpError, ValueError, KeyError) as exc:
        kept = cache.get("node")
        if not kept:
            gaps.append(source_gap("Node.js release data", str(exc), "the Node.js runtime was not checked"))
            return None
        gaps.append(source_gap("Node.js release data", str(exc), f"judged with the copy fetched on {kept['fetched']}"))
        schedule = kept["schedule"]
        releases = parse_index(json.dumps([{"version": v, "date": d, "lts": lts or False, "security": sec}
                                           for v, d, lts, sec in kept["releases"]]))  # fmt: skip
    return {"schedule": schedule, "releases": releases, "today": today}

"""`dependencies`: what is outdated, what is vulnerable (and through what), is Node.js supported.

FAIL means an advisory at or above `fail_on_severity` that is not ignored, or a Node.js
runtime past its end of life. WARN means a major update, a deprecated locked version, a
runtime in maintenance, or an advisory below the threshold. Sentry hears of each
(project, advisory) once, again only if its severity rises or its ignore expires.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import nodesemver
from pydantic import model_validator

from jobs.dependencies.lockfiles import Lockfile, LockfileError, read_lockfile
from jobs.dependencies.node import Declared, RuntimeVerdict, assess, codenames, declared_runtime, parse_index
from worker.http import HttpError
from worker.job import JobContext, JobOptions, Notice, Outcome, Status
from worker.vendors.github import GITHUB_API, GitHub
from worker.vendors.nodejs import NODE_INDEX, NODE_SCHEDULE, release_data
from worker.vendors.npm import NPM_REGISTRY, Registry

SEVERITIES = ("info", "low", "moderate", "high", "critical")
Severity = Literal["info", "low", "moderate", "high", "critical"]


class Ignore(JobOptions):
    """An advisory (by id) or a package not to fail on, with a reason and an optional expiry."""

    advisory: str | None = None
    package: str | None = None
    reason: str
    until: date | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Ignore:
        if (self.advisory is None) == (self.package is None):
            raise ValueError("an ignore entry names exactly one of advisory or package")
        return self

    def covers(self, advisory: Mapping[str, Any], today: date) -> bool:
        """Whether this entry silences the advisory on `today` (an expired entry silences nothing)."""
        if self.until is not None and today > self.until:
            return False
        return str(advisory["id"]) == self.advisory or advisory["package"] == self.package


class GitHubSource(JobOptions):
    """A project folder in a GitHub repository, read through the GitHub API."""

    repo: str
    ref: str = "main"
    path: str = ""
    api_url: str = GITHUB_API


class Project(JobOptions):
    """One project folder (client/ or server/) holding package.json and a lockfile."""

    name: str
    path: str | None = None
    github: GitHubSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Project:
        if (self.path is None) == (self.github is None):
            raise ValueError("a project has exactly one of path or github")
        return self


PROJECT_FILES = ("package.json", "pnpm-lock.yaml", "package-lock.json", ".nvmrc", ".node-version", "Dockerfile")


def fetch_github(source: GitHubSource, into: Path) -> None:
    """Copy a project's package and lockfiles from GitHub into `into` (missing ones are skipped)."""
    with GitHub(source.repo, api_url=source.api_url) as github:
        for name in PROJECT_FILES:
            data = github.contents("/".join(p for p in (source.path.strip("/"), name) if p), source.ref)
            if data is not None:
                (into / name).write_bytes(data)


class DependenciesOptions(JobOptions):
    """Which projects to check, against which registry, and what fails the run."""

    projects: tuple[Project, ...]
    registry: str = NPM_REGISTRY
    registry_token: str | None = None
    fail_on_severity: Severity = "high"
    ignore: tuple[Ignore, ...] = ()
    node_index: str = NODE_INDEX
    node_schedule: str = NODE_SCHEDULE
    concurrency: int = 16


@dataclass
class Report:
    """One project's findings, in the shape `opskeeper deps --json` prints."""

    name: str
    path: str
    lockfile_version: str = ""
    resolved_count: int = 0
    direct: list[dict[str, Any]] = field(default_factory=list)
    advisories: list[dict[str, Any]] = field(default_factory=list)
    node: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "lockfile_version": self.lockfile_version,
                "resolved_count": self.resolved_count, "direct": self.direct, "advisories": self.advisories,
                "node": self.node, "problems": self.problems}  # fmt: skip


def find_lockfile(folder: Path) -> tuple[Path, str]:
    """The lockfile for a project folder, and the project's importer key in it (a workspace's root may hold it)."""
    for candidate in (folder, *folder.resolve().parents[:3]):
        for name in ("pnpm-lock.yaml", "package-lock.json", "npm-shrinkwrap.json"):
            if (candidate / name).is_file():
                return candidate / name, folder.resolve().relative_to(candidate.resolve()).as_posix()
    raise LockfileError(f"{folder}: no pnpm-lock.yaml or package-lock.json here or in the folders above")


def update_kind(locked: str, latest: str | None) -> str:
    """patch, minor, major, or none: how far the locked version is behind `latest`."""
    if not latest:
        return "none"
    try:
        have, want = nodesemver.make_semver(locked, loose=True), nodesemver.make_semver(latest, loose=True)
    except ValueError:
        return "none"
    if not nodesemver.gt(latest, locked, loose=True):
        return "none"
    if want.major != have.major:
        return "major"
    return "minor" if want.minor != have.minor else "patch"


def wanted(specifier: str, versions: list[str]) -> str | None:
    """The newest version the specifier allows: what `pnpm update` would install."""
    try:
        # Newest first, so the first match ends the search (a package may have thousands of versions).
        return next((v for v in newest_first(versions) if nodesemver.satisfies(v, specifier, loose=True)), None)
    except (ValueError, TypeError):
        return None


_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?")


def newest_first(versions: list[str]) -> list[str]:
    """Versions sorted newest first by their numbers (a prerelease before its release); cheap to compute."""

    def key(version: str) -> tuple[int, int, int, int, str]:
        match = _VERSION.match(version)
        if not match:
            return (-1, -1, -1, -1, version)
        return (int(match[1]), int(match[2]), int(match[3]), 0 if match[4] else 1, match[4] or "")

    return sorted(versions, key=key, reverse=True)


def fixed_in(vulnerable: str, current: str, versions: list[str]) -> str | None:
    """The first version after `current` outside the vulnerable range, when the registry knows one."""
    later = [v for v in reversed(newest_first(versions)) if _is_release(v) and nodesemver.gt(v, current, loose=True)]
    return next((v for v in later if not nodesemver.satisfies(v, vulnerable, loose=True)), None)


def _is_release(version: str) -> bool:
    try:
        return not nodesemver.make_semver(version, loose=True).prerelease
    except ValueError:
        return False


def build_report(project: Project, lock: Lockfile, importer: str, *, metas: Mapping[str, Any],
                 advisories: Mapping[str, list[dict[str, Any]]], runtime: RuntimeVerdict | None,
                 declared: Declared | None) -> Report:  # fmt: skip
    """The findings for one project. Pure: everything fetched is passed in."""
    where = f"github:{project.github.repo}/{project.github.path}" if project.github else str(project.path)
    report = Report(project.name, where, lock.version, len(lock.packages))
    for direct in lock.importers.get(importer, lock.importers.get(".", [])):
        meta = metas.get(direct.package[0]) or {}
        versions = list((meta.get("versions") or {}).keys())
        latest = (meta.get("dist-tags") or {}).get("latest")
        report.direct.append({
            "name": direct.name, "specifier": direct.specifier, "locked": direct.locked,
            "wanted": wanted(direct.specifier, versions) if versions else None, "latest": latest,
            "update": update_kind(direct.locked, latest),
            "deprecated": ((meta.get("versions") or {}).get(direct.locked) or {}).get("deprecated"),
        })  # fmt: skip
    for package, installed in sorted(_by_name(lock).items()):
        for advisory in advisories.get(package, []):
            for version in sorted(installed):
                if not nodesemver.satisfies(version, advisory.get("vulnerable_versions", "*"), loose=True):
                    continue
                known = list(((metas.get(package) or {}).get("versions") or {}).keys())
                report.advisories.append({
                    "package": package, "version": version, "id": advisory["id"],
                    "severity": advisory.get("severity", "info"), "title": advisory.get("title", ""),
                    "url": advisory.get("url", ""),
                    "fixed_in": fixed_in(advisory["vulnerable_versions"], version, known) if known else None,
                    "via": lock.via((package, version)),
                })  # fmt: skip
    if declared is not None and runtime is not None:
        report.node = {"declared": f"{declared.spec} ({declared.source})", "line": runtime.line,
                       "status": runtime.status, "eol_date": runtime.eol_date, "latest_lts": runtime.latest_lts,
                       "security_release": runtime.security_release}  # fmt: skip
    return report


def _by_name(lock: Lockfile) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, version in lock.packages:
        found.setdefault(name, set()).add(version)
    return found


async def check_projects(options: DependenciesOptions, base: Path, cache: MutableMapping[str, Any], today: date,
                         token: str | None = None) -> list[Report]:  # fmt: skip
    """Read every project, ask the registry (concurrently, cached), and judge."""
    with tempfile.TemporaryDirectory(prefix="opskeeper-deps-") as scratch:
        return await _check(options, base, cache, today, token=token, scratch=Path(scratch))


async def _check(options: DependenciesOptions, base: Path, cache: MutableMapping[str, Any], today: date, *,
                 token: str | None, scratch: Path) -> list[Report]:  # fmt: skip
    locks: list[tuple[Project, Path, Lockfile, str]] = []
    reports: list[Report] = []
    for project in options.projects:
        if project.github is not None:
            folder = scratch / project.name
            folder.mkdir()
            await asyncio.to_thread(fetch_github, project.github, folder)
        else:
            folder = (base / str(project.path)).resolve()
        try:
            path, importer = find_lockfile(folder)
            locks.append((project, folder, read_lockfile(path), importer))
        except LockfileError as exc:
            reports.append(Report(project.name, str(project.path or project.github), problems=[str(exc)]))
    node_data = asyncio.create_task(_node_data(options))
    registry = Registry(options.registry, token or options.registry_token, cache, options.concurrency)
    pending: list[asyncio.Task[Any]] = [node_data]
    try:
        direct_names = {d.package[0] for _, _, lock, imp in locks
                        for d in lock.importers.get(imp, lock.importers.get(".", []))}  # fmt: skip
        wanted_versions: dict[str, set[str]] = {}
        for _, _, lock, _ in locks:
            for name, versions in _by_name(lock).items():
                wanted_versions.setdefault(name, set()).update(versions)
        advisories_task = asyncio.create_task(registry.advisories(wanted_versions))
        pending.append(advisories_task)
        metas = await registry.packages(direct_names)
        advisories = await advisories_task
        affected = {name for name, advs in advisories.items() for adv in advs
                    if any(nodesemver.satisfies(v, adv.get("vulnerable_versions", "*"), loose=True)
                           for v in wanted_versions.get(name, ()))}  # fmt: skip
        metas.update(await registry.packages(affected - set(metas)))  # for `fixed_in`
    except BaseException:
        # One failure ends the check: end the other requests too, so none dies unobserved.
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise
    finally:
        await registry.close()
    schedule, releases = await node_data
    for project, folder, lock, importer in locks:
        declared = declared_runtime(folder, codenames(schedule)) if schedule else None
        runtime = assess(declared, schedule, releases, today) if declared and schedule else None
        reports.append(build_report(project, lock, importer, metas=metas, advisories=advisories, runtime=runtime,
                                    declared=declared))  # fmt: skip
    return reports


async def _node_data(options: DependenciesOptions) -> tuple[dict[str, Any], list[Any]]:
    try:
        schedule, index = await release_data(options.node_index, options.node_schedule)
        return schedule, parse_index(index)
    except (HttpError, ValueError):
        return {}, []  # the runtime check is skipped; the report says so


def verdict(reports: list[Report], options: DependenciesOptions, today: date) -> tuple[Status, str]:
    """The run's status and one-line summary. Pure."""
    threshold = SEVERITIES.index(options.fail_on_severity)
    status, parts = Status.OK, []
    for report in reports:
        bits = list(report.problems)
        live = [a for a in report.advisories if not any(i.covers(a, today) for i in options.ignore)]
        severe = [a for a in live if SEVERITIES.index(a["severity"]) >= threshold]
        if severe:
            status = Status.FAIL
            bits.append(f"{len(severe)} advisories at {options.fail_on_severity} or above "
                        f"({', '.join(sorted({a['package'] for a in severe}))})")  # fmt: skip
        elif live:
            bits.append(f"{len(live)} lower-severity advisories")
        majors = [d["name"] for d in report.direct if d["update"] == "major"]
        deprecated = [d["name"] for d in report.direct if d["deprecated"]]
        if majors:
            bits.append(f"{len(majors)} major updates ({', '.join(majors[:5])})")
        if deprecated:
            bits.append(f"deprecated: {', '.join(deprecated)}")
        node = report.node
        if node and node["status"] == "eol":
            status = Status.FAIL
            bits.append(f"Node.js {node['line']} is past its end of life ({node['eol_date']})")
        elif node and node["status"] == "maintenance":
            bits.append(f"Node.js {node['line']} is in maintenance (end of life {node['eol_date']})")
        if report.problems:
            status = Status.FAIL
        if bits and status is Status.OK:  # every finding above added a bit
            status = Status.WARN
        parts.append(f"{report.name}: " + ("; ".join(bits) if bits else "up to date"))
    return status, " | ".join(parts)


def notices(reports: list[Report], options: DependenciesOptions, alerted: MutableMapping[str, Any],
            today: date) -> list[Notice]:  # fmt: skip
    """One notice per (project, advisory), again only if its severity rose or its ignore expired."""
    found = []
    for report in reports:
        for adv in report.advisories:
            if any(i.covers(adv, today) for i in options.ignore):
                continue
            key = f"{report.name}:{adv['id']}"
            before = alerted.get(key)
            if before is not None and SEVERITIES.index(before) >= SEVERITIES.index(adv["severity"]):
                continue
            alerted[key] = adv["severity"]
            level: Literal["warning", "error"] = (
                "error" if SEVERITIES.index(adv["severity"]) >= SEVERITIES.index(options.fail_on_severity)
                else "warning"
            )  # fmt: skip
            via = " <- ".join(adv["via"][0][::-1]) if adv["via"] else adv["package"]
            found.append(Notice(level, f"{report.name}: {adv['severity']} advisory {adv['id']} in {adv['package']}@"
                                f"{adv['version']} ({adv['title']}) via {via}",
                                ("dependencies", report.name, str(adv["id"])), adv))  # fmt: skip
    return found


class DependenciesJob:
    """Check every project's lockfile against the registry, its advisories and Node.js's schedule."""

    def __init__(self, options: DependenciesOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        today = datetime.now(UTC).date()
        cache = ctx.state.get("registry_cache", {}) or {}
        try:
            reports = asyncio.run(
                check_projects(
                    self.options, Path.cwd(), cache, today, self.options.registry_token or os.environ.get("NPM_TOKEN")
                )
            )
        except HttpError as exc:
            return Outcome(Status.ERROR, str(exc), {"registry": self.options.registry})
        ctx.state.set("registry_cache", cache)
        for report in reports:
            ctx.log("dependencies.report", project=report.name, lockfile_version=report.lockfile_version,
                    resolved=report.resolved_count, advisories=len(report.advisories),
                    majors=[d["name"] for d in report.direct if d["update"] == "major"],
                    deprecated=[d["name"] for d in report.direct if d["deprecated"]],
                    node=report.node and report.node["status"], problems=report.problems)  # fmt: skip
        alerted = ctx.state.get("alerted", {}) or {}
        for notice in notices(reports, self.options, alerted, today):
            ctx.notify(notice)
        ctx.state.set("alerted", alerted)
        status, summary = verdict(reports, self.options, today)
        details = {"projects": [json.loads(json.dumps(r.public(), default=str)) for r in reports]}
        return Outcome(status, summary[:500], details, alerted=True)

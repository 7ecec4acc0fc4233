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
import tempfile
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from jobs.dependencies import semver
from jobs.dependencies.advisories import (
    SEVERITIES,
    Ignore,
    Severity,
    advisory_answers,
    affects,
    found_on,
    source_gap,
)
from jobs.dependencies.lockfiles import Direct, LockfileError, Package, Tracer
from jobs.dependencies.node import Declared, Release, assess_declared, codenames, declared_runtime, engines, parse_index
from jobs.dependencies.outdated import Picks, update_kind
from jobs.dependencies.project import Located, Lockfiles, disagreements, drift, locate
from worker.http import HttpError
from worker.job import JobContext, JobOptions, Notice, Outcome, Status
from worker.vendors.github import GITHUB_API, GitHub
from worker.vendors.nodejs import NODE_INDEX, NODE_SCHEDULE, release_data
from worker.vendors.npm import NPM_REGISTRY, Registry, latest_node
from worker.vendors.osv import OSV_API


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
    recursive: bool = False
    """Check every importer (workspace member) of the lockfile found there, each as its own project."""

    @model_validator(mode="after")
    def _one_source(self) -> Project:
        if (self.path is None) == (self.github is None):
            raise ValueError("a project has exactly one of path or github")
        return self


PROJECT_FILES = ("package.json", "pnpm-lock.yaml", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock",
                 "bun.lock", "pnpm-workspace.yaml", ".nvmrc", ".node-version", "Dockerfile")  # fmt: skip


def fetch_github(source: GitHubSource, into: Path) -> Path:
    """Copy a project's package and lockfiles from GitHub into `into`, keeping the repository's layout.

    For a project in a subfolder the repository root's files come too: a workspace's
    lockfile and a root Dockerfile or .nvmrc answer for `client/` and `server/`. Returns the
    project's folder; missing files are skipped. A `.git` marker makes `into` the repository root.
    """
    folder = into / source.path.strip("/") if source.path.strip("/") else into
    folder.mkdir(parents=True, exist_ok=True)
    (into / ".git").mkdir(exist_ok=True)
    parts = [p for p in source.path.strip("/").split("/") if p]
    with GitHub(source.repo, api_url=source.api_url) as github:
        for depth in range(len(parts), -1, -1):
            here = "/".join(parts[:depth])
            for name in PROJECT_FILES:
                data = github.contents("/".join(p for p in (here, name) if p), source.ref)
                if data is not None:
                    (into / here / name).write_bytes(data)
    return folder


class DependenciesOptions(JobOptions):
    """Which projects to check, against which registry and advisory sources, and what fails the run."""

    projects: tuple[Project, ...]
    registry: str = NPM_REGISTRY
    registry_token: str | None = None
    advisories: tuple[Literal["registry", "osv"], ...] = ("registry",)
    """Advisory sources asked every run; their answers are merged by GHSA id."""
    advisory_fallback: Literal["osv", "none"] = "osv"
    """Asked when every source in `advisories` failed (the registry's bulk endpoint is not served by every mirror)."""
    osv_url: str = OSV_API
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
    advisories_checked: bool = True  # no source answered: `advisories` is unknown, never "none" (JSON null)
    node: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    lockfile: str = ""
    manager: str = ""
    drift: list[str] = field(default_factory=list)
    """What a frozen install would reject: package.json and the lockfile out of step, or two lockfiles disagreeing."""
    order: int = field(default=0, repr=False)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "manager": self.manager, "lockfile": self.lockfile,
                "lockfile_version": self.lockfile_version, "resolved_count": self.resolved_count, "direct": self.direct,
                "advisories": self.advisories if self.advisories_checked else None, "advisories_checked":
                self.advisories_checked, "node": self.node, "drift": self.drift, "problems": self.problems}  # fmt: skip


@dataclass
class Checked:
    """Every project's report, and each source that could not be asked (a gap: what was not checked, and why)."""

    reports: list[Report]
    gaps: list[dict[str, str]] = field(default_factory=list)
    nothing_checked: bool = False
    """No source answered at all: the run is an error, not a finding."""

    def public(self) -> dict[str, Any]:
        return {"projects": [r.public() for r in self.reports], "gaps": self.gaps}


def chains_to(directs: Iterable[Direct], tracer: Tracer) -> dict[Package, list[list[str]]]:
    """Each of the tracer's targets the registry directs reach, with the chains reaching it (the direct's name
    first, as package.json names it)."""
    chains: dict[Package, list[list[str]]] = {}
    for direct in directs:
        if direct.source == "registry":
            for target, chain in tracer.reached(direct.package).items():
                chains.setdefault(target, []).append([direct.name, *chain[1:]])
    return chains


def _node_for(located: Located, runtime: Mapping[str, Any] | None) -> dict[str, Any] | None:
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
    node["runs"] = _runs(declared, releases)
    return node


def _runs(declared: Declared, releases: list[Release]) -> str | None:
    """The Node.js version the project runs on, as precisely as known (for engines checks of its dependencies)."""
    if declared.exact is not None:
        return ".".join(map(str, declared.exact))
    newest = next((r for r in releases if r.version[0] == declared.line), None)
    return newest.text[1:] if newest else f"{declared.line}.0.0"


def build_report(project_name: str, where: str, located: Located, *, metas: Mapping[str, Any],
                 advisories: Mapping[str, list[dict[str, Any]]], tracer: Tracer | None,
                 node: dict[str, Any] | None, drift: list[str], picks: Picks | None = None) -> Report:  # fmt: skip
    """The findings for one project. Pure: everything fetched and read is passed in."""
    lock, importer = located.lockfile, located.importer
    report = Report(project_name, where, lock.version, len(lock.packages), lockfile=str(lock.path),
                    manager=lock.manager, node=node, drift=drift)  # fmt: skip
    runs = node.get("runs") if node else None
    directs = lock.importers.get(importer, [])
    for direct in directs:
        if direct.source != "registry":
            report.direct.append({"name": direct.name, "specifier": direct.specifier, "locked": direct.locked,
                                  "source": direct.source, "wanted": None, "latest": None, "update": "none",
                                  "deprecated": None})  # fmt: skip
            continue
        meta = metas.get(direct.package[0]) or {}
        latest = (meta.get("dist-tags") or {}).get("latest")
        entry = {
            "name": direct.name, "specifier": direct.specifier, "locked": direct.locked, "source": "registry",
            "wanted": (picks or Picks()).wanted(direct.package[0], direct.range, meta) if meta else None,
            "latest": latest,
            "update": update_kind(direct.locked, latest),
            "deprecated": ((meta.get("versions") or {}).get(direct.locked) or {}).get("deprecated"),
        }  # fmt: skip
        if direct.alias_of:
            entry["package"] = direct.alias_of
        needs = latest_node(meta)
        if needs and runs and semver.valid_range(needs) and not semver.satisfies(runs, needs):
            entry["latest_needs_node"] = needs
        report.direct.append(entry)
    if tracer is None:
        return report
    # Which vulnerable packages this importer installs, and through which direct dependency.
    chains = chains_to(directs, tracer)
    if len(lock.importers) == 1:  # a project of its own installs every package of its lockfile
        for target in tracer.targets:
            chains.setdefault(target, [])
    report.advisories = found_on(chains, advisories, metas)
    return report


@dataclass
class _Target:
    project: str
    where: str
    located: Located
    order: int


async def check_projects(options: DependenciesOptions, base: Path, cache: MutableMapping[str, Any], today: date,
                         token: str | None = None, *, recursive: bool = False) -> Checked:  # fmt: skip
    """Read every project, ask the registry, the advisory sources and Node.js's release data, and judge.

    Each source can fail on its own: the report still comes out, and the failure is a named gap.
    `cache` holds the registry's ETags and the last Node.js release data between runs.
    `recursive` checks every importer of the lockfile found for each project (as `pnpm -r`).
    """
    with tempfile.TemporaryDirectory(prefix="opskeeper-deps-") as scratch:
        return await _check(options, base, cache, today, token=token, scratch=Path(scratch), recursive=recursive)


async def _targets(options: DependenciesOptions, base: Path, *, scratch: Path, recursive: bool, lockfiles: Lockfiles,
                   gaps: list[dict[str, str]]) -> tuple[list[_Target], list[Report]]:  # fmt: skip
    """The project folders to report on, each with its lockfile; a report with a problem for each that has none."""
    targets: list[_Target] = []
    reports: list[Report] = []
    for project in options.projects:
        where = f"github:{project.github.repo}/{project.github.path}" if project.github else str(project.path)
        if project.github is not None:
            try:
                folder = await asyncio.to_thread(fetch_github, project.github, scratch / project.name)
            except HttpError as exc:
                gaps.append(source_gap("github", str(exc), f"{project.name} was not checked"))
                reports.append(Report(project.name, where, problems=[f"could not be read from GitHub: {exc}"],
                                      order=len(reports) + len(targets)))  # fmt: skip
                continue
        else:
            folder = (base / str(project.path)).resolve()
        try:
            located = locate(folder, lockfiles)
        except LockfileError as exc:
            reports.append(Report(project.name, where, problems=[str(exc)], order=len(reports) + len(targets)))
            continue
        if recursive or project.recursive:
            root = located.lockfile.path.parent
            for importer in located.lockfile.importers:
                member = (root / importer).resolve()
                name = project.name if importer == "." else f"{project.name}/{importer}"
                targets.append(_Target(name, str(member), Located(member, located.lockfile, importer, located.root),
                                       len(reports) + len(targets)))  # fmt: skip
        else:
            targets.append(_Target(project.name, where, located, len(reports) + len(targets)))
    return targets, reports


async def _check(options: DependenciesOptions, base: Path, cache: MutableMapping[str, Any], today: date, *,
                 token: str | None, scratch: Path, recursive: bool) -> Checked:  # fmt: skip
    lockfiles = Lockfiles()
    gaps: list[dict[str, str]] = []
    targets, reports = await _targets(
        options, base, scratch=scratch, recursive=recursive, lockfiles=lockfiles, gaps=gaps
    )
    locks = {id(t.located.lockfile): t.located.lockfile for t in targets}
    installed: dict[str, set[str]] = {}
    for lock in locks.values():
        for name, version in lock.registry_packages:
            installed.setdefault(name, set()).add(version)
    direct_names = {d.package[0] for t in targets for d in t.located.lockfile.importers.get(t.located.importer, [])
                    if d.source == "registry"}  # fmt: skip
    registry = Registry(options.registry, token or options.registry_token, cache.setdefault("registry", {}),
                        options.concurrency)  # fmt: skip
    node_task = asyncio.create_task(_node_data(options, cache, gaps, today))
    advisory_task = asyncio.create_task(advisory_answers(options, registry, installed, gaps))
    try:
        metas: dict[str, Any] = await registry.packages(direct_names)
        answered = await advisory_task
        advisories = answered or {}
        affected = {name for name, advs in advisories.items()
                    if any(affects(a, v) for a in advs for v in installed.get(name, ()))}  # fmt: skip
        metas.update(await registry.packages(affected - set(metas)))  # for `fixed_in`
        runtime = await node_task
    except BaseException:
        for task in (node_task, advisory_task):
            task.cancel()
        await asyncio.gather(node_task, advisory_task, return_exceptions=True)
        raise
    finally:
        await registry.close()
    if registry.failures:
        names = sorted(registry.failures)
        gaps.append(source_gap("registry", f"{len(names)} of {len(direct_names | affected)} package documents could "
                               f"not be fetched ({', '.join(names[:5])}{', …' if len(names) > 5 else ''}): "
                               f"{registry.failures[names[0]]}", "no wanted/latest for those packages"))  # fmt: skip
    picks = Picks()
    tracers: dict[int, Tracer] = {}
    for key, lock in locks.items():
        vulnerable = {(n, v) for n, v in lock.registry_packages if n in affected
                      and any(affects(a, v) for a in advisories.get(n, []))}  # fmt: skip
        tracers[key] = Tracer(lock, vulnerable)
    for target in targets:
        located = target.located
        found = _drift(located, lockfiles)
        report = build_report(target.project, target.where, located, metas=metas, advisories=advisories,
                              tracer=tracers[id(located.lockfile)], node=_node_for(located, runtime), drift=found,
                              picks=picks)  # fmt: skip
        report.order = target.order
        report.advisories_checked = answered is not None or not installed
        reports.append(report)
    reports.sort(key=lambda r: r.order)  # as the projects are configured
    asked = direct_names | affected
    registry_answered = bool(asked) and len(registry.failures) < len(asked)
    nothing = bool(targets) and not registry_answered and answered is None and runtime is None
    # The sources are asked concurrently: name their gaps in one fixed order, whichever failed first.
    order = ["github", "registry", "advisories (registry)", "advisories (osv)", "Node.js release data"]
    gaps.sort(key=lambda g: order.index(g["source"]) if g["source"] in order else len(order))
    return Checked(reports, gaps, nothing_checked=nothing or (not targets and bool(gaps)))


def _drift(located: Located, lockfiles: Lockfiles) -> list[str]:
    if not (located.folder / "package.json").is_file():
        return []
    try:
        found = drift(located.lockfile, located.importer, located.folder)
    except LockfileError as exc:
        return [str(exc)]
    for other in located.others:
        try:
            second = lockfiles.get(other)
        except LockfileError as exc:
            found.append(str(exc))
            continue
        found += drift(second, ".", located.folder)
        differ = disagreements(located.lockfile, located.importer, second)
        if differ:
            found.append(f"{located.lockfile.path.name} and {other.name} disagree: {', '.join(differ[:10])}")
    return found


async def _node_data(options: DependenciesOptions, cache: MutableMapping[str, Any], gaps: list[dict[str, str]],
                     today: date) -> dict[str, Any] | None:  # fmt: skip
    """The schedule and releases, fetched; else the last copy fetched (a gap either way); None if there is none."""
    try:
        schedule, index = await release_data(options.node_index, options.node_schedule)
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


def verdict(reports: list[Report], options: DependenciesOptions, today: date,
            gaps: list[dict[str, str]] | tuple[()] = ()) -> tuple[Status, str]:  # fmt: skip
    """The run's status and one-line summary. Pure.

    A gap (a source that could not be asked) makes the run at least WARN: what was not
    checked is not known to be fine.
    """
    threshold = SEVERITIES.index(options.fail_on_severity)
    status, parts, clean = Status.OK, [], 0
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
        newer_node = [f"{d['name']} ({d['latest_needs_node']})" for d in report.direct if d.get("latest_needs_node")]
        if majors:
            bits.append(f"{len(majors)} major updates ({', '.join(majors[:5])})")
        if deprecated:
            bits.append(f"deprecated: {', '.join(deprecated)}")
        if newer_node:
            bits.append(f"latest needs a newer Node.js: {', '.join(newer_node[:5])}")
        if report.drift:
            bits.append(f"lockfile out of step with package.json ({len(report.drift)}): {report.drift[0]}")
        node = report.node
        if node and node["status"] == "eol":
            status = Status.FAIL
            bits.append(f"Node.js {node['line']} is past its end of life ({node['eol_date']})")
        elif node and node["status"] == "maintenance":
            bits.append(f"Node.js {node['line']} is in maintenance (end of life {node['eol_date']})")
        if node and node.get("engines_mismatch"):
            bits.append(node["engines_mismatch"])
        if report.problems:
            status = Status.FAIL
        if bits and status is Status.OK:  # every finding above added a bit
            status = Status.WARN
        if bits or len(reports) <= 5:
            parts.append(f"{report.name}: " + ("; ".join(bits) if bits else "up to date"))
        else:
            clean += 1
    if clean:
        parts.append(f"{clean} more up to date")
    if gaps:
        parts.append("not checked: " + "; ".join(f"{g['source']} ({g['effect']})" for g in gaps))
        if status is Status.OK:
            status = Status.WARN
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
        cache = ctx.state.get("cache", {}) or {}
        token = self.options.registry_token or os.environ.get("NPM_TOKEN")
        checked = asyncio.run(check_projects(self.options, Path.cwd(), cache, today, token))
        ctx.state.set("cache", cache)
        for gap in checked.gaps:
            ctx.log("dependencies.gap", **gap)
        for report in checked.reports:
            ctx.log("dependencies.report", project=report.name, lockfile_version=report.lockfile_version,
                    resolved=report.resolved_count, advisories=len(report.advisories) if report.advisories_checked
                    else None, majors=[d["name"] for d in report.direct if d["update"] == "major"],
                    deprecated=[d["name"] for d in report.direct if d["deprecated"]], node=report.node and
                    report.node["status"], drift=len(report.drift), problems=report.problems)  # fmt: skip
        details = json.loads(json.dumps(checked.public(), default=str))
        if checked.nothing_checked:
            why = "; ".join(g["error"] for g in checked.gaps)
            return Outcome(Status.ERROR, f"nothing could be checked: {why}", details)
        alerted = ctx.state.get("alerted", {}) or {}
        for notice in notices(checked.reports, self.options, alerted, today):
            ctx.notify(notice)
        ctx.state.set("alerted", alerted)
        status, summary = verdict(checked.reports, self.options, today, checked.gaps)
        return Outcome(status, summary, details, alerted=True)

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
from collections.abc import Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from jobs.dependencies import semver
from jobs.dependencies.advisories import (
    SEVERITIES,
    advisory_answers,
    affects,
    found_on,
    source_gap,
)
from jobs.dependencies.lockfiles import Direct, LockfileError, Package, Tracer
from jobs.dependencies.npmrc import FLAGS, NpmConfig, read_npm_config
from jobs.dependencies.options import DependenciesOptions, GitHubSource
from jobs.dependencies.outdated import Picks, pick, update_kind
from jobs.dependencies.project import Located, Lockfiles, auto_peers, disagreements, drift, locate
from jobs.dependencies.runtime import node_finding, node_version, release_data_for
from worker.http import HttpError
from worker.job import JobContext, Notice, Outcome, Status
from worker.vendors.github import GitHub
from worker.vendors.npm import Registry, implicit_token, latest_node

PROJECT_FILES = ("package.json", "pnpm-lock.yaml", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock",
                 "bun.lock", "pnpm-workspace.yaml", ".nvmrc", ".node-version", "Dockerfile", ".npmrc")  # fmt: skip


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
    npm: dict[str, Any] | None = None
    """The npm configuration it was judged by (`npm_summary`)."""
    lockfile_why: str = ""
    """Why that lockfile was read (`choose_lockfile`)."""

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "manager": self.manager, "lockfile": self.lockfile,
                "lockfile_why": self.lockfile_why, "npm": self.npm, "lockfile_version": self.lockfile_version,
                "resolved_count": self.resolved_count, "direct": self.direct,
                "advisories": self.advisories if self.advisories_checked else None,
                "advisories_checked": self.advisories_checked, "node": self.node, "drift": self.drift,
                "problems": self.problems}  # fmt: skip


@dataclass
class Checked:
    """Every project's report, and each source that could not be asked (a gap: what was not checked, and why)."""

    reports: list[Report]
    gaps: list[dict[str, str]] = field(default_factory=list)
    nothing_checked: bool = False
    """No source answered at all: the run is an error, not a finding."""
    registry: dict[str, int] = field(default_factory=dict)
    """How the registry documents were had: fetched, revalidated (a 304) or fresh in the cache (by max-age)."""

    def public(self) -> dict[str, Any]:
        return {"projects": [r.public() for r in self.reports], "gaps": self.gaps, "registry_answers": self.registry}


def chains_to(directs: Iterable[Direct], tracer: Tracer) -> dict[Package, list[list[str]]]:
    """Each of the tracer's targets the registry directs reach, with the chains reaching it (the direct's name
    first, as package.json names it)."""
    chains: dict[Package, list[list[str]]] = {}
    for direct in directs:
        if direct.source == "registry":
            for target, chain in tracer.reached(direct.package).items():
                chains.setdefault(target, []).append([direct.name, *chain[1:]])
    return chains


def build_report(project_name: str, where: str, located: Located, *, metas: Mapping[str, Any],
                 advisories: Mapping[str, list[dict[str, Any]]], tracer: Tracer | None,
                 node: dict[str, Any] | None, drift: list[str], picks: Picks | None = None,
                 config: NpmConfig | None = None, now: datetime | None = None,
                 runs: str | None = None, peers: Collection[str] = ()) -> Report:  # fmt: skip
    """The findings for one project. Pure: everything fetched and read is passed in.

    `wanted` and `latest` are npm's picks (`npm outdated`'s): for the specifier and for `*`, skipping
    versions whose `engines.node` refuses the Node.js the project runs on, and versions published after
    `config`'s release-age cutoff (`min-release-age`, `before`, pnpm's `minimumReleaseAge`) at `now`.
    `peers` are installed only as the project's own peers (`auto_peers`): not listed as direct dependencies.
    """
    lock, importer = located.lockfile, located.importer
    report = Report(project_name, where, lock.version, len(lock.packages), lockfile=str(lock.path),
                    lockfile_why=located.why, manager=lock.manager, node=node, drift=drift)  # fmt: skip
    runs = runs or (node.get("runs") if node else None)  # the Node.js npm's engine rule is judged against
    picks = picks or Picks()
    directs = lock.importers.get(importer, [])
    for direct in directs:
        if direct.name in peers:  # auto-installed for a peer: installed (its advisories count), not direct
            continue
        if direct.source != "registry":
            report.direct.append({"name": direct.name, "specifier": direct.specifier, "locked": direct.locked,
                                  "source": direct.source, "wanted": None, "latest": None, "update": "none",
                                  "deprecated": None})  # fmt: skip
            continue
        package = direct.package[0]
        meta = metas.get(package) or {}
        newest = (meta.get("dist-tags") or {}).get("latest")
        before = config.before(now, package) if config is not None and now is not None else None
        latest = picks.pick(package, "*", meta, node=runs, before=before) if meta else None
        entry = {
            "name": direct.name, "specifier": direct.specifier, "locked": direct.locked, "source": "registry",
            "wanted": picks.pick(package, direct.range, meta, node=runs, before=before) if meta else None,
            "latest": latest,
            "update": update_kind(direct.locked, latest),
            "deprecated": ((meta.get("versions") or {}).get(direct.locked) or {}).get("deprecated"),
        }  # fmt: skip
        if direct.alias_of:
            entry["package"] = direct.alias_of
        if latest != newest and newest:  # npm's `latest` is not the dist-tag: say why
            entry["newest"] = newest
            entry["newest_skipped"] = _skipped(meta, newest, runs, before)
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


def _skipped(meta: Mapping[str, Any], version: str, runs: str | None, before: datetime | None) -> str:
    """Why npm's pick passed over the `latest` dist-tag's version, in words."""
    info = (meta.get("versions") or {}).get(version) or {}
    needs = (info.get("engines") or {}).get("node")
    if needs and runs and not semver.satisfies(runs, str(needs), include_prerelease=True):
        return f"needs Node.js {needs}, and the project runs {runs}"
    published = (meta.get("time") or {}).get(version)
    if before is not None and published and not pick(meta, version, before=before):
        return f"published {published[:10]}, after the release-age cutoff {before.date().isoformat()}"
    if info.get("deprecated"):
        return "deprecated"
    return "not in the registry's versions"


@dataclass
class _Target:
    project: str
    where: str
    located: Located
    order: int
    config: NpmConfig = field(default_factory=NpmConfig)


async def check_projects(options: DependenciesOptions, base: Path, cache: MutableMapping[str, Any], today: date,
                         token: str | None = None, *, recursive: bool = False, now: datetime | None = None,
                         environ: Mapping[str, str] | None = None) -> Checked:  # fmt: skip
    """Read every project, ask the registry, the advisory sources and Node.js's release data, and judge.

    Each source can fail on its own: the report still comes out, and the failure is a named gap.
    `cache` holds the registry's ETags and the last Node.js release data between runs. `token` ($NPM_TOKEN)
    goes to the job's registry only where no npm configuration keys credentials (`Registry`).
    `recursive` checks every importer of the lockfile found for each project (as `pnpm -r`). Each project's
    npm configuration (`.npmrc` beside its lockfile, the user's, `npm_config_*` in `environ`) picks its
    registries, credentials and release-age cutoff, as the project's own npm would.
    """
    when = now or datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="opskeeper-deps-") as scratch:
        return await _check(options, base, cache, today, token=token, scratch=Path(scratch), recursive=recursive,
                            now=when, environ=dict(os.environ if environ is None else environ))  # fmt: skip


def npm_config(options: DependenciesOptions, located: Located, environ: Mapping[str, str]) -> NpmConfig:
    """The npm configuration the project installs with; the job's own `registry`, when set, wins over `.npmrc`'s
    (as npm's command line does). Raises ValueError naming the file."""
    found = read_npm_config(located.lockfile.path.parent, environ)
    values = {k: v for k, v in found.values.items() if not (k == "registry" and "registry" in options.model_fields_set)}
    return NpmConfig(values, found.files, default_registry=options.registry)


async def _targets(
    options: DependenciesOptions,
    base: Path,
    *,
    scratch: Path,
    recursive: bool,
    lockfiles: Lockfiles,
    gaps: list[dict[str, str]],
    environ: Mapping[str, str],
) -> tuple[list[_Target], list[Report]]:
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
            config = npm_config(options, located, environ)
        except (LockfileError, ValueError) as exc:
            reports.append(Report(project.name, where, problems=[str(exc)], order=len(reports) + len(targets)))
            continue
        if recursive or project.recursive:
            root = located.lockfile.path.parent
            for importer in located.lockfile.importers:
                member = (root / importer).resolve()
                name = project.name if importer == "." else f"{project.name}/{importer}"
                targets.append(_Target(name, str(member), Located(member, located.lockfile, importer, located.root,
                                                                  why=located.why),
                                       len(reports) + len(targets), config))  # fmt: skip
        else:
            targets.append(_Target(project.name, where, located, len(reports) + len(targets), config))
    return targets, reports


async def _check(options: DependenciesOptions, base: Path, cache: MutableMapping[str, Any], today: date, *,
                 token: str | None, scratch: Path, recursive: bool, now: datetime,
                 environ: Mapping[str, str]) -> Checked:  # fmt: skip
    lockfiles = Lockfiles()
    gaps: list[dict[str, str]] = []
    targets, reports = await _targets(options, base, scratch=scratch, recursive=recursive, lockfiles=lockfiles,
                                      gaps=gaps, environ=environ)  # fmt: skip
    locks = {id(t.located.lockfile): t.located.lockfile for t in targets}
    installed: dict[str, set[str]] = {}
    for lock in locks.values():
        for name, version in lock.registry_packages:
            installed.setdefault(name, set()).add(version)
    # Projects configured alike (the usual case: one .npmrc, or none) share one client and one set of documents.
    groups: dict[tuple[tuple[str, str], ...], list[_Target]] = {}
    for target in targets:
        groups.setdefault(tuple(sorted(target.config.values.items())), []).append(target)
    shared = cache.setdefault("registry", {})
    registries = {key: Registry(options.registry, options.registry_token, shared, options.concurrency,
                                config=group[0].config, full=group[0].config.before(now) is not None,
                                fallback_token=token) for key, group in groups.items()}  # fmt: skip
    wanted = {key: {d.package[0] for t in group for d in t.located.lockfile.importers.get(t.located.importer, [])
                    if d.source == "registry" and d.name not in auto_peers(t.located)}
              for key, group in groups.items()}  # fmt: skip
    # The advisory endpoint is the default registry's, as npm audit asks it.
    first = next(iter(registries.values()), None) or Registry(options.registry, options.registry_token, shared,
                                                               options.concurrency, fallback_token=token)  # fmt: skip
    node_task = asyncio.create_task(release_data_for(options.node_index, options.node_schedule, cache, gaps, today))
    advisory_task = asyncio.create_task(advisory_answers(options, first, installed, gaps))
    try:
        # Every project's documents at once, over the clients' pools, while the advisories and Node.js answer.
        fetched = await asyncio.gather(*(registries[key].packages(names) for key, names in wanted.items()))
        metas: dict[Any, dict[str, Any]] = dict(zip(wanted, fetched, strict=True))
        answered = await advisory_task
        advisories = answered or {}
        affected = {name for name, advs in advisories.items()
                    if any(affects(a, v) for a in advs for v in installed.get(name, ()))}  # fmt: skip
        known = set().union(*(m.keys() for m in metas.values()))
        extra = await first.packages(affected - known)  # for `fixed_in`
        runtime = await node_task
    except BaseException:
        for task in (node_task, advisory_task):
            task.cancel()
        await asyncio.gather(node_task, advisory_task, return_exceptions=True)
        raise
    finally:
        for client in {id(r): r for r in (first, *registries.values())}.values():
            await client.close()
    failures = {n: e for r in (first, *registries.values()) for n, e in r.failures.items()}
    asked: set[str] = set().union(*wanted.values(), affected)
    if failures:
        gaps.append(_registry_gap(failures, len(asked)))
    picks = Picks()
    tracers: dict[int, Tracer] = {}
    for lock_id, lock in locks.items():
        vulnerable = {(n, v) for n, v in lock.registry_packages if n in affected
                      and any(affects(a, v) for a in advisories.get(n, []))}  # fmt: skip
        tracers[lock_id] = Tracer(lock, vulnerable)
    for key, group in groups.items():
        docs = {**extra, **metas[key]}
        for target in group:
            located = target.located
            report = build_report(target.project, target.where, located, metas=docs, advisories=advisories,
                                  tracer=tracers[id(located.lockfile)], node=node_finding(located, runtime),
                                  drift=_drift(located, lockfiles), picks=picks, config=target.config,
                                  now=now, runs=node_version(located, runtime),
                                  peers=auto_peers(located))  # fmt: skip
            report.order = target.order
            report.npm = npm_summary(target.config, now)
            report.advisories_checked = answered is not None or not installed
            reports.append(report)
    reports.sort(key=lambda r: r.order)  # as the projects are configured
    registry_answered = bool(asked) and len(failures) < len(asked)
    nothing = bool(targets) and not registry_answered and answered is None and runtime is None
    # The sources are asked concurrently: name their gaps in one fixed order, whichever failed first.
    order = ["github", "registry", "advisories (registry)", "advisories (osv)", "Node.js release data"]
    gaps.sort(key=lambda g: order.index(g["source"]) if g["source"] in order else len(order))
    return Checked(reports, gaps, nothing_checked=nothing or (not targets and bool(gaps)),
                   registry=Registry.total_answers((first, *registries.values())))  # fmt: skip


def _registry_gap(failures: Mapping[str, HttpError], asked: int) -> dict[str, str]:
    names = sorted(failures)
    return source_gap("registry", f"{len(names)} of {asked} package documents could not be fetched "
                      f"({', '.join(names[:5])}{', …' if len(names) > 5 else ''}): {failures[names[0]]}",
                      "no wanted/latest for those packages")  # fmt: skip


def npm_summary(config: NpmConfig, now: datetime) -> dict[str, Any]:
    """What of the npm configuration the report shows: files, registries and resolution rules; never a credential."""
    scopes = {k.split(":", 1)[0]: v for k, v in config.values.items() if k.startswith("@") and k.endswith(":registry")}
    cutoff = config.before(now)
    return {"files": list(config.files), "registry": config.registry, "scopes": scopes,
            "rules": [f for f in FLAGS if config.flag(f)],
            "before": cutoff.isoformat() if cutoff else None}  # fmt: skip


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
        token = implicit_token(self.options.registry, os.environ)
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

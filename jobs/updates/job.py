"""`dependency_updates`: the plan's monthly `pnpm update` for client and server, as a plan or a pull request.

`mode: dry_run` (the default) changes nothing anywhere: the plan is the run's details
(`details.projects[].updates[]` with `name`, `from`, `to`, `kind`). `mode: pull_request`
writes the changed lockfile to the branch `opskeeper/updates/<project>` (rebuilt on the base
each run) and opens one pull request per project, or refreshes the open one; when nothing
is left to update, the open one is closed with a comment. The base branch is never written.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from jobs.dependencies import semver
from jobs.dependencies.advisories import affects, leaves_gap
from jobs.dependencies.job import fetch_github
from jobs.dependencies.node import declared_runtime
from jobs.dependencies.npmrc import read_npm_config
from jobs.dependencies.options import Project
from jobs.dependencies.outdated import update_kind
from jobs.updates import security as patches
from jobs.updates.planner import MANAGERS, PlanError, ProjectPlan, manager_of, plan
from worker.http import HttpError
from worker.job import JobContext, JobOptions, Notice, Outcome, Status
from worker.vendors.github import GitHub
from worker.vendors.npm import NPM_REGISTRY, Registry


class DependencyUpdatesOptions(JobOptions):
    """Which projects to update, how far, and what to do with the result."""

    projects: tuple[Project, ...]
    mode: Literal["dry_run", "pull_request"] = "dry_run"
    update: Literal["in_range", "minor", "patch"] = "in_range"
    """in_range: what `pnpm update` does without `--latest`. minor and patch hold back any direct dependency
    whose in-range update is a bigger step (its others still move)."""
    ignore: tuple[str, ...] = ()
    group: Literal["project", "all"] = "project"
    """project: one pull request per project (branch opskeeper/updates/<project>). all: one pull request for
    every project (branch opskeeper/updates/all); they must then live in one repository and branch."""
    registry: str = NPM_REGISTRY
    pass_env: tuple[str, ...] = ()
    """Variables of the worker's environment the package manager also gets (a proxy URL with a password,
    which is otherwise never passed on; an npm_config_* setting)."""
    security: Literal["immediate", "off"] = "immediate"
    """Open a dedicated pull request (or plan, in a dry run) for each advisory an in-range update fixes."""
    advisories: tuple[Literal["registry", "osv"], ...] = ("registry",)
    osv_url: str | None = None
    after: tuple[str, ...] = ()
    """Dependencies jobs whose turn to FAIL (an advisory found) runs this job at once, off its schedule."""

    def follows(self) -> frozenset[str]:
        return frozenset(self.after)

    def missing(self) -> list[str]:
        """A local project's own manager (from its lockfile) not on PATH names that project; a GitHub project's
        lockfile is known only at run time, so then any manager at all is asked for."""
        hint = "(in the Docker image: build it with OPSKEEPER_WITH_NODE=true)"
        found = []
        for project in self.projects:
            manager = manager_of(Path.cwd() / project.path) if project.path is not None else None
            if manager is not None and shutil.which(manager) is None:
                found.append(f"project {project.name} installs with {manager} (its lockfile), and {manager} is not "
                             f"on PATH: this job cannot run on this machine {hint}")  # fmt: skip
        if not found and not any(shutil.which(tool) for tool in MANAGERS):
            found.append(f"none of {', '.join(MANAGERS)} is on PATH, and this kind runs the project's own package "
                         f"manager: this job cannot run on this machine {hint}")  # fmt: skip
        return found

    @model_validator(mode="after")
    def _from_github(self) -> DependencyUpdatesOptions:
        if self.mode == "pull_request":
            local = [p.name for p in self.projects if p.github is None]
            if local:
                raise ValueError(f"mode pull_request opens pull requests on GitHub: project(s) {', '.join(local)} "
                                 "need github: {repo, ref, path} instead of path")  # fmt: skip
        bases = sorted({f"{p.github.repo}@{p.github.ref}" for p in self.projects if p.github is not None})
        if self.mode == "pull_request" and self.group == "all" and len(bases) > 1:
            raise ValueError(f"group: all makes one pull request, so every project must be on one repository and "
                             f"branch; these are on {', '.join(bases)} (use group: project)")  # fmt: skip
        return self


def branch_of(project: str) -> str:
    """The one branch opskeeper writes for a project's updates (`all` for the grouped pull request)."""
    return f"opskeeper/updates/{project}"


GROUPED = "all"


def in_repo(folder: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """The plan's files by their paths in the repository (the project's folder in front)."""
    return {"/".join(p for p in (folder.strip("/"), name) if p): data for name, data in files.items()}


def _label(update: dict[str, Any]) -> str:
    """A package as the table names it: with the workspace member it is in, when not the root."""
    return f"{update['name']} ({update['importer']})" if "importer" in update else str(update["name"])


def term_mark(ctx: JobContext) -> str:
    """A hidden line naming the run and the lease's term that wrote a pull request (none from run-now): a body
    written by a deposed leader can be told from its successor's."""
    if ctx.token is None:
        return ""
    return f"\n\n<!-- opskeeper: run {ctx.run_id} by {ctx.instance}, lease token {ctx.token} -->\n"


def pull_body(plan: ProjectPlan, context: dict[str, Any] | None = None) -> str:
    """The pull request's text: the updates, the advisories they fix, the majors held back, engines to mind."""
    context = context or {}
    rows = "\n".join(f"| {_label(u)} | {u['from']} | {u['to']} | {u['kind']} | {u['group']} |" for u in plan.updates)
    out = [f"In-range updates computed by `{plan.manager} update` in lockfile-only mode (scripts off), as the "
           "plan's monthly update does by hand.", "", "| package | from | to | kind | group |",
           "|---|---|---|---|---|", rows]  # fmt: skip
    if context.get("fixes"):
        out += ["", "### Advisories this fixes", "", "| advisory | severity | package |", "|---|---|---|"]
        out += [f"| [{a['title']}]({a['url']}) | {a['severity']} | {a['package']}@{a['version']} |"
                for a in context["fixes"]]  # fmt: skip
    if context.get("held_back"):
        out += ["", "### Majors held back (outside the ranges)", "", "| package | locked | latest |", "|---|---|---|"]
        out += [f"| {h['name']} | {h['locked']} | {h['latest']} |" for h in context["held_back"]]
    if context.get("engines"):
        out += ["", f"### Needs a newer Node.js than the app runs ({context.get('runtime')})", ""]
        out += [f"- {e['name']} {e['to']} needs Node.js `{e['node']}`" for e in context["engines"]]
    out += ["", f"Only `{plan.lockfile}` changes. opskeeper refreshes this pull request on its next run and closes it "
            "when nothing is left to update."]  # fmt: skip
    return "\n".join(out)


def context_of(found: ProjectPlan, folder: Path, findings: list[patches.Finding],
               latest: dict[str, str | None]) -> dict[str, Any]:  # fmt: skip
    """What the pull request says besides the updates. Pure: the advisories and latest versions are passed in."""
    after = found.after
    fixes = [{"id": f.key, "title": f.advisory.get("title"), "url": f.advisory.get("url"),
              "severity": f.advisory.get("severity"), "package": f.package, "version": f.version}
             for f in findings if after is not None and not any(
                 n == f.package and affects(f.advisory, v) for n, v in after.registry_packages)]  # fmt: skip
    locked = {d.name: d.locked for d in (after.directs() if after else []) if d.source == "registry"}
    held = [{"name": n, "locked": v, "latest": latest[n]} for n, v in sorted(locked.items())
            if latest.get(n) and update_kind(v, latest[n]) == "major"]  # fmt: skip
    declared = declared_runtime(folder)
    runtime = None if declared is None else (".".join(map(str, declared.exact)) if declared.exact
                                             else f"{declared.line}.9999.0")  # fmt: skip
    engines = []
    if runtime is not None and after is not None:
        for u in found.updates:
            node = after.engines.get((u["name"], u["to"]))
            if node and semver.valid_range(node) and not semver.satisfies(runtime, node):
                engines.append({"name": u["name"], "to": u["to"], "node": node})
    return {"fixes": fixes, "held_back": held, "engines": engines,
            "runtime": declared and f"{declared.spec} ({declared.source})"}  # fmt: skip


def _summary(plans: list[ProjectPlan], problems: list[str]) -> str:
    parts = []
    for p in plans:
        moves = ", ".join(f"{u['name']} {u['from']} → {u['to']}" for u in p.updates[:5])
        more = f" and {len(p.updates) - 5} more" if len(p.updates) > 5 else ""
        parts.append(f"{p.name}: {len(p.updates)} update(s)" + (f" ({moves}{more})" if moves else ""))
    return " | ".join(parts + problems)


class DependencyUpdatesJob:
    """Plan each project's in-range updates with its own package manager."""

    def __init__(self, options: DependencyUpdatesOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        plans: list[ProjectPlan] = []
        problems: list[str] = []
        unchecked: list[str] = []
        security: dict[str, list[dict[str, Any]]] = {}
        contexts: dict[str, dict[str, Any]] = {}
        proposals: list[tuple[Project, ProjectPlan, dict[str, Any]]] = []
        with tempfile.TemporaryDirectory(prefix="opskeeper-updates-src-") as scratch:
            for project in self.options.projects:
                try:
                    if project.github is not None:
                        folder = fetch_github(project.github, Path(scratch) / project.name)
                    else:
                        folder = Path.cwd() / str(project.path)
                    found = self._plan(project.name, folder)
                except (PlanError, HttpError) as exc:
                    problems.append(str(exc))
                    continue
                plans.append(found)
                ctx.log("updates.planned", project=project.name, manager=found.manager, updates=len(found.updates))
                advisories, gaps = patches.findings(found.before, self.options.registry, self.options.advisories,
                                                    self.options.osv_url) if found.before else ([], [])  # fmt: skip
                # A source that did not answer is a gap (WARN, named), not a fault in the project (FAIL).
                unchecked += [f"{project.name}: advisories not checked: {g['source']}: {g['error']}" for g in gaps
                              if leaves_gap(g)]  # fmt: skip
                context = context_of(found, folder, advisories, self._latest(found))
                contexts[project.name] = context
                if self.options.mode == "pull_request" and project.github is not None:
                    proposals.append((project, found, context))
                    if self.options.group == "project":
                        self._proposal(ctx, branch_of(project.name), proposals[-1:], problems)
                if self.options.security == "immediate":
                    security[project.name] = self._security(ctx, project, folder, advisories, problems)
        if self.options.mode == "pull_request" and self.options.group == "all":
            planned = {p.name for p, _, _ in proposals}
            missing = [p.name for p in self.options.projects if p.name not in planned]
            if missing:  # refreshing without them would drop their updates from the open pull request
                problems.append(f"the grouped pull request is left as it was: {', '.join(missing)} could not be "
                                "planned")  # fmt: skip
            else:
                self._proposal(ctx, branch_of(GROUPED), proposals, problems)
        projects = [{**p.public(), "security": security.get(p.name, []), **contexts.get(p.name, {})} for p in plans]
        details = {"mode": self.options.mode, "projects": projects, "problems": problems, "not_checked": unchecked}
        pending = [s for items in security.values() for s in items]
        status = (Status.FAIL if problems else
                  Status.WARN if any(p.updates for p in plans) or pending or unchecked else Status.OK)  # fmt: skip
        notes = [f"{s['package']}@{s['version']} {s['id']}: {s['reason']}" for s in pending if s.get("reason")]
        return Outcome(status, _summary(plans, problems + unchecked + notes), details)

    def _plan(self, name: str, folder: Path) -> ProjectPlan:
        """The in-range plan, narrowed to `update`'s step: too-big steps are held back and the rest re-planned."""
        too_big = {"in_range": (), "minor": ("major",), "patch": ("major", "minor")}[self.options.update]
        ignore = list(self.options.ignore)
        registry = self._registry(folder)
        found = plan(name, folder, registry, ignore=ignore, pass_env=self.options.pass_env)
        held = [u for u in found.updates if u["kind"] in too_big]
        while held:  # a re-plan moves fewer packages, so this ends
            ignore += [u["name"] for u in held]
            found = plan(name, folder, registry, ignore=ignore, pass_env=self.options.pass_env)
            found.held = [*found.held, *held]
            held = [u for u in found.updates if u["kind"] in too_big]
        return found

    def _registry(self, folder: Path) -> str:
        """The job's `registry` when set, else the one the project's npm configuration names (else npm's)."""
        if "registry" in self.options.model_fields_set:
            return self.options.registry
        try:
            return read_npm_config(folder).registry
        except ValueError as exc:
            raise PlanError(str(exc)) from None

    def _latest(self, found: ProjectPlan) -> dict[str, str | None]:
        """The registry's `latest` of each direct dependency (for the majors held back); empty if it cannot say."""
        names = {d.package[0]: d.name for d in (found.after.directs() if found.after else [])
                 if d.source == "registry"}  # fmt: skip

        async def ask() -> dict[str, Any]:
            client = Registry(self.options.registry, None, {}, 8)
            try:
                return await client.packages(names)
            finally:
                await client.close()

        docs = asyncio.run(ask())
        return {names[real]: ((doc or {}).get("dist-tags") or {}).get("latest") for real, doc in docs.items()}

    def _proposal(self, ctx: JobContext, branch: str, items: list[tuple[Project, ProjectPlan, dict[str, Any]]],
                  problems: list[str]) -> None:  # fmt: skip
        names = ", ".join(p.name for p, _, _ in items)
        try:
            self._propose(ctx, branch, items)
        except (HttpError, ValueError) as exc:
            problems.append(f"{names}: pull request: {exc}")

    def _propose(self, ctx: JobContext, branch: str, items: list[tuple[Project, ProjectPlan, dict[str, Any]]]) -> None:
        """Open or refresh the pull request of `branch` with these projects' updates, or close it when none is left."""
        source = items[0][0].github
        if source is None:  # the options' validator requires github in this mode
            return
        names = ", ".join(p.name for p, _, _ in items)
        count = sum(len(found.updates) for _, found, _ in items)
        key = names if len(items) == 1 else GROUPED
        with GitHub(source.repo, api_url=source.api_url, deadline=ctx.deadline) as github:
            if not count:
                open_pull = github.open_pull(branch)
                if open_pull is not None:
                    ctx.fence()  # a deposed leader's late run must not close what the new one keeps
                    github.close_pull(int(open_pull["number"]), "Nothing is left to update: opskeeper closed this.")
                    number = open_pull["number"]
                    ctx.record("pull_request", Status.OK, f"{names}: closed #{number}",
                               {"project": key, "projects": [p.name for p, _, _ in items], "number": number,
                                "action": "closed"})  # fmt: skip
                return
            files: dict[str, bytes] = {}
            for project, found, _ in items:
                if found.updates and project.github is not None:
                    files |= in_repo(project.github.path, found.files)
            if len(items) == 1:
                title = f"Update {names} dependencies ({count} in range)"
                body = pull_body(items[0][1], items[0][2])
            else:
                title = f"Update dependencies of {names} ({count} in range)"
                body = "\n\n".join(f"## {project.name}\n\n" + (pull_body(found, context) if found.updates
                                    else "Nothing to update.") for project, found, context in items)  # fmt: skip
            body += term_mark(ctx)
            ctx.fence()  # the branch and pull request are shared: only the lease's holder writes them
            sha = github.commit_files(branch, source.ref, files, title)
            pull, new = github.propose(branch, source.ref, title, body)
        action = "opened" if new else "refreshed"
        ctx.record("pull_request", Status.OK, f"{names}: {action} #{pull['number']}",
                   {"project": key, "projects": [p.name for p, _, _ in items], "number": pull["number"],
                    "url": pull.get("html_url"), "action": action, "commit": sha, "updates": count})  # fmt: skip
        ctx.notify(Notice("info", f"{names}: {action} pull request #{pull['number']} with "
                                  f"{count} update(s): {pull.get('html_url', '')}",
                          ("dependency_updates", key, action)))  # fmt: skip

    def _security(self, ctx: JobContext, project: Project, folder: Path, found: list[patches.Finding],
                  problems: list[str]) -> list[dict[str, Any]]:  # fmt: skip
        """Each advisory on the project: its in-range fix (a dedicated pull request in that mode) or why none."""
        out: list[dict[str, Any]] = []
        attempts: patches.Attempts = {}
        for finding in found:
            advisory = finding.advisory
            entry: dict[str, Any] = {"id": finding.key, "severity": advisory.get("severity"), "title": advisory.get(
                "title"), "url": advisory.get("url"), "package": finding.package, "version": finding.version,
                "via": finding.via[:3]}  # fmt: skip
            fixed, reason = patches.fix(project.name, folder, self._registry(folder), finding,
                                        pass_env=self.options.pass_env, attempts=attempts)  # fmt: skip
            if fixed is None:
                entry["reason"] = reason
                ctx.log("updates.no_fix", project=project.name, advisory=finding.key, reason=reason)
            else:
                entry["fix"] = fixed.updates
                entry["files"] = sorted(fixed.files)  # the lockfile, and the manifest an override goes in
                if self.options.mode == "pull_request" and project.github is not None:
                    try:
                        entry["pull_request"] = self._security_pull(ctx, project, fixed, finding)
                    except (HttpError, ValueError) as exc:
                        problems.append(f"{project.name}: security pull request for {finding.key}: {exc}")
            out.append(entry)
        return out

    def _security_pull(self, ctx: JobContext, project: Project, fixed: ProjectPlan, finding: patches.Finding) -> int:
        """One pull request per advisory, on its own branch, titled with the advisory."""
        source = project.github
        if source is None:
            return 0
        advisory = finding.advisory
        slug = re.sub(r"[^A-Za-z0-9._-]", "-", finding.key)
        branch = f"opskeeper/security/{project.name}/{slug}"
        title = (f"Fix {advisory.get('url', '').rsplit('/', 1)[-1] or finding.key} ({advisory.get('severity')}) in "
                 f"{finding.package}@{finding.version}")  # fmt: skip
        rows = "\n".join(f"| {u['name']} | {u['from']} | {u['to']} | {u['kind']} |" for u in fixed.updates)
        body = (f"**{advisory.get('severity')}**: [{advisory.get('title')}]({advisory.get('url')}), on "
                f"{finding.package}@{finding.version} (vulnerable: `{advisory.get('vulnerable_versions')}`), through "
                f"{', '.join(' > '.join(c) for c in finding.via[:3]) or finding.package}.\n\nThe smallest in-range "
                f"update that removes it, computed by `{fixed.manager} update` (lockfile-only, scripts off):\n\n"
                f"| package | from | to | kind |\n|---|---|---|---|\n{rows}\n")  # fmt: skip
        if fixed.edited:
            # The override path: say why a manifest changes, and when the override can go.
            body += (f"\nNo in-range release of what pulls {finding.package} in takes the fix yet, so this adds an "
                     f"override for the vulnerable version in `{'`, `'.join(sorted(fixed.edited))}`. Remove it once "
                     f"{', '.join(sorted({c[0] for c in finding.via if c})) or 'its parent'} releases a version that "
                     "takes the fix.\n")  # fmt: skip
        with GitHub(source.repo, api_url=source.api_url, deadline=ctx.deadline) as github:
            ctx.fence()
            body += term_mark(ctx)
            sha = github.commit_files(branch, source.ref, in_repo(source.path, fixed.files), title)
            pull, new = github.propose(branch, source.ref, title, body)
        action = "opened" if new else "refreshed"
        ctx.record("pull_request", Status.OK, f"{project.name}: {action} #{pull['number']} for {finding.key}",
                   {"project": project.name, "number": pull["number"], "advisory": finding.key, "action": action,
                    "commit": sha, "url": pull.get("html_url")})  # fmt: skip
        if new:
            ctx.notify(Notice("warning", f"{project.name}: {title}: pull request #{pull['number']} "
                                         f"{pull.get('html_url', '')}",
                              ("dependency_updates", project.name, finding.key)))  # fmt: skip
        return int(pull["number"])

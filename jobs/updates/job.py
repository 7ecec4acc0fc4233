"""`dependency_updates`: the plan's monthly `pnpm update` for client and server, as a plan or a pull request.

`mode: dry_run` (the default) changes nothing anywhere: the plan is the run's details
(`details.projects[].updates[]` with `name`, `from`, `to`, `kind`). `mode: pull_request`
writes the changed lockfile to the branch `opskeeper/updates/<project>` (rebuilt on the base
each run) and opens one pull request per project, or refreshes the open one; when nothing
is left to update, the open one is closed with a comment. The base branch is never written.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from jobs.dependencies.job import Project, fetch_github
from jobs.dependencies.lockfiles import Lockfile
from jobs.updates import security as patches
from jobs.updates.planner import PlanError, ProjectPlan, plan
from worker.http import HttpError
from worker.job import JobContext, JobOptions, Notice, Outcome, Status
from worker.vendors.github import GitHub
from worker.vendors.npm import NPM_REGISTRY


class DependencyUpdatesOptions(JobOptions):
    """Which projects to update, how far, and what to do with the result."""

    projects: tuple[Project, ...]
    mode: Literal["dry_run", "pull_request"] = "dry_run"
    update: Literal["in_range"] = "in_range"
    """What `pnpm update` does without `--latest`: the newest versions the ranges allow."""
    ignore: tuple[str, ...] = ()
    registry: str = NPM_REGISTRY
    security: Literal["immediate", "off"] = "immediate"
    """Open a dedicated pull request (or plan, in a dry run) for each advisory an in-range update fixes."""
    advisories: tuple[Literal["registry", "osv"], ...] = ("registry",)
    osv_url: str | None = None
    after: tuple[str, ...] = ()
    """Dependencies jobs whose turn to FAIL (an advisory found) runs this job at once, off its schedule."""

    def follows(self) -> frozenset[str]:
        return frozenset(self.after)

    @model_validator(mode="after")
    def _from_github(self) -> DependencyUpdatesOptions:
        if self.mode == "pull_request":
            local = [p.name for p in self.projects if p.github is None]
            if local:
                raise ValueError(f"mode pull_request opens pull requests on GitHub: project(s) {', '.join(local)} "
                                 "need github: {repo, ref, path} instead of path")  # fmt: skip
        return self


def branch_of(project: str) -> str:
    """The one branch opskeeper writes for a project's updates."""
    return f"opskeeper/updates/{project}"


def pull_body(plan: ProjectPlan) -> str:
    """The pull request's text: a table of the updates and how they were computed."""
    rows = "\n".join(f"| {u['name']} | {u['from']} | {u['to']} | {u['kind']} | {u['group']} |" for u in plan.updates)
    return (f"In-range updates computed by `{plan.manager} update` in lockfile-only mode (scripts off), as the "
            f"plan's monthly update does by hand.\n\n| package | from | to | kind | group |\n|---|---|---|---|---|\n"
            f"{rows}\n\nOnly `{plan.lockfile}` changes. opskeeper refreshes this pull request on its next run and "
            "closes it when nothing is left to update.")  # fmt: skip


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
        security: dict[str, list[dict[str, Any]]] = {}
        with tempfile.TemporaryDirectory(prefix="opskeeper-updates-src-") as scratch:
            for project in self.options.projects:
                try:
                    if project.github is not None:
                        folder = fetch_github(project.github, Path(scratch) / project.name)
                    else:
                        folder = Path.cwd() / str(project.path)
                    found = plan(project.name, folder, self.options.registry, ignore=self.options.ignore)
                except (PlanError, HttpError) as exc:
                    problems.append(str(exc))
                    continue
                plans.append(found)
                ctx.log("updates.planned", project=project.name, manager=found.manager, updates=len(found.updates))
                if self.options.mode == "pull_request" and project.github is not None:
                    try:
                        self._propose(ctx, project, found)
                    except (HttpError, ValueError) as exc:
                        problems.append(f"{project.name}: pull request: {exc}")
                if self.options.security == "immediate" and found.before is not None:
                    security[project.name] = self._security(ctx, project, folder, found.before, problems)
        projects = [{**p.public(), "security": security.get(p.name, [])} for p in plans]
        details = {"mode": self.options.mode, "projects": projects, "problems": problems}
        pending = [s for items in security.values() for s in items]
        status = Status.FAIL if problems else Status.WARN if any(p.updates for p in plans) or pending else Status.OK
        notes = [f"{s['package']}@{s['version']} {s['id']}: {s['reason']}" for s in pending if s.get("reason")]
        return Outcome(status, _summary(plans, problems + notes)[:500], details)

    def _propose(self, ctx: JobContext, project: Project, found: ProjectPlan) -> None:
        """Open or refresh the project's pull request, or close it when nothing is left to update."""
        source = project.github
        if source is None:  # the options' validator requires github in this mode
            return
        branch = branch_of(project.name)
        with GitHub(source.repo, api_url=source.api_url) as github:
            if not found.updates:
                open_pull = github.open_pull(branch)
                if open_pull is not None:
                    github.close_pull(int(open_pull["number"]), "Nothing is left to update: opskeeper closed this.")
                    number = open_pull["number"]
                    ctx.record("pull_request", Status.OK, f"{project.name}: closed #{number}",
                               {"project": project.name, "number": number, "action": "closed"})  # fmt: skip
                return
            path = "/".join(p for p in (source.path.strip("/"), found.lockfile) if p)
            title = f"Update {project.name} dependencies ({len(found.updates)} in range)"
            sha = github.commit_files(branch, source.ref, {path: found.new_lockfile}, title)
            pull, new = github.propose(branch, source.ref, title, pull_body(found))
        action = "opened" if new else "refreshed"
        ctx.record("pull_request", Status.OK, f"{project.name}: {action} #{pull['number']}",
                   {"project": project.name, "number": pull["number"], "url": pull.get("html_url"), "action": action,
                    "commit": sha, "updates": len(found.updates)})  # fmt: skip
        ctx.notify(Notice("info", f"{project.name}: {action} pull request #{pull['number']} with "
                                  f"{len(found.updates)} update(s): {pull.get('html_url', '')}",
                          ("dependency_updates", project.name, action)))  # fmt: skip

    def _security(self, ctx: JobContext, project: Project, folder: Path, lock: Lockfile,
                  problems: list[str]) -> list[dict[str, Any]]:  # fmt: skip
        """Each advisory on the project: its in-range fix (a dedicated pull request in that mode) or why none."""
        found, gaps = patches.findings(lock, self.options.registry, self.options.advisories, self.options.osv_url)
        problems += [f"{project.name}: advisories not checked: {g['source']}: {g['error']}" for g in gaps
                     if g["effect"] != "advisories were checked with OSV instead"]  # fmt: skip
        out: list[dict[str, Any]] = []
        for finding in found:
            advisory = finding.advisory
            entry: dict[str, Any] = {"id": finding.key, "severity": advisory.get("severity"), "title": advisory.get(
                "title"), "url": advisory.get("url"), "package": finding.package, "version": finding.version,
                "via": finding.via[:3]}  # fmt: skip
            fixed, reason = patches.fix(project.name, folder, self.options.registry, finding)
            if fixed is None:
                entry["reason"] = reason
                ctx.log("updates.no_fix", project=project.name, advisory=finding.key, reason=reason)
            else:
                entry["fix"] = fixed.updates
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
        path = "/".join(p for p in (source.path.strip("/"), fixed.lockfile) if p)
        with GitHub(source.repo, api_url=source.api_url) as github:
            sha = github.commit_files(branch, source.ref, {path: fixed.new_lockfile}, title)
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

"""`dependency_updates`: the plan's monthly `pnpm update` for client and server, as a plan or a pull request.

`mode: dry_run` (the default) changes nothing anywhere: the plan is the run's details
(`details.projects[].updates[]` with `name`, `from`, `to`, `kind`). `mode: pull_request`
writes the changed lockfile to the branch `opskeeper/updates/<project>` (rebuilt on the base
each run) and opens one pull request per project, or refreshes the open one; when nothing
is left to update, the open one is closed with a comment. The base branch is never written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import model_validator

from jobs.dependencies.job import Project, fetch_github
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
        details = {"mode": self.options.mode, "projects": [p.public() for p in plans], "problems": problems}
        status = Status.FAIL if problems else Status.WARN if any(p.updates for p in plans) else Status.OK
        return Outcome(status, _summary(plans, problems)[:500], details)

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

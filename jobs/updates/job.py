"""`dependency_updates`: the plan's monthly `pnpm update` for client and server, as a plan or a pull request.

`mode: dry_run` (the default) changes nothing anywhere: the plan is the run's details
(`details.projects[].updates[]` with `name`, `from`, `to`, `kind`). `mode: pull_request` is
not built yet (issue 19): the option is refused with that reason, so no schedule believes
it opens pull requests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from jobs.dependencies.job import Project, fetch_github
from jobs.updates.planner import PlanError, ProjectPlan, plan
from worker.http import HttpError
from worker.job import JobContext, JobOptions, Outcome, Status
from worker.vendors.npm import NPM_REGISTRY


class DependencyUpdatesOptions(JobOptions):
    """Which projects to update, how far, and what to do with the result."""

    projects: tuple[Project, ...]
    mode: Literal["dry_run", "pull_request"] = "dry_run"
    update: Literal["in_range"] = "in_range"
    """What `pnpm update` does without `--latest`: the newest versions the ranges allow."""
    ignore: tuple[str, ...] = ()
    registry: str = NPM_REGISTRY

    @field_validator("mode")
    @classmethod
    def _built(cls, value: str) -> str:
        if value == "pull_request":
            raise ValueError("mode pull_request is not available yet: use dry_run (the plan is the run's details)")
        return value


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
        details = {"mode": self.options.mode, "projects": [p.public() for p in plans], "problems": problems}
        status = Status.FAIL if problems else Status.WARN if any(p.updates for p in plans) else Status.OK
        return Outcome(status, _summary(plans, problems)[:500], details)

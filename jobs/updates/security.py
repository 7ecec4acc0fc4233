"""Security patches the day they appear: for each advisory on a project's lockfile, the smallest update
within the project's ranges that leaves no vulnerable version, or the reason there is none.

The advisories come from the dependencies check's sources (the registry's bulk endpoint, OSV
when it fails). A fix updates the vulnerable package and the direct dependencies that pull
it in: a transitive package is often pinned by its parent (morgan 1.10.0 pins on-headers
~1.0.2, and only morgan 1.10.1 takes 1.1.0), so updating it alone would change nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.dependencies import semver
from jobs.dependencies.job import DependenciesOptions, advisory_answers
from jobs.dependencies.lockfiles import Tracer
from jobs.dependencies.lockfiles import Lockfile
from jobs.updates.planner import PlanError, ProjectPlan, plan
from worker.vendors.npm import Registry


@dataclass
class Finding:
    """One advisory on one installed version, and the direct dependencies it comes through."""

    package: str
    version: str
    advisory: dict[str, Any]
    via: list[list[str]]

    @property
    def key(self) -> str:
        return str(self.advisory.get("id"))


def affects(advisory: dict[str, Any], version: str) -> bool:
    return semver.satisfies(version, str(advisory.get("vulnerable_versions", "*")), include_prerelease=True)


def findings(lock: Lockfile, registry: str, sources: tuple[str, ...] = ("registry",),
             osv_url: str | None = None) -> tuple[list[Finding], list[dict[str, str]]]:  # fmt: skip
    """The advisories on the lockfile's registry packages, each with its chains; and the sources' gaps."""
    installed: dict[str, set[str]] = {}
    for name, version in lock.registry_packages:
        installed.setdefault(name, set()).add(version)
    options = DependenciesOptions(projects=(), registry=registry, advisories=sources,
                                  **({"osv_url": osv_url} if osv_url else {}))  # fmt: skip
    gaps: list[dict[str, str]] = []

    async def ask() -> dict[str, list[dict[str, Any]]] | None:
        client = Registry(registry, None, {}, 8)
        try:
            return await advisory_answers(options, client, installed, gaps)
        finally:
            await client.close()

    answers = asyncio.run(ask()) or {}
    targets = {(n, v) for n, v in lock.registry_packages if any(affects(a, v) for a in answers.get(n, []))}
    tracer = Tracer(lock, targets)
    found = []
    for name, version in sorted(targets):
        via = [[d.name, *chain[1:]] for d in lock.importers.get(".", []) if d.source == "registry"
               for target, chain in tracer.reached(d.package).items() if target == (name, version)]  # fmt: skip
        found += [Finding(name, version, a, via) for a in answers.get(name, []) if affects(a, version)]
    return found, gaps


def fix(name: str, folder: Path, registry: str, finding: Finding) -> tuple[ProjectPlan | None, str]:
    """The in-range update that removes every vulnerable version of the package, or None and why not."""
    parents = sorted({chain[0] for chain in finding.via if chain})
    try:
        attempt = plan(name, folder, registry, only=[finding.package, *parents])
    except PlanError as exc:
        return None, str(exc)
    assert attempt.after is not None  # noqa: S101 - plan() always reads the new lockfile
    left = sorted(v for n, v in attempt.after.registry_packages
                  if n == finding.package and affects(finding.advisory, v))  # fmt: skip
    if left:
        through = f" through {', '.join(parents)}" if parents else ""
        return None, (f"no update within the ranges removes {finding.package}@{', '.join(left)} "
                      f"({finding.advisory.get('vulnerable_versions')}){through}")  # fmt: skip
    return attempt, ""

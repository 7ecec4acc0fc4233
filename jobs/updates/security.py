"""Security patches the day they appear: for each advisory on a project's lockfile, the smallest update
within the project's ranges that leaves no vulnerable version, or the reason there is none.

The advisories come from the dependencies check's sources (the registry's bulk endpoint, OSV
when it fails). A fix updates the vulnerable package and the direct dependencies that pull
it in: a transitive package is often pinned by its parent (morgan 1.10.0 pins on-headers
~1.0.2, and only morgan 1.10.1 takes 1.1.0), so updating it alone would change nothing.

When no parent's in-range release takes the fix yet (the hours or weeks between the fixed
package and its parents' releases), a transitive package gets an override instead: npm's
`overrides` in package.json, Yarn's `resolutions` there, pnpm's `overrides` in
pnpm-workspace.yaml (where pnpm 10 and later read it; package.json's `pnpm.overrides` when the
project already keeps them there). The key names the vulnerable installed version exactly
(`on-headers@1.0.2`; for Yarn, the path it is reached by), so nothing else moves; the value
is a caret on the first release outside the advisory's range, in the same major where there
is one. The package manager then installs (lockfile-only where it can), and the fix counts
only if no vulnerable version is left.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from jobs.dependencies import semver
from jobs.dependencies.advisories import advisory_answers, affects, fixed_in
from jobs.dependencies.job import chains_to
from jobs.dependencies.lockfiles import Lockfile, Tracer
from jobs.dependencies.options import DependenciesOptions
from jobs.dependencies.outdated import update_kind
from jobs.updates.planner import Edit, PlanError, ProjectPlan, plan
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
    chains = chains_to(lock.directs(), Tracer(lock, targets))
    found = []
    for name, version in sorted(targets):
        via = chains.get((name, version), [])
        found += [Finding(name, version, a, via) for a in answers.get(name, []) if affects(a, version)]
    return found, gaps


def vulnerable_left(attempt: ProjectPlan, finding: Finding) -> list[str]:
    assert attempt.after is not None  # noqa: S101 - plan() always reads the new lockfile
    return sorted(v for n, v in attempt.after.registry_packages
                  if n == finding.package and affects(finding.advisory, v))  # fmt: skip


Attempts = dict[tuple[Any, ...], "ProjectPlan | PlanError"]
"""The package manager's runs of one project's fixes, by what they asked: advisories on one version (multer's
two) need the same run, which is made once."""


def _attempt(attempts: Attempts, key: tuple[Any, ...], run: Callable[[], ProjectPlan]) -> ProjectPlan:
    if key not in attempts:
        try:
            attempts[key] = run()
        except PlanError as exc:
            attempts[key] = exc
    found = attempts[key]
    if isinstance(found, PlanError):
        raise found
    return found


def fix(name: str, folder: Path, registry: str, finding: Finding, *, overrides: bool = True,
        pass_env: Sequence[str] = (), attempts: Attempts | None = None) -> tuple[ProjectPlan | None, str]:  # fmt: skip
    """The in-range update that removes every vulnerable version of the package (else, for a transitive
    package, an override that does), or None and why not. `attempts` shares the runs between a project's fixes."""
    attempts = {} if attempts is None else attempts
    parents = sorted({chain[0] for chain in finding.via if chain})
    only = (finding.package, *parents)
    try:
        attempt = _attempt(attempts, ("update", only),
                           lambda: plan(name, folder, registry, only=only, pass_env=pass_env))  # fmt: skip
    except PlanError as exc:
        return None, str(exc)
    left = vulnerable_left(attempt, finding)
    if not left:
        return attempt, ""
    through = f" through {', '.join(parents)}" if parents else ""
    reason = (f"no update within the ranges removes {finding.package}@{', '.join(left)} "
              f"({finding.advisory.get('vulnerable_versions')}){through}")  # fmt: skip
    direct = attempt.before is not None and any(
        d.name == finding.package for d in attempt.before.directs())  # fmt: skip
    if direct or not overrides:
        return None, reason + ("; it is a direct dependency, so its range in package.json must change" if direct
                               else "")  # fmt: skip
    target = asyncio.run(_first_fixed(registry, finding, left))
    if target is None:
        return None, f"{reason}, and no release of {finding.package} is outside the advisory's range"
    value = f"^{target}"
    edit = add_overrides(finding.package, left, finding.via, value)
    try:
        overridden = _attempt(attempts, ("override", finding.package, tuple(left), value),
                              lambda: plan(name, folder, registry, edit=edit, pass_env=pass_env))  # fmt: skip
    except PlanError as exc:
        return None, f"{reason}; an override to {value} failed: {exc}"
    still = vulnerable_left(overridden, finding)
    if still:
        return None, f"{reason}; an override to {value} still leaves {finding.package}@{', '.join(still)}"
    assert overridden.after is not None  # noqa: S101 - plan() always reads the new lockfile
    moved = sorted({v for n, v in overridden.after.registry_packages if n == finding.package} - set(left))
    # The transitive move itself, which a direct-dependency diff does not show (a copy: the run is shared).
    return replace(overridden, updates=[*overridden.updates, *(
        {"name": finding.package, "from": old, "to": moved[0], "kind": update_kind(old, moved[0]),
         "group": "override"} for old in left if moved)]), ""  # fmt: skip


async def _first_fixed(registry: str, finding: Finding, left: list[str]) -> str | None:
    client = Registry(registry, None, {}, 2)
    try:
        docs = await client.packages([finding.package])
    finally:
        await client.close()
    return first_fixed(docs.get(finding.package), finding.advisory, left)


def first_fixed(document: dict[str, Any] | None, advisory: dict[str, Any], installed: list[str]) -> str | None:
    """The first release after the installed versions that the advisory does not cover, not deprecated, in
    their major if there is one there (a caret on it then stays compatible with what the parent asked for). Pure."""
    versions = [v for v, info in ((document or {}).get("versions") or {}).items() if not (info or {}).get("deprecated")]
    lowest = min(installed, key=lambda v: parsed.key if (parsed := semver.parse(v)) else (0,))
    major = semver.parse(lowest)
    same = [v for v in versions if major and (p := semver.parse(v)) and p.major == major.major]
    vulnerable = str(advisory.get("vulnerable_versions", "*"))
    return fixed_in(vulnerable, lowest, same) or fixed_in(vulnerable, lowest, versions)


def add_overrides(package: str, versions: list[str], chains: list[list[str]], value: str) -> Edit:
    """An edit that overrides the package's vulnerable versions where the project's package manager reads it.

    npm and pnpm take a key naming the exact version (`on-headers@1.0.2`). Yarn classic's
    `resolutions` cannot name a version, so its keys are the paths the package is reached by
    (`morgan/on-headers`): the same package elsewhere in the tree is left alone.
    """
    exact = {f"{package}@{v}": value for v in versions}

    def edit(folder: Path, manager: str) -> list[str]:
        manifest = folder / "package.json"
        text = manifest.read_text(encoding="utf-8-sig")
        data = json.loads(text)
        entries = exact
        if manager == "yarn":
            entries = {"/".join(chain): value for chain in chains if len(chain) > 1}
        if manager in ("npm", "yarn") or "overrides" in (data.get("pnpm") or {}):
            field = {"npm": "overrides", "yarn": "resolutions"}.get(manager)
            table = data.setdefault(field, {}) if field else data["pnpm"]["overrides"]
            clash = sorted(set(entries) & set(table))
            if clash:
                raise PlanError(f"package.json's {field or 'pnpm.overrides'} already has {', '.join(clash)}")
            table.update(entries)
            indent = re.match(r"\{\s*\n([ \t]+)", text)
            manifest.write_text(json.dumps(data, indent=indent.group(1) if indent else 2, ensure_ascii=False)
                                + ("\n" if text.endswith("\n") else ""), encoding="utf-8")  # fmt: skip
            return ["package.json"]
        workspace = folder / "pnpm-workspace.yaml"
        workspace.write_text(with_overrides(workspace.read_text(encoding="utf-8") if workspace.is_file() else "",
                                            exact), encoding="utf-8")  # fmt: skip
        return ["pnpm-workspace.yaml"]

    return edit


def with_overrides(text: str, entries: dict[str, str]) -> str:
    """pnpm-workspace.yaml's text with the entries added to its block-style `overrides:` (made if absent), every
    other line as it was. Pure; raises PlanError where it cannot add them by line (flow style, a clash)."""
    current = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(current, dict):
        raise PlanError("pnpm-workspace.yaml is not a mapping")
    existing = current.get("overrides") or {}
    clash = sorted(set(entries) & set(existing))
    if clash:
        raise PlanError(f"pnpm-workspace.yaml already overrides {', '.join(clash)}")
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if re.match(r"overrides:\s*(#.*)?$", line)), None)
    if "overrides" in current and at is None:
        wanted = ", ".join(f"{k}: {v}" for k, v in entries.items())
        raise PlanError(f"pnpm-workspace.yaml's overrides are not a block opskeeper can add to by line; add {wanted}")
    if at is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["overrides:\n"]
        at = len(lines) - 1
    indent = re.match(r"([ \t]+)\S", lines[at + 1]) if at + 1 < len(lines) else None
    pad = indent.group(1) if indent else "  "
    lines[at + 1 : at + 1] = [f"{pad}{json.dumps(k)}: {json.dumps(v)}\n" for k, v in entries.items()]
    out = "".join(lines)
    if (yaml.safe_load(out) or {}).get("overrides", {}) != {**existing, **entries}:
        raise PlanError("pnpm-workspace.yaml: the overrides added by line do not read back as added")
    return out

"""What an update would change, computed by the project's own package manager in a scratch copy.

The package manager (pnpm or npm, whichever wrote the lockfile) runs in lockfile-only mode
with scripts off and `--no-save`, against the configured registry, in a temporary copy of
the project's package.json and lockfile. The plan is the difference between the lockfile
before and after, read with opskeeper's own lockfile readers. The project itself is never
touched. The child is started as every child is (worker.children): its own process group,
killed with the worker, and an environment of PATH, a scratch HOME and cache, the registry,
and the proxy and CA settings opskeeper itself honours; no token, and nothing else of the
worker's environment unless the job's `pass_env` names it. The project's npm configuration
goes with the copy as its `.npmrc` (expanded, readable by this user only), so the package
manager resolves by the project's own rules and credentials.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.dependencies.lockfiles import LOCKFILE_NAMES, Lockfile, LockfileError, read_lockfile
from jobs.dependencies.npmrc import read_npm_config
from jobs.dependencies.outdated import update_kind
from jobs.dependencies.project import primary_lockfile
from worker import children
from worker.vendors.npm import NPM_REGISTRY

YARN_FLAGS = ["--ignore-scripts", "--ignore-engines", "--ignore-platform", "--non-interactive", "--no-progress"]
#: The lockfile each manager writes, and its lockfile-only update command.
MANAGERS = {
    "pnpm": ("pnpm-lock.yaml", ["update", "--lockfile-only", "--ignore-scripts", "--no-save"]),
    "npm": ("package-lock.json", ["update", "--package-lock-only", "--ignore-scripts", "--no-save", "--no-audit",
                                  "--no-fund"]),
    # Yarn classic has no lockfile-only mode: it fetches and links into the scratch copy's node_modules.
    "yarn": ("yarn.lock", ["upgrade", *YARN_FLAGS]),
}  # fmt: skip
#: The lockfile-only install that applies an edited manifest (an override added), moving nothing else.
INSTALL = {
    "pnpm": ["install", "--lockfile-only", "--ignore-scripts"],
    "npm": ["install", "--package-lock-only", "--ignore-scripts", "--no-audit", "--no-fund"],
    "yarn": ["install", *YARN_FLAGS],
}
#: The files of a project the package manager reads (and an edit may change).
PROJECT_FILES = ("package.json", "pnpm-workspace.yaml")

Edit = Callable[[Path, str], list[str]]
"""Changes the scratch copy before the package manager runs (given the folder and the manager); returns the
names of the files it changed, which the plan then carries. Raises PlanError when it cannot."""


def manager_of(folder: Path) -> str | None:
    """The package manager a project folder installs with (by its lockfile; of two side by side, the one the
    dependencies check picks), or None without a lockfile this kind updates."""
    by_file = {lockfile: manager for manager, (lockfile, _) in MANAGERS.items()}
    found = [folder / n for n in LOCKFILE_NAMES if n in by_file and (folder / n).is_file()]
    return by_file[primary_lockfile(folder, found).name] if found else None


class PlanError(Exception):
    """The update could not be computed; the message names the project, the tool and what went wrong."""


@dataclass
class ProjectPlan:
    """The updates for one project, and the lockfile that carries them."""

    name: str
    manager: str
    lockfile: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    new_lockfile: bytes = b""
    held: list[dict[str, Any]] = field(default_factory=list)
    """Updates left out because they are a bigger step than the job's `update` allows."""
    before: Lockfile | None = field(default=None, repr=False)
    after: Lockfile | None = field(default=None, repr=False)
    edited: dict[str, bytes] = field(default_factory=dict)
    """Files besides the lockfile that the plan changes (package.json or pnpm-workspace.yaml with an override)."""

    @property
    def files(self) -> dict[str, bytes]:
        """Every file the change writes, by its name in the project folder."""
        return {**self.edited, self.lockfile: self.new_lockfile}

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "manager": self.manager, "lockfile": self.lockfile, "updates": self.updates,
                "held": self.held}  # fmt: skip


def diff(before: Lockfile, after: Lockfile) -> list[dict[str, Any]]:
    """Each direct dependency whose locked version changed: name, from, to, kind, group, and for a workspace
    member its `importer` (its folder, as the lockfile names it). Pure."""
    changes = []
    for importer in sorted(before.importers):
        old = {d.name: d for d in before.importers[importer] if d.source == "registry"}
        new = {d.name: d for d in after.importers.get(importer, []) if d.source == "registry"}
        changes += [{"name": name, "from": old[name].locked, "to": new[name].locked,
                     "kind": update_kind(old[name].locked, new[name].locked), "group": new[name].group,
                     **({"importer": importer} if importer != "." else {})}
                    for name in sorted(set(old) & set(new)) if old[name].locked != new[name].locked]  # fmt: skip
    return changes


def _copy_project(folder: Path, work: Path, lockfile: str, before: Lockfile) -> None:
    """The files the package manager reads into the scratch copy, a workspace's members' package.json too
    (where the lockfile says they are, inside the project): without them it finds no members and writes a
    lockfile without them."""
    inside = folder.resolve()
    members = [m for m in before.importers if m != "." and (folder / m / "package.json").is_file()
               and (folder / m).resolve().is_relative_to(inside)]  # fmt: skip
    for file in (*PROJECT_FILES, lockfile, *(f"{m}/package.json" for m in members)):
        if (folder / file).is_file():
            (work / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / file, work / file)


def _write_npmrc(name: str, folder: Path, work: Path) -> None:
    """The project's npm configuration (its .npmrc, the user's, npm_config_* of this process), expanded, as the
    scratch copy's .npmrc: the package manager resolves as the project's own would (`legacy-peer-deps`,
    `min-release-age`, scoped registries and their credentials), and no credential goes into the child's
    environment or command line. Only this process's user can read the file, which goes with the scratch copy."""
    try:
        text = read_npm_config(folder).for_child()
    except ValueError as exc:
        raise PlanError(f"{name}: {exc}") from None
    if text:
        target = work / ".npmrc"
        target.touch(mode=0o600)
        target.write_text(text, encoding="utf-8")


def _run(what: str, args: list[str], env: dict[str, str], work: Path, timeout: float) -> None:
    """Run the package manager as a child of opskeeper's (worker.children); PlanError naming `what` if it fails."""
    proc = children.spawn(args, env, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        children.kill_group(proc)  # its own children (pnpm's workers, yarn's fetches) too
        proc.communicate()
        raise PlanError(f"{what} did not finish within {timeout:g} s") from None
    finally:
        children.reap(proc)
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        lines = [line for line in text.splitlines() if line.strip() and "complete log of this run" not in line]
        # npm ends with pointers to its log files: its own error code (ERESOLVE, E401) says more.
        code = next((line for line in lines if re.search(r"\b(?:code|ERR_PNPM_\w+)\b", line)), None)
        tail = lines[-3:] if code is None or code in lines[-3:] else [code, *lines[-2:]]
        raise PlanError(f"{what} exited {proc.returncode}: {' / '.join(tail)[:400]}")


def plan(name: str, folder: Path, registry: str, *, ignore: Sequence[str] = (), only: Sequence[str] = (),
         edit: Edit | None = None, pass_env: Sequence[str] = (), timeout: float = 600) -> ProjectPlan:  # fmt: skip
    """Run the project's package manager on a scratch copy of `folder`; the project is left as it was.

    `only` names the packages to update (a vulnerable one and the direct dependencies that pin
    it); otherwise every direct dependency but the `ignore`d ones. With `edit`, the copy is edited
    first and the manager installs (lockfile-only) instead of updating, so only what the edit asks
    for moves.
    """
    manager = manager_of(folder)
    if manager is None:
        raise PlanError(f"{name}: {folder} has no pnpm-lock.yaml, package-lock.json or yarn.lock (updates need one)")
    lockfile, command = MANAGERS[manager]
    tool = shutil.which(manager)
    if tool is None:
        raise PlanError(f"{name}: {manager} is not on PATH: the dependency_updates kind runs the project's own "
                        f"package manager (install {manager}, e.g. `npm install -g {manager}`)")  # fmt: skip
    try:
        before = read_lockfile(folder / lockfile)
    except LockfileError as exc:
        raise PlanError(f"{name}: {exc}") from None
    if manager == "yarn" and before.version != "1":
        raise PlanError(f"{name}: {folder / lockfile} is a Yarn {before.version} lockfile; dependency_updates "
                        "runs Yarn classic (1.x) only so far")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="opskeeper-updates-") as scratch:
        work = Path(scratch) / "project"
        work.mkdir()
        _copy_project(folder, work, lockfile, before)
        _write_npmrc(name, folder, work)
        edited = edit(work, manager) if edit is not None else []
        names = (
            [n for n in only if n not in ignore]
            if only
            else sorted({d.name for d in before.directs() if d.source == "registry" and d.name not in ignore})
        )
        # The children module's environment: proxies and CAs as opskeeper itself honours them, no secrets,
        # `pass_env` for what the operator names (a proxy with a password); then the scratch places.
        # pnpm 11 and later read pnpm_config_*, no longer npm_config_*, and replaced manage-package-manager-versions
        # by pm-on-fail: without `ignore`, pnpm 12.23 on a project whose packageManager pins pnpm@9 fetched that pnpm
        # from the registry first (and failed where the registry has none). Each setting goes both ways.
        pnpm_own = {"store_dir": f"{scratch}/store", "cache_dir": f"{scratch}/cache",
                    "manage_package_manager_versions": "false", "pm_on_fail": "ignore"}  # fmt: skip
        env = children.child_env({
            "PATH": f"{Path(tool).parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}", "HOME": scratch,
            "npm_config_cache": f"{scratch}/cache", "npm_config_registry": registry,
            "YARN_CACHE_FOLDER": f"{scratch}/cache", "CI": "1",
            **{f"{prefix}_config_{k}": v for k, v in pnpm_own.items() for prefix in ("npm", "pnpm")},
        }, passed=pass_env)  # fmt: skip
        if "SSL_CERT_FILE" in env:
            # npm takes its CAs from `cafile`, not NODE_EXTRA_CA_CERTS (seen with npm 11); both replace the list,
            # as SSL_CERT_FILE does for opskeeper itself. pnpm and yarn read the same setting.
            env.setdefault("npm_config_cafile", env["SSL_CERT_FILE"])
        # Yarn's default registry (registry.yarnpkg.com) serves npm's: naming npm's would rewrite every `resolved`.
        default = manager == "yarn" and registry.rstrip("/") == NPM_REGISTRY.rstrip("/")
        where = [] if default else [f"--registry={registry}"]
        if edit is not None:
            args = [tool, *INSTALL[manager], *where]
        else:
            args = [tool, *command, *where, *(names if ignore or only else [])]
        _run(f"{name}: {manager} {args[1]}", args, env, work, timeout)
        after = read_lockfile(work / lockfile)
        lost = sorted(set(before.importers) - set(after.importers))
        if lost:  # never propose a lockfile that forgot part of the project
            raise PlanError(f"{name}: {manager} {args[1]} wrote a lockfile without {', '.join(lost)} (members "
                            "of the workspace the old lockfile lists): not proposed")  # fmt: skip
        return ProjectPlan(name, manager, lockfile, diff(before, after), (work / lockfile).read_bytes(), before=before,
                           after=after, edited={f: (work / f).read_bytes() for f in edited})  # fmt: skip

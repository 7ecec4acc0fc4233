"""Which lockfile answers for a project folder, and whether it still matches the package.json.

A folder's own lockfile answers for it. Without one, a lockfile above it answers only if it
lists the folder as one of its importers (a workspace member at any depth); otherwise the
folder is another project's neighbour, and the check says so instead of reporting the
neighbour's dependencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from jobs.dependencies import semver
from jobs.dependencies.lockfiles import (
    LOCKFILE_NAMES,
    UNSUPPORTED,
    Lockfile,
    LockfileError,
    declared,
    read_lockfile,
    read_manifest,
    spec_source,
)  # fmt: skip

_MANAGER_FILES = {"pnpm": ("pnpm-lock.yaml",), "yarn": ("yarn.lock",), "bun": ("bun.lock",),
                  "npm": ("package-lock.json", "npm-shrinkwrap.json")}  # fmt: skip
_INSTALL = re.compile(r"\b(npm ci|npm install|pnpm (?:install|i)\b|yarn(?: install)?\b|bun install)")


class Lockfiles:
    """Every lockfile read in one run, each parsed once however many projects it answers for."""

    def __init__(self) -> None:
        self._read: dict[Path, Lockfile | LockfileError] = {}

    def get(self, path: Path) -> Lockfile:
        key = path.resolve()
        if key not in self._read:
            try:
                self._read[key] = read_lockfile(key)
            except LockfileError as exc:
                self._read[key] = exc
        found = self._read[key]
        if isinstance(found, LockfileError):
            raise found
        return found


@dataclass
class Located:
    """A project folder, the lockfile that answers for it, and its importer key in that lockfile."""

    folder: Path
    lockfile: Lockfile
    importer: str
    root: Path
    """The repository's top folder (holding .git) or the lockfile's folder: where a shared Dockerfile lives."""
    others: list[Path] = field(default_factory=list)
    """Further lockfiles in the same folder (two package managers' files side by side)."""


def _lockfiles_in(folder: Path) -> list[Path]:
    return [folder / name for name in LOCKFILE_NAMES if (folder / name).is_file()]


def _repository_root(folder: Path) -> Path | None:
    for here in (folder, *folder.parents):
        if (here / ".git").exists():
            return here
    return None


def primary_lockfile(folder: Path, found: list[Path]) -> Path:
    """The lockfile the project installs from: package.json's `packageManager`, else what its Dockerfile runs."""
    manifest = folder / "package.json"
    if manifest.is_file():
        manager = str(read_manifest(manifest).get("packageManager") or "").split("@", 1)[0]
        for path in found:
            if path.name in _MANAGER_FILES.get(manager, ()):
                return path
    dockerfile = folder / "Dockerfile"
    if dockerfile.is_file():
        command = _INSTALL.search(dockerfile.read_text(encoding="utf-8", errors="replace"))
        manager = command[1].split()[0] if command else ""
        for path in found:
            if path.name in _MANAGER_FILES.get(manager, ()):
                return path
    return found[0]


def locate(folder: Path, lockfiles: Lockfiles) -> Located:
    """The lockfile answering for `folder`; LockfileError names the folder and what is wrong."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise LockfileError(f"{folder}: no such folder")
    for name, why in UNSUPPORTED.items():
        if (folder / name).is_file() and not _lockfiles_in(folder):
            raise LockfileError(f"{folder / name}: {why} is not read")
    repository = _repository_root(folder)
    found = _lockfiles_in(folder)
    if found:
        primary = primary_lockfile(folder, found)
        return Located(folder, lockfiles.get(primary), ".", repository or folder,
                       [p for p in found if p != primary])  # fmt: skip
    if not (folder / "package.json").is_file():
        raise LockfileError(f"{folder}: no package.json and no lockfile: not a Node.js project folder")
    for above in folder.parents:
        candidates = _lockfiles_in(above)
        if candidates:
            primary = primary_lockfile(above, candidates)
            lock = lockfiles.get(primary)
            key = folder.relative_to(above).as_posix()
            if key in lock.importers:
                return Located(folder, lock, key, repository or above)
            raise LockfileError(
                f"{folder}: no lockfile here, and {primary} above it is another project's "
                f"(it does not list {key} as a workspace member): run the package manager's install in {folder.name}"
            )
        if above == repository:
            break
    raise LockfileError(f"{folder}: no lockfile ({', '.join(LOCKFILE_NAMES)}) here or in the folders above it")


def drift(lock: Lockfile, importer: str, folder: Path) -> list[str]:
    """What `npm ci` / `pnpm install --frozen-lockfile` would reject: package.json and the lockfile out of step."""
    manifest = read_manifest(folder / "package.json")
    wants = declared(manifest)
    peers = set((manifest.get("peerDependencies") or {}).keys())
    directs = {d.name: d for d in lock.importers.get(importer, [])}
    overridden = (
        lock.overrides | set((manifest.get("overrides") or {}).keys()) | set((manifest.get("resolutions") or {}).keys())
    )
    found = []
    for name, (_, spec) in sorted(wants.items()):
        direct = directs.get(name)
        if direct is None:
            found.append(f"{name} ({spec}) is in package.json but not in {lock.path.name}")
            continue
        if name in overridden or spec_source(spec) != "registry" or direct.source != "registry":
            continue
        range_ = spec[4:].rpartition("@")[2] if spec.startswith("npm:") else spec
        if lock.manager == "pnpm" and spec.startswith("catalog:"):
            continue
        if semver.valid_range(range_) and not semver.satisfies(direct.locked, range_, include_prerelease=True):
            found.append(f"{name}: package.json wants {spec}, {lock.path.name} has {direct.locked}")
    pinned = {n for n, d in directs.items() if d.source == "runtime"}  # pnpm's devEngines.runtime: Node.js itself
    for name in sorted(set(directs) - set(wants) - peers - pinned):
        found.append(f"{name} is in {lock.path.name} but no longer in package.json")
    return found


def disagreements(lock: Lockfile, importer: str, other: Lockfile) -> list[str]:
    """Direct dependencies two lockfiles of one folder lock at different versions."""
    mine = {d.name: d.locked for d in lock.importers.get(importer, []) if d.source == "registry"}
    theirs = {d.name: d.locked for d in other.importers.get(".", []) if d.source == "registry"}
    return [f"{name} ({lock.path.name} {mine[name]}, {other.path.name} {theirs[name]})"
            for name in sorted(set(mine) & set(theirs)) if mine[name] != theirs[name]]  # fmt: skip

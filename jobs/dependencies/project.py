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
    why: str = ""
    """Why this lockfile answers (`choose_lockfile`), for the report."""


def _lockfiles_in(folder: Path) -> list[Path]:
    return [folder / name for name in LOCKFILE_NAMES if (folder / name).is_file()]


def _repository_root(folder: Path) -> Path | None:
    for here in (folder, *folder.parents):
        if (here / ".git").exists():
            return here
    return None


def primary_lockfile(folder: Path, found: list[Path], root: Path | None = None) -> Path:
    """The lockfile the project installs from (see `choose_lockfile`)."""
    return choose_lockfile(folder, found, root)[0]


def choose_lockfile(folder: Path, found: list[Path], root: Path | None = None) -> tuple[Path, str]:
    """The lockfile the project installs from, and why: package.json's `packageManager`, else the install command
    of the folder's Dockerfile, else one in the repository root's Dockerfile that runs in this folder (`cd server
    && npm ci`, or after `WORKDIR …/server`), else the first of LOCKFILE_NAMES (pnpm, npm, yarn, bun)."""
    if len(found) == 1:
        return found[0], f"the only lockfile in {folder.name or folder}"
    manifest = folder / "package.json"
    if manifest.is_file():
        declared_manager = str(read_manifest(manifest).get("packageManager") or "")
        for path in found:
            if path.name in _MANAGER_FILES.get(declared_manager.split("@", 1)[0], ()):
                return path, f"package.json's packageManager is {declared_manager}"
    dockerfiles: list[tuple[Path, str | None]] = [(folder / "Dockerfile", None)]
    if root is not None and root.resolve() != folder.resolve() and folder.resolve().is_relative_to(root.resolve()):
        dockerfiles.append((root / "Dockerfile", folder.resolve().relative_to(root.resolve()).as_posix()))
    for dockerfile, member in dockerfiles:
        if not dockerfile.is_file():
            continue
        said = _install_command(dockerfile.read_text(encoding="utf-8", errors="replace"), member)
        for path in found if said else []:
            if path.name in _MANAGER_FILES.get(said.split()[0] if said else "", ()):
                where = "its Dockerfile" if member is None else f"the root Dockerfile (in {member})"
                return path, f"{where} runs `{said}`"
    return found[0], (f"no packageManager and no install command in a Dockerfile: the first of "
                      f"{', '.join(p.name for p in found)} in opskeeper's order (pnpm, npm, yarn, bun)")  # fmt: skip


_CD = re.compile(r"\bcd\s+(\S+)\s*&&\s*([^&;\n]+)")
_WORKDIR = re.compile(r"^\s*WORKDIR\s+(\S+)", re.IGNORECASE | re.MULTILINE)


def _install_command(text: str, member: str | None) -> str | None:
    """The install command a Dockerfile runs for the folder `member` (None: the Dockerfile's own folder)."""
    if member is None:
        command = _INSTALL.search(text)
        return command[1] if command else None
    for line in text.splitlines():
        for target, rest in _CD.findall(line):
            if target.strip("./'\"").rstrip("/").endswith(member):
                command = _INSTALL.search(rest)
                if command:
                    return command[1]
    # WORKDIR /app/server followed by RUN npm ci (before the next WORKDIR)
    marks = list(_WORKDIR.finditer(text))
    for i, mark in enumerate(marks):
        if mark[1].rstrip("/").endswith("/" + member) or mark[1].rstrip("/") == member:
            block = text[mark.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)]
            command = _INSTALL.search(block)
            if command:
                return command[1]
    return None


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
        primary, why = choose_lockfile(folder, found, repository)
        return Located(folder, lockfiles.get(primary), ".", repository or folder,
                       [p for p in found if p != primary], why)  # fmt: skip
    if not (folder / "package.json").is_file():
        raise LockfileError(f"{folder}: no package.json and no lockfile: not a Node.js project folder")
    for above in folder.parents:
        candidates = _lockfiles_in(above)
        if candidates:
            primary, why = choose_lockfile(above, candidates, repository)
            lock = lockfiles.get(primary)
            key = folder.relative_to(above).as_posix()
            if key in lock.importers:
                return Located(folder, lock, key, repository or above, why=f"{why}; it lists {key} as a member")
            raise LockfileError(
                f"{folder}: no lockfile here, and {primary} above it is another project's "
                f"(it does not list {key} as a workspace member): run the package manager's install in {folder.name}"
            )
        if above == repository:
            break
    raise LockfileError(f"{folder}: no lockfile ({', '.join(LOCKFILE_NAMES)}) here or in the folders above it")


def auto_peers(located: Located) -> set[str]:
    """Packages the lockfile installs for the folder only because its package.json names them as peers (pnpm's
    `autoInstallPeers` puts them beside its dependencies): not direct dependencies, as `pnpm outdated` sees it."""
    manifest_path = located.folder / "package.json"
    if not manifest_path.is_file():
        return set()
    try:
        manifest = read_manifest(manifest_path)
    except LockfileError:
        return set()
    peers = set((manifest.get("peerDependencies") or {}).keys())
    return peers - set(declared(manifest))


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

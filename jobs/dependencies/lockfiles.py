"""Lockfiles as the app's package manager wrote them: pnpm (5.x, 6, 9) and npm (v1, v2, v3).

Each becomes the same picture: per importer (a project folder) its direct dependencies
with their specifier and locked version, every resolved package, and the dependency
edges between them, so an advisory on a transitive package can be traced to the direct
dependency that brings it in.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Package = tuple[str, str]  # (name, version)
GROUPS = ("dependencies", "devDependencies", "optionalDependencies")
_SKIP = ("link:", "file:", "workspace:", "portal:")


class LockfileError(Exception):
    """A lockfile that cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class Direct:
    """A dependency the project's package.json names."""

    name: str
    specifier: str
    locked: str
    group: str
    alias_of: str | None = None
    """The real package when the name is an alias (`"x": "npm:y@1"`)."""

    @property
    def package(self) -> Package:
        return (self.alias_of or self.name, self.locked)


@dataclass
class Lockfile:
    """What a lockfile says was installed."""

    path: Path
    manager: str
    version: str
    importers: dict[str, list[Direct]] = field(default_factory=dict)
    packages: set[Package] = field(default_factory=set)
    edges: dict[Package, set[Package]] = field(default_factory=dict)

    def via(self, target: Package) -> list[list[str]]:
        """For each direct dependency that leads to `target`, the shortest chain of names to it."""
        chains = []
        seen_directs: set[str] = set()
        for directs in self.importers.values():
            for direct in directs:
                if direct.name in seen_directs:
                    continue
                chain = self._path(direct.package, target)
                if chain is not None:
                    seen_directs.add(direct.name)
                    chains.append([direct.name, *[name for name, _ in chain[1:]]])
        return chains

    def _path(self, start: Package, target: Package) -> list[Package] | None:
        queue: deque[list[Package]] = deque([[start]])
        seen = {start}
        while queue:
            path = queue.popleft()
            if path[-1] == target:
                return path
            for nxt in self.edges.get(path[-1], ()):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append([*path, nxt])
        return None


def read_lockfile(path: Path) -> Lockfile:
    """Read pnpm-lock.yaml or package-lock.json; LockfileError names the file and why."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LockfileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        if path.name == "pnpm-lock.yaml":
            # libyaml's loader, where PyYAML has it, reads a large lockfile several times faster.
            return _pnpm(path, yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))  # noqa: S506
        if path.name in ("package-lock.json", "npm-shrinkwrap.json"):
            return _npm(path, json.loads(text))
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise LockfileError(f"{path}: not valid {'YAML' if path.suffix == '.yaml' else 'JSON'}: {exc}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise LockfileError(f"{path}: unexpected lockfile structure ({type(exc).__name__}: {exc})") from None
    raise LockfileError(f"{path}: not a lockfile opskeeper reads (pnpm-lock.yaml or package-lock.json)")


# --- pnpm --------------------------------------------------------------------------------


def _pnpm(path: Path, doc: Any) -> Lockfile:
    if not isinstance(doc, dict) or "lockfileVersion" not in doc:
        raise LockfileError(f"{path}: no lockfileVersion: not a pnpm lockfile")
    version = str(doc["lockfileVersion"])
    major = int(version.split(".", maxsplit=1)[0])
    if major < 5:
        raise LockfileError(f"{path}: lockfileVersion {version} is older than pnpm 5 (5.x, 6 and 9 are read)")
    lock = Lockfile(path, "pnpm", version)
    importers = doc.get("importers") or {".": doc}
    for folder, importer in importers.items():
        lock.importers[folder] = list(_pnpm_directs(importer or {}, major))
    for key, info in (doc.get("packages") or {}).items():
        lock.packages.add(_pnpm_key(key, major))
        if major < 9:
            lock.edges[_pnpm_key(key, major)] = set(_pnpm_deps(info or {}, major))
    for key, info in (doc.get("snapshots") or {}).items():
        lock.edges.setdefault(_pnpm_key(key, major), set()).update(_pnpm_deps(info or {}, major))
    return lock


def _pnpm_directs(importer: Mapping[str, Any], major: int) -> Iterable[Direct]:
    specifiers = importer.get("specifiers") or {}  # lockfile 5.x keeps them apart
    for group in GROUPS:
        for name, entry in (importer.get(group) or {}).items():
            if isinstance(entry, dict):
                specifier, raw = str(entry.get("specifier", "")), str(entry.get("version", ""))
            else:
                specifier, raw = str(specifiers.get(name, "")), str(entry)
            if raw.startswith(_SKIP):
                continue
            alias, locked = _alias(name, raw, major)
            yield Direct(name, specifier, locked, group, alias)


def _alias(name: str, raw: str, major: int) -> tuple[str | None, str]:
    """(real package or None, version) of a locked value: `1.2.3(peer@1)`, `npm:x@1.2.3`, `x@1.2.3`."""
    value = raw.removeprefix("npm:")
    if value.startswith("/"):
        real, version = _pnpm_key(value, major)
        return (real if real != name else None), version
    base = value.split("(", 1)[0]
    if major == 5:
        base = base.split("_", 1)[0]  # 5.x writes peers as `_peer@1`
    if "@" in base[1:]:  # `x@1.2.3` names another package
        at = base.index("@", 1)
        return (base[:at] if base[:at] != name else None), _strip_peers(base[at + 1 :], major)
    return None, _strip_peers(value, major)


def _strip_peers(version: str, major: int) -> str:
    version = version.split("(", 1)[0]
    return version.split("_", 1)[0] if major == 5 else version


def _pnpm_key(key: str, major: int) -> Package:
    """`name@1.2.3(peer)` (9), `/name@1.2.3(peer)` (6), `/name/1.2.3_peer` (5) -> (name, 1.2.3)."""
    key = key.lstrip("/")
    if major == 5 and not re.search(r"^(@[^/]+/)?[^/@]+@", key):
        name, _, version = key.rpartition("/")
        return name, _strip_peers(version, 5)
    at = key.index("@", 1)  # a scoped name starts with @
    return key[:at], _strip_peers(key[at + 1 :], major)


def _pnpm_deps(info: Mapping[str, Any], major: int) -> Iterable[Package]:
    for group in ("dependencies", "optionalDependencies"):
        for name, raw in (info.get(group) or {}).items():
            value = str(raw)
            if value.startswith(_SKIP):
                continue
            alias, version = _alias(name, value, major)
            yield (alias or name, version)


# --- npm ---------------------------------------------------------------------------------


def _npm(path: Path, doc: Any) -> Lockfile:
    version = str(doc.get("lockfileVersion", 1))
    lock = Lockfile(path, "npm", version)
    if "packages" in doc:  # lockfile v2 and v3: a flat map of node_modules paths
        packages: dict[str, Any] = doc["packages"]
        root = packages.get("", {})
        for loc, info in packages.items():
            if loc and "node_modules/" in loc and not info.get("link"):
                lock.packages.add((_npm_name(loc, info), info.get("version", "")))
        for loc, info in packages.items():
            if not loc or "node_modules/" not in loc or info.get("link"):
                continue
            here = (_npm_name(loc, info), info.get("version", ""))
            deps = {**info.get("dependencies", {}), **info.get("optionalDependencies", {})}
            lock.edges[here] = {p for name in deps if (p := _npm_resolve(packages, loc, name)) is not None}
        # A name in both dependencies and optionalDependencies is optional: npm lets the latter win.
        directs = {
            name: Direct(name, str(spec), found[1], group)
            for group in GROUPS for name, spec in (root.get(group) or {}).items()
            if (found := _npm_resolve(packages, "", name)) is not None
        }  # fmt: skip
        lock.importers["."] = list(directs.values())
        return lock
    # lockfile v1: nested `dependencies`
    directs = json.loads(json.dumps(doc.get("dependencies", {})))

    def walk(tree: Mapping[str, Any], parents: list[Mapping[str, Any]]) -> None:
        for name, info in tree.items():
            here = (name, info.get("version", ""))
            lock.packages.add(here)
            scopes = [info.get("dependencies", {}), *parents]
            lock.edges[here] = {(req, scope[req]["version"]) for req in info.get("requires", {})
                                for scope in scopes[:1] + scopes[1:] if req in scope}  # fmt: skip
            walk(info.get("dependencies", {}), [info.get("dependencies", {}), *parents])

    walk(directs, [directs])
    manifest = path.with_name("package.json")
    declared: dict[str, tuple[str, str]] = {}
    if manifest.is_file():
        pkg = json.loads(manifest.read_text(encoding="utf-8"))
        declared = {name: (group, str(spec)) for group in GROUPS for name, spec in (pkg.get(group) or {}).items()}
    lock.importers["."] = [
        Direct(name, declared.get(name, ("dependencies", ""))[1], info.get("version", ""),
               declared.get(name, ("devDependencies" if info.get("dev") else "dependencies", ""))[0])
        for name, info in directs.items() if not declared or name in declared
    ]  # fmt: skip
    return lock


def _npm_name(loc: str, info: Mapping[str, Any]) -> str:
    return str(info.get("name") or loc.rsplit("node_modules/", 1)[1])


def _npm_resolve(packages: Mapping[str, Any], loc: str, name: str) -> Package | None:
    """Node's resolution: look in loc/node_modules, then each parent's, then the root's."""
    base = loc
    while True:
        candidate = f"{base}/node_modules/{name}" if base else f"node_modules/{name}"
        info = packages.get(candidate)
        if info is not None and not info.get("link"):
            return (_npm_name(candidate, info), info.get("version", ""))
        if not base:
            return None
        base = base.rsplit("/node_modules/", 1)[0] if "/node_modules/" in base else ""

"""package-lock.json and npm-shrinkwrap.json: lockfile v1 (nested), v2 and v3 (flat, with workspaces; reference §12)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs.dependencies.lockfiles.model import (
    Direct,
    Lockfile,
    LockfileError,
    Package,
    declared,
    is_version,
    read_manifest,
    spec_source,
)  # fmt: skip


def read(path: Path, doc: Any) -> Lockfile:
    if not isinstance(doc, dict):
        raise LockfileError(f"{path}: not an npm lockfile (a JSON object)")
    version = str(doc.get("lockfileVersion", 1))
    lock = Lockfile(path, "npm", version)
    if "packages" in doc:
        _flat(lock, doc["packages"])
    else:
        _nested(lock, path, doc)
    return lock


def _registry_like(info: Mapping[str, Any], name: str) -> bool:
    """Whether an entry came from a registry: a version, and a tarball named after it (or no `resolved`)."""
    version, resolved = str(info.get("version", "")), str(info.get("resolved", ""))
    if not is_version(version):
        return False
    if not resolved:
        return True
    tail = name.rsplit("/", 1)[-1]
    return "/-/" in resolved and f"{tail}-{version}.tgz" in resolved


def _flat(lock: Lockfile, packages: dict[str, Any]) -> None:
    """v2 and v3: a flat map of node_modules paths; workspace members are entries outside node_modules."""
    for loc, info in packages.items():
        if loc and "node_modules/" in loc and not info.get("link"):
            here = (_name(loc, info), str(info.get("version", "")))
            lock.packages.add(here)
            engines = info.get("engines")
            if isinstance(engines, dict) and engines.get("node"):
                lock.engines[here] = str(engines["node"])
            if not _registry_like(info, here[0]):
                lock.foreign.add(here)
            deps = {**info.get("dependencies", {}), **info.get("optionalDependencies", {})}
            lock.edges[here] = {p for name in deps if (p := _resolve(packages, loc, name)) is not None}
    members = [loc for loc, info in packages.items()
               if "node_modules/" not in loc and not info.get("extraneous")]  # fmt: skip
    for loc in members:
        info = packages[loc]
        directs: dict[str, Direct] = {}
        for group in ("devDependencies", "dependencies", "optionalDependencies"):  # the later group wins, as in npm
            for name, spec in (info.get(group) or {}).items():
                directs[name] = _direct(packages, loc, name, str(spec), group)
        lock.importers[loc or "."] = [d for d in directs.values() if d is not None]


def _direct(packages: Mapping[str, Any], loc: str, name: str, spec: str, group: str) -> Direct:
    entry_loc = _locate(packages, loc, name)
    info = packages.get(entry_loc, {}) if entry_loc else {}
    source = spec_source(spec)
    if info.get("link"):
        target = packages.get(str(info.get("resolved", "")), {})
        return Direct(name, spec, str(target.get("version", "")), group,
                      source="workspace" if source == "registry" else source)  # fmt: skip
    locked = str(info.get("version", ""))
    if source == "registry" and info and not _registry_like(info, _name(entry_loc or name, info)):
        source = "git" if str(info.get("resolved", "")).startswith("git") else "url"
    if source != "registry":
        return Direct(name, spec, locked, group, source=source)
    real = _name(entry_loc, info) if entry_loc else name
    return Direct(name, spec, locked, group, real if real != name else None)


def _name(loc: str, info: Mapping[str, Any]) -> str:
    return str(info.get("name") or loc.rsplit("node_modules/", 1)[-1])


def _locate(packages: Mapping[str, Any], loc: str, name: str) -> str | None:
    """Node's resolution: look in loc/node_modules, then each parent's, then the root's."""
    base = loc
    while True:
        candidate = f"{base}/node_modules/{name}" if base else f"node_modules/{name}"
        if candidate in packages:
            return candidate
        if not base:
            return None
        base = base.rsplit("/node_modules/", 1)[0] if "/node_modules/" in base else ""


def _resolve(packages: Mapping[str, Any], loc: str, name: str) -> Package | None:
    found = _locate(packages, loc, name)
    if found is None:
        return None
    info = packages[found]
    if info.get("link"):
        return None
    return (_name(found, info), str(info.get("version", "")))


def _nested(lock: Lockfile, path: Path, doc: dict[str, Any]) -> None:
    """v1: nested `dependencies`, with `requires` naming what each needs."""
    top: dict[str, Any] = doc.get("dependencies", {})

    def walk(tree: Mapping[str, Any], parents: list[Mapping[str, Any]]) -> None:
        for name, info in tree.items():
            version = str(info.get("version", ""))
            real = name
            if version.startswith("npm:"):  # an alias: `npm:real@1.2.3`
                real, _, version = version[4:].rpartition("@")
            here = (real, version)
            lock.packages.add(here)
            if not is_version(version) or (info.get("resolved") and not _registry_like({**info, "version": version},
                                                                                    real)):  # fmt: skip
                lock.foreign.add(here)
            scopes = [info.get("dependencies", {}), *parents]
            # Each requirement resolves to the nearest copy: its own nested one, else a parent's.
            lock.edges[here] = {(req, str(scope[req].get("version", ""))) for req in info.get("requires", {})
                                for scope in [next((s for s in scopes if req in s), None)] if scope}  # fmt: skip
            walk(info.get("dependencies", {}), [info.get("dependencies", {}), *parents])

    walk(top, [top])
    manifest = path.with_name("package.json")
    wants = declared(read_manifest(manifest)) if manifest.is_file() else {}
    directs = []
    for name, info in top.items():
        if wants and name not in wants:
            continue
        group, spec = wants.get(name, ("devDependencies" if info.get("dev") else "dependencies", ""))
        version = str(info.get("version", ""))
        alias = None
        if version.startswith("npm:"):
            alias, _, version = version[4:].rpartition("@")
        source = spec_source(spec) if spec else "registry"
        if source == "registry" and not is_version(version):
            source = "git" if version.startswith("git") else "url"
        directs.append(Direct(name, spec, version, group, alias, source) if source == "registry"
                       else Direct(name, spec, version, group, source=source))  # fmt: skip
    lock.importers["."] = directs

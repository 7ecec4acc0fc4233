"""pnpm-lock.yaml: lockfile 5.x, 6 and 9, and pnpm 11+'s file of two YAML documents (reference §5)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jobs.dependencies.lockfiles.model import (
    GROUPS,
    Direct,
    Lockfile,
    LockfileError,
    Package,
    Source,
    is_version,
    spec_source,
    yaml_documents,
)  # fmt: skip

_LOCAL = ("link:", "file:", "workspace:", "portal:")


def read(path: Path, text: str) -> Lockfile:
    # pnpm 11+ may write an "env" document (config dependencies, the pinned pnpm) before the project's.
    docs = yaml_documents(text)
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise LockfileError(f"{path}: no lockfileVersion: not a pnpm lockfile")
    doc = docs[-1]
    if "lockfileVersion" not in doc:
        raise LockfileError(f"{path}: no lockfileVersion: not a pnpm lockfile")
    version = str(doc["lockfileVersion"])
    major = int(version.split(".", maxsplit=1)[0])
    if major < 5:
        raise LockfileError(f"{path}: lockfileVersion {version} is older than pnpm 5 (5.x, 6 and 9 are read)")
    lock = Lockfile(path, "pnpm", version)
    catalogs = doc.get("catalogs") or {}
    for selector in doc.get("overrides") or {}:  # `foo`, `foo@<2`, `parent@1>foo`: the last name is overridden
        last = str(selector).rsplit(">", 1)[-1]
        lock.overrides.add(last[: last.find("@", 1)] if last.find("@", 1) > 0 else last)
    importers = doc.get("importers") or {".": doc}
    for folder, importer in importers.items():
        lock.importers[str(folder)] = list(_directs(importer or {}, major, catalogs))
    for key, info in (doc.get("packages") or {}).items():
        package = _key(str(key), major)
        lock.packages.add(package)
        engines = (info or {}).get("engines")
        if isinstance(engines, dict) and engines.get("node"):
            lock.engines[package] = str(engines["node"])
        if not is_version(package[1]) or ((info or {}).get("resolution") or {}).get("type") in ("git", "directory"):
            lock.foreign.add(package)
        if major < 9:
            lock.edges[package] = set(_deps(info or {}, major))
    for key, info in (doc.get("snapshots") or {}).items():
        lock.edges.setdefault(_key(str(key), major), set()).update(_deps(info or {}, major))
    return lock


def _directs(importer: Mapping[str, Any], major: int, catalogs: Mapping[str, Any]) -> Iterable[Direct]:
    specifiers = importer.get("specifiers") or {}  # lockfile 5.x keeps them apart
    for group in GROUPS:
        for name, entry in (importer.get(group) or {}).items():
            if isinstance(entry, dict):
                specifier, raw = str(entry.get("specifier", "")), str(entry.get("version", ""))
            else:
                specifier, raw = str(specifiers.get(name, "")), str(entry)
            if specifier.startswith("catalog:"):  # the range the catalog gives
                catalog = specifier[len("catalog:") :] or "default"
                specifier = str(((catalogs.get(catalog) or {}).get(name) or {}).get("specifier", specifier))
            if raw.startswith(_LOCAL):
                kind: Source = "workspace" if raw.startswith("link:") and not specifier.startswith("link:") else "local"
                yield Direct(str(name), specifier, raw, group, source=kind)
                continue
            alias, locked = _alias(str(name), raw, major)
            source = spec_source(specifier)
            if source == "registry" and not is_version(locked):  # an override or a `resolutions` URL
                source = "git" if "codeload" in locked or locked.startswith("git") else "url"
            if source != "registry":
                yield Direct(str(name), specifier, locked, group, source=source)
                continue
            yield Direct(str(name), specifier, locked, group, alias)


def _alias(name: str, raw: str, major: int) -> tuple[str | None, str]:
    """(real package or None, version) of a locked value: `1.2.3(peer@1)`, `npm:x@1.2.3`, `x@1.2.3`."""
    value = raw.removeprefix("npm:")
    if value.startswith("/"):
        real, version = _key(value, major)
        return (real if real != name else None), version
    if "://" in value:  # a tarball or git URL
        return None, value
    base = value.split("(", 1)[0]
    if major == 5:
        base = base.split("_", 1)[0]  # 5.x writes peers as `_peer@1`
    if "@" in base[1:]:  # `x@1.2.3` names another package
        at = base.index("@", 1)
        return (base[:at] if base[:at] != name else None), _strip_peers(base[at + 1 :], major)
    return None, _strip_peers(value, major)


def _strip_peers(version: str, major: int) -> str:
    if "://" in version:
        return version
    version = version.split("(", 1)[0]
    return version.split("_", 1)[0] if major == 5 else version


def _key(key: str, major: int) -> Package:
    """`name@1.2.3(peer)` (9), `/name@1.2.3(peer)` (6), `/name/1.2.3_peer` (5) -> (name, 1.2.3)."""
    key = key.lstrip("/")
    if major == 5 and not re.search(r"^(@[^/]+/)?[^/@]+@", key):
        name, _, version = key.rpartition("/")
        return name, _strip_peers(version, 5)
    at = key.find("@", 1)  # a scoped name starts with @
    if at < 0:  # `github.com/owner/repo/sha` (lockfile 6 git dependencies): no name to look up
        return key, key
    return key[:at], _strip_peers(key[at + 1 :], major)


def _deps(info: Mapping[str, Any], major: int) -> Iterable[Package]:
    for group in ("dependencies", "optionalDependencies"):
        for name, raw in (info.get(group) or {}).items():
            value = str(raw)
            if value.startswith(_LOCAL):
                continue
            alias, version = _alias(str(name), value, major)
            yield (alias or str(name), version)

"""bun.lock, Bun ≥ 1.2's text lockfile: JSON with trailing commas (reference §12).

`packages` is keyed by install path: `chalk` is the hoisted copy, `@babel/highlight/chalk`
a second version nested under the package that needs it, as node_modules would hold it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jobs.dependencies.lockfiles.model import GROUPS, Direct, Lockfile, LockfileError, Package, is_version, spec_source

# A string (kept as it is) or a comma before a closing bracket (dropped): JSONC's trailing commas, outside strings.
_TRAILING = re.compile(r'("(?:[^"\\]|\\.)*")|,(\s*[}\]])')


def _split(spec: str) -> tuple[str, str]:
    at = spec.find("@", 1)
    return (spec, "") if at < 0 else (spec[:at], spec[at + 1 :])


def _names(key: str) -> list[str]:
    """The package names along an install path: `@babel/highlight/chalk` -> [`@babel/highlight`, `chalk`]."""
    parts, names = key.split("/"), []
    while parts:
        head = parts.pop(0)
        names.append(f"{head}/{parts.pop(0)}" if head.startswith("@") and parts else head)
    return names


def read(path: Path, text: str) -> Lockfile:
    try:
        doc = json.loads(_TRAILING.sub(lambda m: m[1] or m[2], text))
    except json.JSONDecodeError as exc:
        raise LockfileError(f"{path}: not valid bun.lock JSON: {exc}") from None
    if not isinstance(doc, dict) or "lockfileVersion" not in doc:
        raise LockfileError(f"{path}: no lockfileVersion: not a bun.lock")
    lock = Lockfile(path, "bun", str(doc["lockfileVersion"]))
    packages: dict[str, Any] = doc.get("packages") or {}
    by_key: dict[str, Package] = {}
    for key, value in packages.items():
        if not isinstance(value, list) or not value:
            raise LockfileError(f'{path}: packages[{key!r}] is not an array ["name@version", ...]')
        name, version = _split(str(value[0]))
        package = (name, version)
        by_key[key] = package
        if version.startswith("workspace:"):
            continue
        lock.packages.add(package)
        registry = len(value) > 1 and isinstance(value[1], str)  # registry entries: [spec, registry, info, integrity]
        if not is_version(version) or not registry:
            lock.foreign.add(package)

    def resolve(parent: str, dep: str) -> str | None:
        """Node's lookup through the install-path keys: `parent/dep`, then each ancestor's, then the top."""
        names = _names(parent)
        for depth in range(len(names), 0, -1):
            key = "/".join([*names[:depth], dep])
            if key in packages:
                return key
        return dep if dep in packages else None

    for key, value in packages.items():
        info = value[2] if len(value) > 2 and isinstance(value[2], dict) else {}
        deps = {**(info.get("dependencies") or {}), **(info.get("optionalDependencies") or {})}
        lock.edges.setdefault(by_key[key], set()).update(
            by_key[k] for dep in deps if (k := resolve(key, dep)) is not None
        )
    for folder, workspace in (doc.get("workspaces") or {}).items():
        directs = {}
        for group in ("devDependencies", *GROUPS[:1], "optionalDependencies"):
            for name, spec in (workspace.get(group) or {}).items():
                key = f"{workspace.get('name')}/{name}" if f"{workspace.get('name')}/{name}" in packages else name
                found = by_key.get(key)
                source = spec_source(str(spec))
                if found is not None and found[1].startswith("workspace:"):
                    source = "workspace"
                elif found is not None and source == "registry" and found in lock.foreign:
                    source = "git" if "git" in found[1] else "url"
                locked = found[1] if found else ""
                if source != "registry":
                    directs[name] = Direct(name, str(spec), locked, group, source=source)
                elif found is not None:
                    directs[name] = Direct(name, str(spec), locked, group, found[0] if found[0] != name else None)
        lock.importers[folder or "."] = list(directs.values())
    return lock

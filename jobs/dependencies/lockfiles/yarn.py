"""yarn.lock: Yarn classic (`# yarn lockfile v1`, also the all-quoted variant npm writes) and Yarn berry (2+).

Neither says which project asked for what: the direct dependencies are read from the
package.json of the root and of every workspace member, and looked up by `name@specifier`.

The classic format is parsed here by hand: it is not YAML, PyPI has no maintained reader
for it, and its grammar is small (blocks keyed by `name@range` lists, two-space indents,
`key value` lines, optionally quoted).
"""

from __future__ import annotations

import re
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
    workspace_members,
    yaml_documents,
)  # fmt: skip

_FIELD = re.compile(r'^\s+("(?:[^"\\]|\\.)*"|\S+)\s+(.*)$')


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _split_spec(spec: str) -> tuple[str, str]:
    """`@scope/name@^1.2` -> (`@scope/name`, `^1.2`)."""
    at = spec.find("@", 1)
    return (spec, "") if at < 0 else (spec[:at], spec[at + 1 :])


def read(path: Path, text: str) -> Lockfile:
    if re.search(r"^__metadata:", text, re.M):
        return _berry(path, text)
    if "# yarn lockfile v1" not in text[:500]:
        raise LockfileError(
            f"{path}: neither a Yarn classic lockfile ('# yarn lockfile v1') nor Yarn berry (__metadata)"
        )
    return _classic(path, text)


def _classic(path: Path, text: str) -> Lockfile:
    entries: dict[str, dict[str, Any]] = {}  # `name@range` -> the block
    block: dict[str, Any] | None = None
    nested: dict[str, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            if not line.endswith(":"):
                raise LockfileError(f"{path}:{number}: expected `name@range:` to start an entry, found {line[:80]!r}")
            block, nested = {"deps": {}}, None
            for spec in line[:-1].split(","):
                entries[_unquote(spec)] = block
            continue
        if block is None:
            raise LockfileError(f"{path}:{number}: an indented line before the first entry")
        indent = len(line) - len(line.lstrip(" "))
        if indent == 2 and line.rstrip().endswith(":"):
            group = _unquote(line.strip()[:-1])
            nested = block["deps"] if group in ("dependencies", "optionalDependencies") else {}
            continue
        match = _FIELD.match(line)
        if match is None:
            raise LockfileError(f"{path}:{number}: expected `key value`, found {line.strip()[:80]!r}")
        key, value = _unquote(match[1]), _unquote(match[2])
        if indent >= 4 and nested is not None:
            nested[key] = value
        elif indent == 2:
            nested = None
            block[key] = value
    lock = Lockfile(path, "yarn", "1")
    resolved: dict[str, Package] = {}
    for spec, info in entries.items():
        name, range_ = _split_spec(spec)
        real = name
        if range_.startswith("npm:"):  # an alias: `x@npm:y@^1`
            real = _split_spec(range_[4:])[0]
        package = (real, str(info.get("version", "")))
        resolved[spec] = package
        lock.packages.add(package)
        url = str(info.get("resolved", ""))
        if spec_source(range_) != "registry" or not is_version(package[1]) or (url and "/-/" not in url):
            lock.foreign.add(package)
    for spec, info in entries.items():
        lock.edges.setdefault(resolved[spec], set()).update(
            resolved[f"{dep}@{rng}"] for dep, rng in info["deps"].items() if f"{dep}@{rng}" in resolved
        )
    _importers(lock, path.parent, lambda name, spec: resolved.get(f"{name}@{spec}"))
    return lock


def _importers(lock: Lockfile, root: Path, find: Any) -> None:
    """Directs of the root and each workspace member, from their package.json files."""
    manifest = read_manifest(root / "package.json") if (root / "package.json").is_file() else {}
    for folder in [".", *workspace_members(root, manifest)]:
        wants = declared(manifest if folder == "." else read_manifest(root / folder / "package.json"))
        directs = []
        for name, (group, spec) in wants.items():
            package = find(name, spec)
            source = spec_source(spec)
            if package is None:
                if source in ("workspace", "local"):
                    directs.append(Direct(name, spec, "", group, source=source))
                continue  # not in the lockfile: drift, reported by the project check
            if source == "registry" and package in lock.foreign:
                source = "git" if "#" in spec or "/" in spec else "url"
            alias = package[0] if package[0] != name else None
            directs.append(Direct(name, spec, package[1], group, alias) if source == "registry"
                           else Direct(name, spec, package[1], group, source=source))  # fmt: skip
        lock.importers[folder] = directs


def _berry(path: Path, text: str) -> Lockfile:
    docs = yaml_documents(text)
    doc = docs[0] if len(docs) == 1 else None
    if not isinstance(doc, dict):
        raise LockfileError(f"{path}: not a Yarn berry lockfile (a YAML mapping)")
    meta = doc.pop("__metadata", {}) or {}
    lock = Lockfile(path, "yarn", f"berry {meta.get('version', '?')}")
    resolved: dict[str, Package] = {}
    infos: dict[Package, Mapping[str, Any]] = {}
    for key, info in doc.items():
        resolution = str((info or {}).get("resolution", ""))
        if "@patch:" in resolution:  # Yarn's built-in patches duplicate the npm: entry they patch
            continue
        name, protocol = _split_spec(resolution)
        version = str((info or {}).get("version", ""))
        package = (name, version)
        for spec in str(key).split(","):
            resolved[spec.strip()] = package
        if protocol.startswith("workspace:"):
            continue
        lock.packages.add(package)
        infos[package] = info or {}
        if not protocol.startswith("npm:") or not is_version(version):
            lock.foreign.add(package)
    for package, info in infos.items():
        wants = {f"{dep}@{rng}" for group in ("dependencies", "optionalDependencies")
                 for dep, rng in (info.get(group) or {}).items()}  # fmt: skip
        lock.edges[package] = {resolved[key] for key in wants if key in resolved}

    def find(name: str, spec: str) -> Package | None:
        # Yarn berry writes a bare range with its default protocol: `^1.2.3` is `npm:^1.2.3`.
        for key in (f"{name}@{spec}", f"{name}@npm:{spec}"):
            if key in resolved:
                return resolved[key]
        return None

    _importers(lock, path.parent, find)
    # A direct dependency on another member resolves to that workspace, not to a registry package.
    members = {p for k, p in resolved.items() if "@workspace:" in k}
    for folder, directs in lock.importers.items():
        lock.importers[folder] = [Direct(d.name, d.specifier, d.locked, d.group, source="workspace")
                                  if (d.alias_of or d.name, d.locked) in members and d.source == "registry" else d
                                  for d in directs]  # fmt: skip
    return lock

"""The one picture every lockfile becomes, and what a dependency specifier says about where it comes from."""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jobs.dependencies import semver

Package = tuple[str, str]  # (name, version)
GROUPS = ("dependencies", "devDependencies", "optionalDependencies")
Source = Literal["registry", "git", "url", "local", "workspace", "runtime"]
LOCKFILE_NAMES = ("pnpm-lock.yaml", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "bun.lock")
UNSUPPORTED = {
    "bun.lockb": "bun's binary lockfile (bun ≥ 1.2 writes the text bun.lock: run `bun install --save-text-lockfile`)"
}


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
    source: Source = "registry"
    """Where it comes from; only `registry` dependencies are looked up and sent to advisory sources."""

    @property
    def package(self) -> Package:
        return (self.alias_of or self.name, self.locked)

    @property
    def range(self) -> str:
        """The version range of a registry specifier (`npm:react@^19` -> `^19`)."""
        spec = self.specifier
        if spec.startswith("npm:"):
            spec = spec[4:]
            at = spec.rfind("@")
            spec = spec[at + 1 :] if at > 0 else "*"
        return spec


@dataclass
class Lockfile:
    """What a lockfile says was installed."""

    path: Path
    manager: str
    version: str
    importers: dict[str, list[Direct]] = field(default_factory=dict)
    packages: set[Package] = field(default_factory=set)
    foreign: set[Package] = field(default_factory=set)
    """Packages resolved from git, a URL or the disk: in `packages`, never looked up by name."""
    edges: dict[Package, set[Package]] = field(default_factory=dict)
    overrides: set[str] = field(default_factory=set)
    engines: dict[Package, str] = field(default_factory=dict)
    """engines.node of the packages that state one (pnpm and npm lockfiles record it)."""
    """Names whose version the lockfile's `overrides` set, whatever a package.json asks for."""

    @property
    def registry_packages(self) -> set[Package]:
        return self.packages - self.foreign

    def directs(self) -> list[Direct]:
        """Every importer's direct dependencies (a workspace's root and members), the root's first."""
        return [d for folder in sorted(self.importers, key=lambda f: (f != ".", f)) for d in self.importers[folder]]

    def via(self, target: Package, importer: str | None = None) -> list[list[str]]:
        """For each direct dependency (of `importer`, or of any) that leads to `target`, the shortest chain of names."""
        tracer, chains, seen = Tracer(self, {target}), [], set()
        for folder in [importer] if importer is not None else list(self.importers):
            for direct in self.importers.get(folder, []):
                if direct.name in seen or direct.source != "registry":
                    continue
                chain = tracer.reached(direct.package).get(target)
                if chain is not None:
                    seen.add(direct.name)
                    chains.append([direct.name, *chain[1:]])
        return chains


class Tracer:
    """Chains from direct dependencies to vulnerable packages, one graph walk per distinct direct package."""

    def __init__(self, lock: Lockfile, targets: set[Package]) -> None:
        self.lock, self.targets = lock, targets
        self._from: dict[Package, dict[Package, list[str]]] = {}

    def reached(self, start: Package) -> dict[Package, list[str]]:
        """target -> the shortest chain of names from `start` to it."""
        if start not in self._from:
            found: dict[Package, list[str]] = {}
            parent: dict[Package, Package | None] = {start: None}
            queue = deque([start])
            while queue:
                here = queue.popleft()
                if here in self.targets:
                    chain: list[str] = []
                    step: Package | None = here
                    while step is not None:
                        chain.append(step[0])
                        step = parent[step]
                    found[here] = chain[::-1]
                for nxt in self.lock.edges.get(here, ()):
                    if nxt not in parent:
                        parent[nxt] = here
                        queue.append(nxt)
            self._from[start] = found
        return self._from[start]


_GIT = re.compile(r"^(git\+|git://|github:|gitlab:|bitbucket:|gist:)|^[A-Za-z0-9][\w.-]*/[\w.-]+(#.*)?$")


def spec_source(spec: str) -> Source:
    """Where a package.json specifier points (reference §12): the registry, git, a URL, the disk or the workspace."""
    spec = spec.strip()
    if spec.startswith("workspace:"):
        return "workspace"
    if spec.startswith("runtime:"):  # pnpm's `devEngines.runtime`: Node.js itself, not a package
        return "runtime"
    if spec.startswith(("link:", "file:", "portal:", "./", "../", "/", "~/")):
        return "local"
    if spec.startswith(("http://", "https://")):
        return "git" if spec.endswith(".git") or "#" in spec.split("/")[-1] else "url"
    if _GIT.search(spec):
        return "git"
    if spec.startswith("npm:"):
        return spec_source(spec[4:].rpartition("@")[2]) if "@" in spec[5:] else "registry"
    return "registry"


def is_version(text: str) -> bool:
    return semver.parse(text) is not None


def read_manifest(path: Path) -> dict[str, Any]:
    """A package.json (a UTF-8 byte-order mark tolerated, as npm does); LockfileError names it and why."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise LockfileError(f"{path}: cannot read: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LockfileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LockfileError(f"{path}: not a package.json (a JSON object)")
    return doc


def declared(manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """name -> (group, specifier) of a package.json; a name in two groups counts once, as npm installs it."""
    found: dict[str, tuple[str, str]] = {}
    for group in ("devDependencies", "dependencies", "optionalDependencies"):  # later groups win, as in npm
        for name, spec in (manifest.get(group) or {}).items():
            found[str(name)] = (group, str(spec))
    return found


def workspace_members(root: Path, manifest: dict[str, Any]) -> list[str]:
    """The member folders (relative, POSIX) that package.json `workspaces` names, expanding `*` globs."""
    patterns = manifest.get("workspaces") or []
    if isinstance(patterns, dict):  # yarn classic's {"packages": [...], "nohoist": [...]}
        patterns = patterns.get("packages") or []
    members: list[str] = []
    for pattern in patterns:
        text = str(pattern).strip().rstrip("/")
        if text.startswith("!"):
            continue
        for folder in sorted(root.glob(text)) if any(c in text for c in "*?[") else [root / text]:
            if (folder / "package.json").is_file():
                rel = folder.relative_to(root).as_posix()
                if rel not in members:
                    members.append(rel)
    return members


def yaml_documents(text: str) -> list[Any]:
    """The documents of a YAML lockfile (pnpm-lock.yaml, Yarn berry's yarn.lock), empty ones left out.

    Read by yaml-rs: YAML 1.2, as pnpm and Yarn write these files (with js-yaml), so a package named `on` or
    `yes` stays a string where PyYAML's YAML 1.1 makes it a boolean; nine times faster than libyaml through
    PyYAML on a 1.2 MB lockfile of 102 importers (0.04 s against 0.34 s), with alias expansion bounded. A file
    it refuses is read again by PyYAML: its yaml.YAMLError names the line and column, as this project's
    messages always have; and where PyYAML accepts it (a duplicated key, which PyYAML resolves to the last),
    its reading stands, as before yaml-rs.
    """
    import yaml_rs

    try:
        loaded = yaml_rs.loads(text)
    except yaml_rs.YAMLDecodeError:
        import yaml

        loaded = list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
        return [d for d in loaded if d is not None]
    # yaml-rs answers one document as itself and several as a list of them: several when a `---` marker
    # starts a document after the first one (whose own marker, if it has one, comes before any content).
    markers = [m.start() for m in _DOCUMENT_START.finditer(text)]
    content = _CONTENT.search(text)
    several = len(markers) > 1 or (len(markers) == 1 and content is not None and content.start() < markers[0])
    documents = loaded if isinstance(loaded, list) and several else [loaded]
    return [d for d in documents if d is not None]


_DOCUMENT_START = re.compile(r"^---(?=[ \t]|$)", re.M)
_CONTENT = re.compile(r"^(?!---(?:[ \t]|$))[^#\s]", re.M)  # a line that is neither blank, a comment nor a marker

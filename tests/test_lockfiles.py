"""Lockfiles from real projects (shared/fixtures/pnpm and npm-audit), read the way pnpm and npm mean them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.dependencies.lockfiles import LockfileError, read_lockfile
from tests.conftest import SHARED

PNPM = SHARED / "fixtures" / "pnpm"
NPM = SHARED / "fixtures" / "npm-audit"


def importer_versions(path: Path) -> dict[str, dict[str, str]]:
    """Each importer's direct dependencies and locked versions, read straight from the YAML."""
    doc = yaml.safe_load(path.read_text())
    importers = doc.get("importers") or {".": doc}
    result = {}
    for folder, importer in importers.items():
        versions = {}
        for group in ("dependencies", "devDependencies", "optionalDependencies"):
            for name, entry in (importer.get(group) or {}).items():
                versions[name] = str(entry["version"] if isinstance(entry, dict) else entry)
        result[folder] = versions
    return result


PROJECTS = ["mern-v9/server", "mern-v9/client", "workspace-v6", "workspace-v6/packages/client",
            "workspace-v6/packages/server", "workspace-v9"]  # fmt: skip


@pytest.mark.parametrize("lockfile", PROJECTS)
def test_direct_versions_equal_the_importers_entries_without_peer_suffix(lockfile: str) -> None:
    """Each direct dependency's locked version is the importer's entry with the peer suffix removed."""
    path = PNPM / lockfile / "pnpm-lock.yaml"
    lock = read_lockfile(path)
    expected = importer_versions(path)
    assert set(lock.importers) == set(expected)
    for folder, directs in lock.importers.items():
        assert {d.name: d.locked for d in directs} == {n: v.split("(")[0] for n, v in expected[folder].items()}


@pytest.mark.parametrize("lockfile", ["mern-v9/server", "mern-v9/client", "workspace-v6", "workspace-v9"])
def test_resolved_count_equals_the_lockfiles_package_count(lockfile: str) -> None:
    """Every `packages` entry is one resolved package."""
    path = PNPM / lockfile / "pnpm-lock.yaml"
    assert len(read_lockfile(path).packages) == len(yaml.safe_load(path.read_text())["packages"])


def test_workspace_importers_map_to_their_folders() -> None:
    """A pnpm workspace's importers are its project folders, each with its own dependencies."""
    lock = read_lockfile(PNPM / "workspace-v6" / "pnpm-lock.yaml")
    assert sorted(lock.importers) == [".", "packages/client", "packages/server"]
    assert {d.name for d in lock.importers["packages/server"]} >= {"express", "mongoose"}
    assert next(d for d in lock.importers["packages/client"] if d.name == "@arwes/react").locked == "1.0.0-alpha.23"


def test_transitive_package_is_traced_to_the_direct_dependencies_that_bring_it() -> None:
    """debug@2.6.9 in the MERN server comes in through express and morgan."""
    lock = read_lockfile(PNPM / "mern-v9" / "server" / "pnpm-lock.yaml")
    assert ("debug", "2.6.9") in lock.packages
    assert sorted(lock.via(("debug", "2.6.9"))) == [["express", "debug"], ["morgan", "debug"]]


def test_npm_lockfile_v2_with_dev_and_optional_dependencies() -> None:
    """package-lock v2: direct deps from the root entry, every node_modules package, nested resolution."""
    lock = read_lockfile(NPM / "audit-omit" / "package-lock.json")
    assert (lock.manager, lock.version) == ("npm", "2")
    groups = {d.name: d.group for d in lock.importers["."]}
    # nyc is in both dependencies and optionalDependencies: npm treats it as optional.
    assert groups == {"nyc": "optionalDependencies", "tap": "devDependencies"}
    assert len(lock.packages) > 500
    chains = lock.via(("mixin-deep", next(v for n, v in lock.packages if n == "mixin-deep")))
    assert chains
    assert all(chain[-1] == "mixin-deep" for chain in chains)


def test_npm_lockfile_v1_nested_dependencies() -> None:
    """package-lock v1: the nested `dependencies` tree, with specifiers from package.json."""
    lock = read_lockfile(NPM / "nyc-mkdirp" / "package-lock.json")
    assert lock.version == "1"
    assert {d.name: (d.specifier, d.locked) for d in lock.importers["."]} == {
        "mkdirp": ("^0.5.1", "0.5.1"), "nyc": ("11.9.0", "11.9.0")
    }  # fmt: skip
    assert lock.via(next(p for p in lock.packages if p[0] == "minimist"))


def test_aliases_and_links(tmp_path: Path) -> None:
    """`npm:` aliases name the real package; a `workspace:` entry is a direct dependency of source workspace."""
    path = tmp_path / "pnpm-lock.yaml"
    path.write_text("""\
lockfileVersion: '9.0'
importers:
  .:
    dependencies:
      string-width-cjs:
        specifier: npm:string-width@^4.2.0
        version: string-width@4.2.3
      shared:
        specifier: workspace:*
        version: link:../shared
      react-dom:
        specifier: ^18.2.0
        version: 18.2.0(react@18.2.0)
packages:
  string-width@4.2.3: {}
  react-dom@18.2.0: {}
""")
    [alias, shared, dom] = read_lockfile(path).importers["."]
    assert (shared.name, shared.source, shared.locked) == ("shared", "workspace", "link:../shared")
    assert (alias.name, alias.alias_of, alias.locked, alias.package) == (
        "string-width-cjs", "string-width", "4.2.3", ("string-width", "4.2.3")
    )  # fmt: skip
    assert (dom.name, dom.locked, dom.alias_of) == ("react-dom", "18.2.0", None)


def test_lockfile_v5_keys(tmp_path: Path) -> None:
    """pnpm 5.x: `/name/1.2.3_peer` keys and `specifiers` at the root."""
    path = tmp_path / "pnpm-lock.yaml"
    path.write_text("""\
lockfileVersion: 5.4
specifiers:
  react-dom: ^17.0.0
dependencies:
  react-dom: 17.0.2_react@17.0.2
packages:
  /react-dom/17.0.2_react@17.0.2:
    dependencies:
      scheduler: 0.20.2
  /scheduler/0.20.2: {}
  /@types/node/20.1.0: {}
""")
    lock = read_lockfile(path)
    assert [(d.name, d.specifier, d.locked) for d in lock.importers["."]] == [("react-dom", "^17.0.0", "17.0.2")]
    assert lock.packages == {("react-dom", "17.0.2"), ("scheduler", "0.20.2"), ("@types/node", "20.1.0")}
    assert lock.via(("scheduler", "0.20.2")) == [["react-dom", "scheduler"]]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("pnpm-lock.yaml", "lockfileVersion: '9.0'\nimporters: [oops\n", "not valid YAML"),
    ("pnpm-lock.yaml", "just: text\n", "no lockfileVersion"),
    ("package-lock.json", "{not json", "not valid JSON"),
    ("yarn.lock", "# yarn", "neither a Yarn classic lockfile"),
    ("yarn.lock", "# yarn lockfile v1\n\nleft-pad@^1.0.0\n  version \"1.3.0\"\n", "expected `name@range:`"),
    ("bun.lock", '{"workspaces": {},}', "no lockfileVersion"),
    ("bun.lockb", "\x00binary", "binary lockfile"),
    ("shrinkwrap.yaml", "x: 1", "not a lockfile opskeeper reads"),
])  # fmt: skip
def test_unreadable_lockfile_names_path_and_reason(tmp_path: Path, name: str, text: str, message: str) -> None:
    """A lockfile that does not parse is one error with its path and the reason."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(LockfileError, match=message) as info:
        read_lockfile(path)
    assert str(info.value).startswith(str(path))

"""Lockfiles from real projects (tests/fixtures/pnpm and npm-audit), read the way pnpm and npm mean them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.dependencies import semver
from jobs.dependencies.lockfiles import LockfileError, read_lockfile
from tests.conftest import FIXTURES

PNPM = FIXTURES / "pnpm"
NPM = FIXTURES / "npm-audit"


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
      common:
        specifier: workspace:*
        version: link:../common
      react-dom:
        specifier: ^18.2.0
        version: 18.2.0(react@18.2.0)
packages:
  string-width@4.2.3: {}
  react-dom@18.2.0: {}
""")
    [alias, common, dom] = read_lockfile(path).importers["."]
    assert (common.name, common.source, common.locked) == ("common", "workspace", "link:../common")
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


def manifest_directs(folder: Path) -> dict[str, str]:
    """name -> specifier of every dependency a package.json declares, read straight from the file."""
    doc = json.loads((folder / "package.json").read_text(encoding="utf-8-sig"))
    groups = ("dependencies", "devDependencies", "optionalDependencies")
    return {n: s for g in groups for n, s in (doc.get(g) or {}).items()}


@pytest.mark.parametrize(("folder", "distinct"), [("yarn-v1/mern", 363), ("yarn-v1/mern/client", 1073),
                                                  ("yarn-v1/mern/server", 313), ("yarn-v1/hyper", 1218)])  # fmt: skip
def test_yarn_classic_directs_are_every_declared_dependency_with_its_locked_version(folder: str, distinct: int) -> None:
    """Yarn classic (and npm's all-quoted variant at mern's root): each declared dependency has the block's version."""
    lock = read_lockfile(FIXTURES / folder / "yarn.lock")
    directs = {d.name: d for d in lock.importers["."]}
    assert set(directs) == set(manifest_directs(FIXTURES / folder))
    assert all(semver.parse(d.locked) is not None for d in directs.values())
    assert len(lock.packages) == distinct


def test_yarn_classic_locked_version_is_the_entry_for_that_specifier() -> None:
    """`"debug@^2.2.0"` in the npm-written variant locks the version its own block names."""
    text = (FIXTURES / "yarn-v1/mern/yarn.lock").read_text()
    block = text.split('\n"nodemon@', 1)[1].split("\n\n", 1)[0]
    version = next(line.split('"')[3] for line in block.splitlines() if line.strip().startswith('"version"'))
    lock = read_lockfile(FIXTURES / "yarn-v1/mern/yarn.lock")
    assert next(d for d in lock.importers["."] if d.name == "nodemon").locked == version


def test_yarn_classic_github_shorthand_is_a_git_dependency_never_a_registry_package() -> None:
    """hyper's `chabou/mousetrap#useCapture` is source git, and mousetrap is not among the registry packages."""
    lock = read_lockfile(FIXTURES / "yarn-v1/hyper/yarn.lock")
    mousetrap = next(d for d in lock.importers["."] if d.name == "mousetrap")
    assert (mousetrap.source, mousetrap.locked) == ("git", "1.6.1")
    assert not any(name == "mousetrap" for name, _ in lock.registry_packages)


def test_yarn_berry_workspaces_and_patch_entries() -> None:
    """Yarn berry: one importer per workspace, `patch:` duplicates dropped, a dependency on a member is a workspace."""
    lock = read_lockfile(FIXTURES / "yarn-berry/slate/yarn.lock")
    assert sorted(lock.importers) == [".", "packages/slate", "packages/slate-dom", "packages/slate-history",
                                      "packages/slate-hyperscript", "packages/slate-react"]  # fmt: skip
    assert len(lock.packages) == 1624
    for folder, directs in lock.importers.items():
        declared = manifest_directs(FIXTURES / "yarn-berry/slate" / folder)
        assert {d.name for d in directs} == set(declared)
    hyperscript = {d.name: d for d in lock.importers["packages/slate-hyperscript"]}
    assert hyperscript["slate"].source == "workspace"
    assert all(semver.parse(d.locked) for d in hyperscript.values() if d.source == "registry")


def test_bun_lock_with_trailing_commas_and_nested_install_paths() -> None:
    """bun.lock: JSONC parsed, 1,012 distinct packages, a nested key is the copy its parent depends on."""
    lock = read_lockfile(FIXTURES / "bun/hono/bun.lock")
    assert len(lock.packages) == 1012
    assert {d.name for d in lock.importers["."]} == set(manifest_directs(FIXTURES / "bun/hono"))
    highlight = next(p for p in lock.packages if p[0] == "@babel/highlight")
    assert ("chalk", "2.4.2") in lock.edges[highlight]


def test_npm_workspaces_members_aliases_git_and_links() -> None:
    """npm workspaces: 13 importers (not the extraneous one), aliases resolve, git is git, members are workspace."""
    lock = read_lockfile(FIXTURES / "npm/workspaces-v3/package-lock.json")
    assert len(lock.importers) == 13
    assert "packages/socket.io-clustered-engine" not in lock.importers
    root = {d.name: d for d in lock.importers["."]}
    assert root["engine.io-client-v3"].package[0] == "engine.io-client"
    assert root["uWebSockets.js"].source == "git"
    assert ("uWebSockets.js", root["uWebSockets.js"].locked) not in lock.registry_packages
    client = {d.name: d for d in lock.importers["packages/socket.io-client"]}
    assert client["engine.io-client"].source == "workspace"
    assert len(lock.packages) == 1128


def test_pnpm_two_document_lockfile_with_catalogs() -> None:
    """pnpm 11+: the project document after the env document is read; `catalog:` becomes the catalog's range."""
    path = FIXTURES / "edge/pnpm-multi-document/pnpm-lock.yaml"
    lock = read_lockfile(path)
    assert (len(lock.importers), len(lock.packages)) == (215, 1678)
    catalog = yaml.safe_load_all(path.read_text())
    project = list(catalog)[-1]
    default = project["catalogs"]["default"]
    root = {d.name: d for d in lock.importers["."]}
    catalogued = [n for n, e in project["importers"]["."]["devDependencies"].items() if e["specifier"] == "catalog:"]
    assert catalogued
    assert all(root[n].specifier == default[n]["specifier"] for n in catalogued)
    assert root["node"].source == "runtime"


@pytest.mark.parametrize(("folder", "name", "source"), [
    ("edge/git-dependency", "uWebSockets.js", "git"), ("edge/git-dependency-npm", "uWebSockets.js", "git"),
    ("edge/tarball-url", "@emmetio/css-parser", "url"),
])  # fmt: skip
def test_git_and_tarball_dependencies_are_not_registry_packages(folder: str, name: str, source: str) -> None:
    """A git or tarball-URL dependency keeps its source and never counts as a registry package of that name."""
    path = next(p for p in (FIXTURES / folder).iterdir() if p.name in ("pnpm-lock.yaml", "package-lock.json"))
    lock = read_lockfile(path)
    direct = next(d for d in lock.importers["."] if d.name == name)
    assert direct.source == source
    assert not any(n == name for n, _ in lock.registry_packages)


def test_npm_alias_resolves_to_the_real_package() -> None:
    """`"express5": "npm:express@5"` is express 5.2.1; `"express": "latest-4"` stays express."""
    lock = read_lockfile(FIXTURES / "edge/npm-alias/package-lock.json")
    root = {d.name: d for d in lock.importers["."]}
    assert root["express5"].package == ("express", "5.2.1")
    assert root["express"].package[0] == "express"


def test_pnpm_lockfile_is_read_as_yaml_1_2(tmp_path: Path) -> None:
    """pnpm writes YAML 1.2 (js-yaml): packages named `on` and `yes` keep their names (YAML 1.1 made them
    booleans), and pnpm 11's two documents are both read."""
    path = tmp_path / "pnpm-lock.yaml"
    path.write_text("""---
lockfileVersion: '9.0'
importers:
  pnpm:
    version: 11.0.0
---
lockfileVersion: '9.0'
importers:
  .:
    dependencies:
      on:
        specifier: ^1.0.0
        version: 1.0.1
      yes:
        specifier: 2.0.0
        version: 2.0.0
packages:
  on@1.0.1: {}
  yes@2.0.0: {}
snapshots:
  on@1.0.1: {}
  yes@2.0.0: {}
""")
    lock = read_lockfile(path)
    assert sorted((d.name, d.specifier, d.locked) for d in lock.importers["."]) == [
        ("on", "^1.0.0", "1.0.1"), ("yes", "2.0.0", "2.0.0")]  # fmt: skip
    assert list(yaml.safe_load_all(path.read_text()))[1]["importers"]["."]["dependencies"].keys() == {True}


def test_a_duplicated_key_reads_as_it_always_has(tmp_path: Path) -> None:
    """A key twice (yaml-rs refuses it) is read by PyYAML as before: the last one stands, nothing is lost."""
    path = tmp_path / "pnpm-lock.yaml"
    path.write_text("lockfileVersion: '9.0'\nimporters:\n  .:\n    dependencies:\n"
                    "      cors: {specifier: ^2.8.0, version: 2.8.4}\n"
                    "      cors: {specifier: ^2.8.0, version: 2.8.5}\n")  # fmt: skip
    assert [(d.name, d.locked) for d in read_lockfile(path).importers["."]] == [("cors", "2.8.5")]

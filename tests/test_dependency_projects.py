"""Real projects that broke the dependency check: neighbours, workspaces, git and tarball deps, aliases, runtimes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.dependencies.outdated import update_kind
from tests.conftest import FIXTURES, ROOT, opskeeper
from tests.test_dependencies import LocalRegistry, copy_project, deps, local_registry

ROOT_PROJECTS = ROOT / "tests" / "fixtures" / "projects"


@pytest.fixture
def registry() -> Iterator[LocalRegistry]:
    with local_registry() as server:
        yield server


def advisory_names(registry: LocalRegistry) -> set[str]:
    """Every package name any bulk advisory request asked about."""
    return {name for body in registry.posted for name in body}


def test_folder_without_its_own_lockfile_never_gets_the_neighbours_dependencies(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """client/ with no lockfile under a root holding the server's lockfile: a named problem, not the server's list."""
    repo = tmp_path / "shop"
    shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", repo)
    (repo / ".git").mkdir()
    shutil.copy(FIXTURES / "pnpm" / "mern-v9" / "client" / "package.json", repo / "client-package.json")
    (repo / "client").mkdir()
    (repo / "client-package.json").rename(repo / "client" / "package.json")
    code, out = deps(env, registry, repo / "client")
    [report] = out["projects"]
    assert report["direct"] == []
    [problem] = report["problems"]
    assert "is another project's (it does not list client as a workspace member)" in problem
    assert code == 2


@pytest.mark.parametrize("member", ["packages/socket.io", "packages/socket.io-client"])
def test_npm_workspace_member_reports_its_own_dependencies(tmp_path: Path, env: dict[str, str],
                                                          registry: LocalRegistry, member: str) -> None:  # fmt: skip
    """An npm workspace member gets the dependencies its package.json declares, not the root's."""
    repo = copy_project(FIXTURES / "npm" / "workspaces-v3", tmp_path / "socket.io")
    _, out = deps(env, registry, repo / member)
    [report] = out["projects"]
    manifest = json.loads((repo / member / "package.json").read_text())
    declared = {n for g in ("dependencies", "devDependencies", "optionalDependencies") for n in manifest.get(g, {})}
    assert {d["name"] for d in report["direct"]} == declared
    assert report["problems"] == []


def test_importer_four_folders_deep_is_read(tmp_path: Path, env: dict[str, str], registry: LocalRegistry) -> None:
    """examples/react/basic (three levels) and a member moved four levels down both resolve to the root lockfile."""
    repo = copy_project(FIXTURES / "pnpm" / "large-workspace-v9", tmp_path / "query")
    _, out = deps(env, registry, repo / "examples" / "react" / "basic")
    assert {d["name"] for d in out["projects"][0]["direct"]} >= {"@tanstack/react-query", "react"}
    assert out["projects"][0]["problems"] == []


def test_an_auto_installed_optional_peer_is_not_a_direct_dependency(tmp_path: Path, env: dict[str, str],
                                                                   registry: LocalRegistry) -> None:  # fmt: skip
    """eslint-plugin-query declares typescript only as an optional peer; pnpm (autoInstallPeers) locks it beside its
    dependencies. As `pnpm outdated` sees it, typescript is not one of the member's direct dependencies."""
    repo = copy_project(FIXTURES / "pnpm" / "large-workspace-v9", tmp_path / "query")
    lockfile = (repo / "pnpm-lock.yaml").read_text()
    assert "      typescript:\n        specifier: ^5.6.0 || ^6.0.0 || ^7.0.0" in lockfile  # as pnpm wrote it
    _, out = deps(env, registry, repo / "packages" / "eslint-plugin-query")
    names = {d["name"] for d in out["projects"][0]["direct"]}
    assert "typescript" not in names
    assert {"@typescript-eslint/utils", "eslint"} <= names
    assert out["projects"][0]["drift"] == []


def test_the_root_dockerfiles_install_picks_the_lockfile_beside_a_stale_one(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """server/ holds package-lock.json beside a stale pnpm-lock.yaml, and the root Dockerfile says `cd server &&
    npm ci`: npm's lockfile is read, and the report says why; without that line pnpm's order wins, said as such."""
    repo = tmp_path / "shop"
    server = shutil.copytree(ROOT_PROJECTS / "mern-server-npm", repo / "server")
    shutil.copy2(FIXTURES / "pnpm" / "mern-v9" / "server" / "pnpm-lock.yaml", server / "pnpm-lock.yaml")
    (repo / ".git").mkdir()
    (repo / "Dockerfile").write_text("FROM node:22-slim\nWORKDIR /app\nCOPY . .\nRUN cd server && npm ci --omit=dev\n")
    _, out = deps(env, registry, server)
    [report] = out["projects"]
    assert (report["manager"], Path(report["lockfile"]).name) == ("npm", "package-lock.json")
    assert report["lockfile_why"] == "the root Dockerfile (in server) runs `npm ci`"
    (repo / "Dockerfile").write_text("FROM node:22-slim\nWORKDIR /app\nCOPY . .\n")
    _, out = deps(env, registry, server)
    assert out["projects"][0]["manager"] == "pnpm"
    assert "in opskeeper's order (pnpm, npm, yarn, bun)" in out["projects"][0]["lockfile_why"]


def test_git_and_tarball_dependencies_are_never_looked_up_or_sent_for_advisories(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """uWebSockets.js from git (pnpm and npm forms) and a GitHub tarball: reported by source, never asked about."""
    for folder in ("git-dependency", "git-dependency-npm", "tarball-url"):
        copy_project(FIXTURES / "edge" / folder, tmp_path / folder)
    result = opskeeper("deps", *(str(tmp_path / f) for f in ("git-dependency", "git-dependency-npm", "tarball-url")),
                       *registry.args(), "--json", env=env)  # fmt: skip
    assert "Traceback" not in result.stderr
    out = json.loads(result.stdout)
    sources = {(p["name"], d["name"]): d["source"] for p in out["projects"] for d in p["direct"]}
    assert sources[("git-dependency", "uWebSockets.js")] == "git"
    assert sources[("git-dependency-npm", "uWebSockets.js")] == "git"
    assert sources[("tarball-url", "@emmetio/css-parser")] == "url"
    asked = set(registry.asked)
    assert not {"uWebSockets.js", "@emmetio/css-parser"} & asked
    assert not any(name.startswith(("git", "http")) for name in asked)
    assert not {"uWebSockets.js", "@emmetio/css-parser"} & advisory_names(registry)


def test_workspace_names_are_not_sent_to_the_advisory_endpoint(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """A pnpm workspace's own packages (link:) are neither looked up nor sent in the bulk advisory request."""
    repo = copy_project(FIXTURES / "pnpm" / "large-workspace-v9", tmp_path / "query")
    _, out = deps(env, registry, repo / "packages" / "react-query")
    [report] = out["projects"]
    local = {d["name"] for d in report["direct"] if d["source"] == "workspace"}
    assert "@tanstack/query-core" in local
    assert not local & advisory_names(registry)
    assert not local & set(registry.asked)


def test_aliases_are_looked_up_under_the_real_package(tmp_path: Path, env: dict[str, str],
                                                      registry: LocalRegistry) -> None:  # fmt: skip
    """npm `express5: npm:express@5` asks for express (not express5) and gets a wanted 5.x."""
    project = copy_project(FIXTURES / "edge" / "npm-alias", tmp_path / "ultimate")
    _, out = deps(env, registry, project)
    express5 = next(d for d in out["projects"][0]["direct"] if d["name"] == "express5")
    assert express5["package"] == "express"
    assert express5["wanted"].startswith("5.")
    assert "express5" not in registry.asked
    assert "express" in registry.asked


def test_pnpm_alias_has_a_wanted_version(tmp_path: Path, env: dict[str, str], registry: LocalRegistry) -> None:
    """pnpm `typescript56: npm:typescript@5.6`: wanted is a 5.6.x of typescript, not null."""
    repo = copy_project(FIXTURES / "pnpm" / "large-workspace-v9", tmp_path / "query")
    record = {"etag": None, "doc": {"name": "typescript", "dist-tags": {"latest": "5.9.3"},
                                    "versions": {v: {} for v in ("5.6.2", "5.6.3", "5.7.3", "5.9.3")}}}  # fmt: skip
    assert not (FIXTURES / "registry" / "typescript.json").exists(), "typescript is this test's own"
    registry.documents["typescript"] = record
    _, out = deps(env, registry, repo)
    ts56 = next(d for d in out["projects"][0]["direct"] if d["name"] == "typescript56")
    assert (ts56["package"], ts56["wanted"]) == ("typescript", "5.6.3")


@pytest.mark.slow
def test_engines_range_satisfied_by_supported_lines_is_not_a_false_eol(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """engines `>= 20.4.0` and `^20.19.0 || >=22.12.0`: not EOL, and the report names the lines that satisfy it."""
    for spec in (">= 20.4.0", "^20.19.0 || >=22.12.0"):
        project = copy_project(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / f"server{len(spec)}")
        manifest = json.loads((project / "package.json").read_text())
        (project / "package.json").write_text(json.dumps({**manifest, "engines": {"node": spec}}))
        _, out = deps(env, registry, project)
        node = out["projects"][0]["node"]
        assert node["status"] != "eol", spec
        assert 22 in node["lines"]


def test_root_dockerfile_counts_for_client_and_server(tmp_path: Path, env: dict[str, str],
                                                      registry: LocalRegistry) -> None:  # fmt: skip
    """A root `FROM node:18-alpine` builds client/ and server/: both report Node.js 18 past its end of life."""
    repo = tmp_path / "shop"
    shutil.copytree(FIXTURES / "pnpm" / "mern-v9", repo)
    (repo / ".git").mkdir()
    (repo / "Dockerfile").write_text("FROM node:18-alpine\nWORKDIR /app\nCOPY . .\nRUN cd server && pnpm install\n")
    code, out = deps(env, registry, repo / "client", repo / "server")
    for report in out["projects"]:
        assert (report["node"]["line"], report["node"]["status"]) == (18, "eol")
        assert report["node"]["declared"] == "18-alpine (./Dockerfile FROM node)"
    assert code == 2


def test_package_json_with_a_bom(tmp_path: Path, env: dict[str, str], registry: LocalRegistry) -> None:
    """A package.json saved with a UTF-8 byte-order mark is read like any other."""
    project = copy_project(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    (project / "package.json").write_bytes(b"\xef\xbb\xbf" + (project / "package.json").read_bytes())
    _, out = deps(env, registry, project)
    assert out["projects"][0]["problems"] == []
    assert out["projects"][0]["direct"]


@pytest.mark.parametrize("folder", ["yarn-v1/mern/server", "yarn-v1/mern", "yarn-berry/slate", "bun/hono"])
def test_yarn_and_bun_projects_are_checked(tmp_path: Path, env: dict[str, str], registry: LocalRegistry,
                                           folder: str) -> None:  # fmt: skip
    """yarn.lock (classic, npm's quoted variant, berry) and bun.lock projects report their direct dependencies."""
    project = copy_project(FIXTURES / folder, tmp_path / "project")
    _, out = deps(env, registry, project)
    [report] = out["projects"]
    assert report["problems"] == []
    assert report["manager"] == ("bun" if folder.startswith("bun") else "yarn")
    assert report["direct"]
    assert report["drift"] == []


def test_stale_package_lock_used_by_npm_ci_is_drift_naming_the_package(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """A stale package-lock.json its Dockerfile installs with `npm ci` (which would fail): drift naming the package."""
    project = copy_project(ROOT_PROJECTS / "multer-lts", tmp_path / "server")
    manifest = json.loads((project / "package.json").read_text())
    manifest["dependencies"]["helmet"] = "^7.1.0"
    (project / "package.json").write_text(json.dumps(manifest, indent=2))
    (project / "Dockerfile").write_text("FROM node:22-alpine\nCOPY . .\nRUN npm ci --omit=dev\n")
    code, out = deps(env, registry, project)
    [report] = out["projects"]
    assert report["manager"] == "npm"
    assert report["drift"] == ["helmet (^7.1.0) is in package.json but not in package-lock.json"]
    assert code == 2  # multer's advisories fail it; the drift is in the summary
    result = opskeeper("deps", str(project), *registry.args(), "--fail-on", "critical", env=env)
    assert "lockfile out of step with package.json (1): helmet (^7.1.0)" in result.stdout
    assert result.code == 1


def test_two_lockfiles_that_disagree_are_named(tmp_path: Path, env: dict[str, str], registry: LocalRegistry) -> None:
    """A folder with package-lock.json and a yarn.lock locking express differently: both versions named."""
    project = copy_project(ROOT_PROJECTS / "multer-lts", tmp_path / "server")
    lock = json.loads((project / "package-lock.json").read_text())
    express = lock["packages"]["node_modules/express"]["version"]
    (project / "yarn.lock").write_text(
        '# yarn lockfile v1\n\n\nexpress@^4.21.2:\n  version "4.21.2"\n'
        '  resolved "https://registry.yarnpkg.com/express/-/express-4.21.2.tgz"\n\n'
        'multer@^1.4.5-lts.2:\n  version "1.4.5-lts.2"\n'
        '  resolved "https://registry.yarnpkg.com/multer/-/multer-1.4.5-lts.2.tgz"\n'
    )
    (project / "Dockerfile").write_text("FROM node:22\nRUN npm ci\n")
    assert express != "4.21.2"  # npm locked the newest 4.x
    _, out = deps(env, registry, project)
    assert out["projects"][0]["drift"] == [f"package-lock.json and yarn.lock disagree: express (package-lock.json "
                                           f"{express}, yarn.lock 4.21.2)"]  # fmt: skip


@pytest.mark.parametrize(("locked", "latest", "kind"), [("0.4.1", "0.5.0", "major"), ("0.0.3", "0.0.4", "major"),
                                                        ("0.4.1", "0.4.2", "patch"), ("1.4.0", "1.5.0", "minor"),
                                                        ("1.4.5-lts.2", "2.5.0", "major")])  # fmt: skip
def test_zero_major_updates_are_breaking(locked: str, latest: str, kind: str) -> None:
    """0.4 -> 0.5 and 0.0.3 -> 0.0.4 are outside a caret range, so they are majors."""
    assert update_kind(locked, latest) == kind


def test_latest_that_needs_a_newer_node_is_flagged(tmp_path: Path, env: dict[str, str],
                                                   registry: LocalRegistry) -> None:  # fmt: skip
    """A direct dependency whose latest release needs a newer Node.js than the project runs is named."""
    project = copy_project(ROOT_PROJECTS / "multer-lts", tmp_path / "server")
    (project / ".nvmrc").write_text("v8.17.0\n")  # multer 2.x needs >= 10.16.0
    _, out = deps(env, registry, project)
    multer = next(d for d in out["projects"][0]["direct"] if d["name"] == "multer")
    assert multer["latest_needs_node"] == ">= 10.16.0"


def test_recursive_checks_every_importer_asking_for_each_document_once(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """`deps -r` on a 102-importer workspace: one report per importer, each package document fetched once."""
    repo = copy_project(FIXTURES / "pnpm" / "large-workspace-v9", tmp_path / "query")
    result = opskeeper("deps", "-r", str(repo), *registry.args(), "--json", env=env, timeout=300)
    out: dict[str, Any] = json.loads(result.stdout)
    assert len(out["projects"]) == 102
    assert len(registry.asked) == len(set(registry.asked))
    assert len(registry.posted) == 1
    assert all(p["drift"] == [] and p["problems"] == [] for p in out["projects"])

"""npm's configuration and npm's choice of versions, checked against npm itself where it can run."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from jobs.dependencies.job import check_projects
from jobs.dependencies.npmrc import NpmConfig, expand, nerf, parse_npmrc, read_npm_config
from jobs.dependencies.options import DependenciesOptions, Project
from jobs.dependencies.outdated import pick
from jobs.updates.planner import PlanError, plan
from tests.conftest import FIXTURES, SentryReceiver, opskeeper, write
from tests.fixtures.registry_standin import RECORDED, PrivateRegistry, ReplayRegistry
from tests.test_semver import needs_node, npm_semver

TOKEN = "npm_PrivateT0kenFor4cme"


def test_expansion_is_npms() -> None:
    """${VAR} from the environment, ${VAR?} empty when unset, an unset ${VAR} left as written, \\${VAR} escaped."""
    env = {"NPM_TOKEN": "abc"}
    assert expand("//h/:_authToken=${NPM_TOKEN}", env) == "//h/:_authToken=abc"
    assert expand("${MISSING}", env) == "${MISSING}"
    assert expand("x${MISSING?}y", env) == "xy"
    assert expand("\\${NPM_TOKEN}", env) == "${NPM_TOKEN}"
    assert expand("\\\\${NPM_TOKEN}", env) == "\\abc"


def test_an_npmrc_reads_as_npm_reads_it() -> None:
    """Comments and sections skipped, quotes dropped, bare keys true, `key[]=` joined, keys expanded too."""
    text = (
        '; comment\n# another\n[section]\nregistry = "https://r.example/"\nlegacy-peer-deps\n'
        "min-release-age-exclude[]=@acme/*\nmin-release-age-exclude[]=left-pad\n//${HOST}/:_authToken=t\n"
    )
    found = parse_npmrc(text, {"HOST": "npm.acme.dev"})
    assert found == {
        "registry": "https://r.example/",
        "legacy-peer-deps": "true",
        "min-release-age-exclude": "@acme/*\nleft-pad",
        "//npm.acme.dev/:_authToken": "t",
    }


def test_credentials_go_only_to_the_registry_they_are_keyed_to() -> None:
    """The longest `//host/path/` key wins, a path prefix counts, and another host gets no Authorization."""
    config = NpmConfig(
        {
            "//npm.acme.dev/:_authToken": "host",
            "//npm.acme.dev/team/:_authToken": "team",
            "//basic.example/:username": "u",
            "//basic.example/:_password": "cGFzcw==",
        }
    )
    assert nerf("https://npm.acme.dev:8443/x?y") == "//npm.acme.dev:8443/x/"
    assert config.auth_headers("https://npm.acme.dev/@acme%2fw") == {"Authorization": "Bearer host"}
    assert config.auth_headers("https://npm.acme.dev/team/@acme%2fw") == {"Authorization": "Bearer team"}
    assert config.auth_headers("https://registry.npmjs.org/express") == {}
    assert config.auth_headers("https://npm.acme.dev.evil.example/") == {}
    assert config.auth_headers("https://basic.example/p") == {"Authorization": "Basic dTpwYXNz"}  # u:pass
    assert sorted(config.secrets) == ["cGFzcw==", "host", "team"]


def test_sources_in_npms_order(tmp_path: Path) -> None:
    """The user's .npmrc, then the project's, then npm_config_* variables; scopes pick their registry."""
    (tmp_path / "home").mkdir()
    (tmp_path / "app").mkdir()
    write(tmp_path / "home" / ".npmrc", "registry=https://user.example/\nsave-exact=true\nlegacy-peer-deps=true\n")
    write(tmp_path / "app" / ".npmrc", "registry=https://project.example/\n@acme:registry=https://npm.acme.dev/\n")
    config = read_npm_config(tmp_path / "app", {"HOME": str(tmp_path / "home"), "npm_config_legacy_peer_deps": "false",
                                                "NPM_CONFIG_ENGINE_STRICT": "true"})  # fmt: skip
    assert config.registry == "https://project.example/"
    assert config.registry_for("@acme/widgets") == "https://npm.acme.dev/"
    assert config.registry_for("@other/x") == "https://project.example/"
    assert (config.flag("save-exact"), config.flag("legacy-peer-deps"), config.flag("engine-strict")) == (
        True, False, True)  # fmt: skip
    assert config.files == (str(tmp_path / "home" / ".npmrc"), str(tmp_path / "app" / ".npmrc"))


def test_release_age_cutoffs(tmp_path: Path) -> None:
    """min-release-age in days, `before` winning over it, excluded packages, pnpm's minimumReleaseAge in minutes."""
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert NpmConfig({"min-release-age": "7"}).before(now) == datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert NpmConfig({"min-release-age": "7", "before": "2025-01-01"}).before(now) == datetime(2025, 1, 1, tzinfo=UTC)
    assert NpmConfig({"min-release-age": "7", "min-release-age-exclude": "@acme/*"}).before(now, "@acme/w") is None
    write(tmp_path / "pnpm-workspace.yaml", "packages: ['.']\nminimumReleaseAge: 1440\n")
    assert read_npm_config(tmp_path, {"HOME": str(tmp_path)}).before(now) == datetime(2026, 12, 2, 12, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"min-release-age='a week': not a number of days"):
        NpmConfig({"min-release-age": "a week"}).before(now)


# --- npm's choice of a version, against npm-pick-manifest itself ----------------------------------------------


def _npm_module(name: str) -> Path:
    module = npm_semver()
    assert module is not None
    return module.parent / name


PICK_PROBE = """
const fs = require('fs'), zlib = require('zlib');
const pick = require(process.argv[1]);
const cases = JSON.parse(fs.readFileSync(0, 'utf8'));
const out = [];
const docs = {};
for (const [file, spec, node, before] of cases) {
  const doc = docs[file] || (docs[file] = JSON.parse(zlib.gunzipSync(fs.readFileSync(file))));
  try {
    const m = pick(doc, spec, {nodeVersion: node, before: before});
    out.push(m ? m.version : null);
  } catch (e) { out.push(null); }
}
process.stdout.write(JSON.stringify(out));
"""


@needs_node
def test_pick_agrees_with_npm_pick_manifest_on_every_recorded_document() -> None:
    """For each recorded registry document: `*`, the latest major's caret and a dist-tag, at Node.js 18, 20 and 24,
    with and without a `before` cutoff, pick the version npm's own npm-pick-manifest picks."""
    from worker.vendors.npm import trim

    cases: list[tuple[str, str, str | None, str | None]] = []
    docs = {}
    for path in sorted(RECORDED.glob("*.json.gz")):
        doc = json.loads(gzip.decompress(path.read_bytes()))
        latest = (doc.get("dist-tags") or {}).get("latest")
        if not latest or not doc.get("versions"):
            continue
        docs[str(path)] = trim(doc)
        for spec in ("*", f"^{latest.split('.')[0]}.0.0", "latest"):
            for node in ("18.0.0", "20.20.2", "24.11.0"):
                for before in (None, "2025-06-01T00:00:00Z"):
                    cases.append((str(path), spec, node, before))
    proc = subprocess.run(["node", "-e", PICK_PROBE, str(_npm_module("npm-pick-manifest"))], input=json.dumps(cases),
                          capture_output=True, text=True, check=True)  # fmt: skip
    theirs = json.loads(proc.stdout)
    assert len(cases) > 5000
    differ = []
    for (file, spec, node, before), answer in zip(cases, theirs, strict=True):
        cutoff = datetime.fromisoformat(before) if before else None
        ours = pick(docs[file], spec, node=node, before=cutoff)
        if ours != answer:
            differ.append((Path(file).name, spec, node, before, ours, answer))
    assert differ == []
    engine_aware = [c for c, a in zip(cases, theirs, strict=True) if c[1] == "*" and c[3] is None
                    and a != json.loads(gzip.decompress(Path(c[0]).read_bytes()))["dist-tags"]["latest"]]  # fmt: skip
    assert len(engine_aware) > 20  # the table does exercise npm's engine rule, not only the dist-tag


@pytest.mark.slow
@needs_node
def test_wanted_and_latest_agree_with_npm_outdated_on_a_real_project(tmp_path: Path, env: dict[str, str]) -> None:
    """Hyper's app (a real project): `opskeeper deps` at the Node.js npm runs on gives `npm outdated`'s own
    wanted and latest for every package npm lists, chokidar's engine-aware latest (5.x, not 6.0.0) among them."""
    project = shutil.copytree(FIXTURES / "yarn-v1" / "hyper" / "app", tmp_path / "app")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    (project / ".nvmrc").write_text(node.lstrip("v") + "\n")
    with ReplayRegistry() as registry:
        npm_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "npm_config_cache": str(tmp_path / "c")}
        npm = subprocess.run(["npm", "outdated", "--json", f"--registry={registry.url}"], cwd=project, env=npm_env,
                             capture_output=True, text=True, check=False)  # fmt: skip
        theirs = json.loads(npm.stdout)
        result = opskeeper("deps", str(project), "--json", "--registry", registry.url, "--node-index",
                           f"{registry.url}-/none", env=env)  # fmt: skip
    ours = {d["name"]: d for d in json.loads(result.stdout)["projects"][0]["direct"]}
    assert len(theirs) >= 20
    assert {n: (v["wanted"], v["latest"]) for n, v in theirs.items()} == {
        n: (ours[n]["wanted"], ours[n]["latest"]) for n in theirs}  # fmt: skip
    assert theirs["chokidar"]["latest"] == "5.0.0"
    assert ours["chokidar"]["newest"] == "6.0.0"
    assert "needs Node.js" in ours["chokidar"]["newest_skipped"]


def test_a_version_younger_than_min_release_age_is_not_wanted(tmp_path: Path) -> None:
    """With min-release-age 30 on 2026-10-01, express 4.22.3 (published 2026-09-14) is not wanted for ^4.19.2 and
    5.3.0 is not latest: 4.22.2 and 5.2.1 are, as npm picks them, and the report says why 5.3.0 was passed over."""
    project = shutil.copytree(FIXTURES / "projects" / "mern-server-npm", tmp_path / "server")
    (project / ".npmrc").write_text("min-release-age=30\n")
    with ReplayRegistry() as registry:
        options = DependenciesOptions(
            projects=(Project(name="server", path=str(project)),),
            registry=registry.url,
            node_index=f"{registry.url}-/none",
            node_schedule=f"{registry.url}-/none",
        )
        checked = asyncio.run(check_projects(options, tmp_path, {}, date(2026, 10, 1), environ={"HOME": str(tmp_path)},
                                             now=datetime(2026, 10, 1, tzinfo=UTC)))  # fmt: skip
    report = checked.reports[0]
    express = next(d for d in report.direct if d["name"] == "express")
    assert (express["wanted"], express["latest"]) == ("4.22.2", "5.2.1")
    assert express["newest"] == "5.3.0"
    assert "after the release-age cutoff 2026-09-01" in express["newest_skipped"]
    assert report.npm is not None
    assert report.npm["before"] == "2026-09-01T00:00:00+00:00"


# --- .npmrc where the package manager runs ---------------------------------------------------------------------


@pytest.mark.slow
def test_legacy_peer_deps_in_the_npmrc_lets_the_plan_succeed(tmp_path: Path) -> None:
    """eslint 9 beside eslint-plugin-react-hooks 4: npm refuses the tree (ERESOLVE) unless the project's .npmrc
    says legacy-peer-deps=true; the plan honours the project's own line."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: apt-get install nodejs npm (as root)")
    project = shutil.copytree(FIXTURES / "projects" / "legacy-peers", tmp_path / "app")
    with ReplayRegistry() as registry:
        result = plan("app", project, registry.url)
        assert result.manager == "npm"
        (project / ".npmrc").unlink()
        with pytest.raises(PlanError, match="ERESOLVE"):
            plan("app", project, registry.url)


def _private_project(tmp_path: Path, private: PrivateRegistry, public: ReplayRegistry) -> Path:
    """A project of the public on-headers 1.0.2 (which has an advisory) and the private @acme/ms, locked by the
    real npm through its .npmrc (a scoped registry, its token from ${NPM_TOKEN})."""
    project = tmp_path / "app"
    project.mkdir()
    write(
        project / "package.json",
        json.dumps(
            {
                "name": "app",
                "version": "1.0.0",
                "private": True,
                "dependencies": {"@acme/ms": "^2.1.0", "on-headers": "1.0.2"},
            }
        ),
    )
    port = private.url.split(":")[2].rstrip("/")
    write(project / ".npmrc", f"@acme:registry={private.url}\n//127.0.0.1:{port}/:_authToken=${{NPM_TOKEN}}\n")
    npm_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "npm_config_cache": str(tmp_path / "c"),
               "NPM_TOKEN": TOKEN}  # fmt: skip
    subprocess.run(["npm", "install", "--package-lock-only", "--ignore-scripts", "--no-audit", "--no-fund",
                    f"--registry={public.url}"], cwd=project, env=npm_env, check=True, capture_output=True)  # fmt: skip
    return project


@pytest.mark.slow
def test_a_private_scoped_registry_gets_its_token_and_no_one_else_does(tmp_path: Path, env: dict[str, str],
                                                                       sentry: SentryReceiver) -> None:  # fmt: skip
    """A dependencies run on a project whose @acme packages live behind a token (.npmrc, ${NPM_TOKEN}): the private
    registry answers for @acme/ms, the public one never sees the token, and the token is in no log line, no run
    record and no Sentry event (the run's advisory notice reaches Sentry)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: apt-get install nodejs npm (as root)")
    with PrivateRegistry(TOKEN) as private, ReplayRegistry() as public:
        project = _private_project(tmp_path, private, public)
        private.asked.clear()
        config = write(tmp_path / "jobs.yaml", "jobs:\n  - id: deps\n    kind: dependencies\n    schedule: '@daily'\n"
                       f"    options:\n      registry: {public.url}\n      node_index: {public.url}-/none\n"
                       f"      node_schedule: {public.url}-/none\n"
                       f"      projects: [{{name: app, path: {project}}}]\n")  # fmt: skip
        result = opskeeper("run-now", "deps", "--config", str(config), "--json",
                           env={**env, "NPM_TOKEN": TOKEN, "SENTRY_DSN": sentry.dsn})  # fmt: skip
        events = sentry.wait_items("event", 1)
    out = json.loads(result.stdout)
    direct = {d["name"]: d for d in out["details"]["projects"][0]["direct"]}
    assert direct["@acme/ms"]["latest"] == "2.1.3"
    assert private.asked == ["@acme/ms"]
    assert private.refused == []
    assert public.authorizations == []
    assert out["details"]["projects"][0]["npm"]["scopes"] == {"@acme": private.url}
    assert any("on-headers" in json.dumps(e) for e in events)
    ledger = subprocess.run(["sqlite3", env["OPSKEEPER_LEDGER"], ".dump"], capture_output=True, text=True,
                            check=False).stdout if shutil.which("sqlite3") else ""  # fmt: skip
    for text in (result.stdout, result.stderr, json.dumps(events), ledger, Path(env["OPSKEEPER_LEDGER"]).read_bytes()
                 .decode("latin-1")):  # fmt: skip
        assert TOKEN not in text


@pytest.mark.slow
def test_the_plan_reaches_the_private_registry_with_the_projects_npmrc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dependency_updates' npm, in its scratch copy, fetches @acme/ms from the private registry with the token the
    project's .npmrc expands from ${NPM_TOKEN} (the child's environment holds no token); without NPM_TOKEN the
    private registry refuses and the plan fails naming it."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: apt-get install nodejs npm (as root)")
    with PrivateRegistry(TOKEN) as private, ReplayRegistry() as public:
        project = _private_project(tmp_path, private, public)
        private.asked.clear()
        monkeypatch.setenv("NPM_TOKEN", TOKEN)
        result = plan("app", project, public.url)
        assert "@acme/ms" in private.asked
        assert {u["name"] for u in result.updates} <= {"@acme/ms", "on-headers"}
        assert public.authorizations == []
        monkeypatch.delenv("NPM_TOKEN")
        with pytest.raises(PlanError, match=r"E401|401"):
            plan("app", project, public.url)
    assert (project / ".npmrc").read_text().count("${NPM_TOKEN}") == 1  # the project's own file is untouched


def test_without_the_token_the_private_registry_is_a_named_gap(tmp_path: Path) -> None:
    """NPM_TOKEN unset: ${NPM_TOKEN} stays as written, the private registry refuses, and the report says which
    package could not be fetched and that the credentials were refused, while the public packages are checked."""
    with PrivateRegistry(TOKEN) as private, ReplayRegistry() as public:
        project = tmp_path / "app"
        project.mkdir()
        write(project / "package.json", json.dumps({"name": "app", "dependencies": {"@acme/ms": "^2.1.0",
                                                                                    "ms": "^2.1.0"}}))  # fmt: skip
        write(project / "package-lock.json", json.dumps({"name": "app", "lockfileVersion": 3, "packages": {
            "": {"dependencies": {"@acme/ms": "^2.1.0", "ms": "^2.1.0"}},
            "node_modules/@acme/ms": {"version": "2.1.3", "resolved": f"{private.url}@acme/ms/-/ms-2.1.3.tgz"},
            "node_modules/ms": {"version": "2.1.3"}}}))  # fmt: skip
        port = private.url.split(":")[2].rstrip("/")
        write(project / ".npmrc", f"@acme:registry={private.url}\n//127.0.0.1:{port}/:_authToken=${{NPM_TOKEN}}\n")
        options = DependenciesOptions(
            projects=(Project(name="app", path=str(project)),),
            registry=public.url,
            node_index=f"{public.url}-/none",
            node_schedule=f"{public.url}-/none",
        )
        checked = asyncio.run(check_projects(options, tmp_path, {}, date(2026, 12, 3), environ={"HOME": str(tmp_path)}))
    direct: dict[str, Any] = {d["name"]: d for d in checked.reports[0].direct}
    assert direct["ms"]["latest"] == "2.1.3"
    assert direct["@acme/ms"]["latest"] is None
    gap = next(g for g in checked.gaps if g["source"] == "registry")
    assert "@acme/ms" in gap["error"]
    assert "credentials .npmrc keys to this registry rejected (HTTP 401)" in gap["error"]

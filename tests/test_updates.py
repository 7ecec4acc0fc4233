"""Updates computed by the real pnpm and npm, in lockfile-only mode, against recorded registry documents."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.updates.planner import PlanError, plan
from tests.conftest import FIXTURES, ROOT, Proxy, opskeeper, write
from tests.fixtures.registry_standin import ReplayRegistry

TOOLS = ROOT / "var" / "tools" / "node_modules" / ".bin"


@pytest.fixture
def registry() -> Iterator[ReplayRegistry]:
    with ReplayRegistry() as server:
        yield server


def on_path(monkeypatch: pytest.MonkeyPatch, tool: str) -> None:
    """The package managers `make tools` installs under var/tools first on PATH; skip, naming how to get `tool`,
    when it is not there (make tools needs npm, which only root can install here)."""
    if TOOLS.is_dir():
        monkeypatch.setenv("PATH", f"{TOOLS}{os.pathsep}{os.environ['PATH']}")
    if shutil.which(tool) is None:
        enable = "make tools" if shutil.which("npm") else "apt-get install nodejs npm (as root), then make tools"
        pytest.skip(f"{tool} is not installed: {enable}")


@pytest.fixture
def with_pnpm(monkeypatch: pytest.MonkeyPatch) -> None:
    on_path(monkeypatch, "pnpm")


@pytest.fixture
def with_yarn(monkeypatch: pytest.MonkeyPatch) -> None:
    on_path(monkeypatch, "yarn")


def updates_job(tmp_path: Path, **options: Any) -> Path:
    """A schedule of one dependency_updates job, `monthly-updates`, with these options (as JSON, which YAML reads)."""
    return write(tmp_path / "jobs.yaml", "jobs:\n  - id: monthly-updates\n    kind: dependency_updates\n"
                 f'    schedule: "0 7 1 * *"\n    options: {json.dumps(options)}\n')  # fmt: skip


def run_now(config: Path, env: dict[str, str], **secrets: str) -> dict[str, Any]:
    """`run-now monthly-updates --json` with the package managers on PATH and `secrets` in the environment; the
    outcome it prints, having checked that none of the secrets is in anything it printed."""
    result = opskeeper("run-now", "monthly-updates", "--config", str(config), "--json", timeout=300,
                       env={**env, "PATH": os.environ["PATH"], **secrets})  # fmt: skip
    assert all(value not in result.stdout + result.stderr for value in secrets.values())
    assert result.stdout.startswith("{"), result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_dry_run_plans_in_range_updates_only_and_leaves_the_project_as_it_was(
    tmp_path: Path, registry: ReplayRegistry, with_pnpm: None
) -> None:
    """Real pnpm on the MERN server: express 4.21.2 moves within 4.x (never 5), and no project file changes."""
    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    before = digest(project)
    result = plan("server", project, registry.url)
    updates = {u["name"]: u for u in result.updates}
    assert updates["express"]["from"] == "4.21.2"
    assert updates["express"]["to"].startswith("4.")
    assert all(u["kind"] != "major" for u in result.updates)
    assert digest(project) == before
    assert b"express@" + updates["express"]["to"].encode() in result.new_lockfile


def test_a_project_pinning_another_pnpm_is_planned_by_the_pnpm_on_path(
    tmp_path: Path, registry: ReplayRegistry, with_pnpm: None
) -> None:
    """`packageManager: pnpm@9.15.0` does not send the pnpm on PATH (12.x) to the registry for pnpm 9 first (it
    did while only npm_config_manage_package_manager_versions said not to: pnpm 11+ reads pnpm_config_pm_on_fail)."""
    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    manifest = json.loads((project / "package.json").read_text())
    (project / "package.json").write_text(json.dumps({**manifest, "packageManager": "pnpm@9.15.0"}))
    result = plan("server", project, registry.url)
    assert "express" in {u["name"] for u in result.updates}
    assert "pnpm" not in registry.asked


def test_ignored_packages_stay_where_they_are(tmp_path: Path, registry: ReplayRegistry, with_pnpm: None) -> None:
    """`ignore: [mongoose]`: mongoose keeps its locked version while the others move."""
    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    result = plan("server", project, registry.url, ignore=["mongoose"])
    names = {u["name"] for u in result.updates}
    assert "mongoose" not in names
    assert "express" in names


def test_a_workspace_is_planned_with_its_members_and_never_loses_one(
    tmp_path: Path, registry: ReplayRegistry, with_pnpm: None
) -> None:
    """A pnpm workspace (client and server as members): both members' updates are planned, named by member, and the
    new lockfile keeps every importer; a member the package manager would drop makes the plan fail, not a PR."""
    project = shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "mern-workspace", tmp_path / "shop")
    result = plan("shop", project, registry.url)
    assert result.before is not None
    assert result.after is not None
    assert set(result.after.importers) == set(result.before.importers) == {".", "client", "server"}
    members = {(u["importer"], u["name"]) for u in result.updates}
    assert ("server", "express") in members
    assert "client" in {importer for importer, _ in members}
    (project / "server" / "package.json").unlink()  # the lockfile still lists server
    with pytest.raises(PlanError, match=r"shop: pnpm update wrote a lockfile without server"):
        plan("shop", project, registry.url)


def test_a_missing_package_manager_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pnpm on PATH the error names pnpm and how to get it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    with pytest.raises(PlanError, match=r"server: pnpm is not on PATH"):
        plan("server", project, "http://127.0.0.1:9/")


def test_dependency_updates_job_dry_run_through_run_now(tmp_path: Path, env: dict[str, str], registry: ReplayRegistry,
                                                        with_pnpm: None) -> None:  # fmt: skip
    """`run-now` of a dry run: WARN with the plan in the details, nothing changed in the project."""
    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    before = digest(project)
    out = run_now(updates_job(tmp_path, registry=registry.url, projects=[{"name": "server", "path": str(project)}]),
                  env)  # fmt: skip
    assert out["status"] == "warn", out
    [server] = out["details"]["projects"]
    express = next(u for u in server["updates"] if u["name"] == "express")
    assert (express["from"], express["to"][:2]) == ("4.21.2", "4.")
    assert out["summary"].startswith(f"server: {len(server['updates'])} update(s) (")
    assert digest(project) == before


def test_unreachable_advisory_sources_are_a_named_gap_not_a_failure(tmp_path: Path, env: dict[str, str],
                                                                     registry: ReplayRegistry,
                                                                     with_pnpm: None) -> None:  # fmt: skip
    """The bulk advisory endpoint answering 405 and OSV unreachable: the plan stands, the run is WARN (not FAIL) and
    names what was not checked; nothing is called a problem in the project."""
    registry.bulk_status = 405
    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    out = run_now(updates_job(tmp_path, registry=registry.url, osv_url="http://127.0.0.1:9/osv",
                              projects=[{"name": "server", "path": str(project)}]), env)  # fmt: skip
    assert out["status"] == "warn", out
    assert out["details"]["problems"] == []
    [registry_gap, osv_gap] = out["details"]["not_checked"]
    assert registry_gap.startswith("server: advisories not checked: advisories (registry): ")
    assert "HTTP 405" in registry_gap
    assert osv_gap.startswith("server: advisories not checked: advisories (osv): ")
    assert "server: advisories not checked: advisories (registry)" in out["summary"]
    [server] = out["details"]["projects"]
    assert any(u["name"] == "express" for u in server["updates"])


def test_pull_request_mode_needs_projects_on_github(tmp_path: Path, env: dict[str, str]) -> None:
    """A local project cannot become a pull request: validation says which project and what it needs."""
    config = updates_job(tmp_path, mode="pull_request", projects=[{"name": "server", "path": "server"}])
    result = opskeeper("validate", "--config", str(config), env=env)
    assert result.code == 78
    assert "project(s) server need github: {repo, ref, path}" in result.stderr


def test_validate_warns_when_no_package_manager_is_on_path(tmp_path: Path, env: dict[str, str]) -> None:
    """`validate` without pnpm, npm or yarn on PATH still passes, and names the missing tools and the image flag."""
    config = updates_job(tmp_path, projects=[{"name": "server", "path": "server"}])
    bare = tmp_path / "bin"
    bare.mkdir()
    result = opskeeper("validate", "--config", str(config), env={**env, "PATH": str(bare)})
    assert result.code == 0, result.stderr
    assert "WARNING: job 'monthly-updates' (dependency_updates): none of pnpm, npm, yarn is on PATH" in result.stderr
    assert "OPSKEEPER_WITH_NODE=true" in result.stderr
    with_npm = opskeeper("validate", "--config", str(config), env={**env, "PATH": os.environ["PATH"]})
    assert with_npm.code == 0
    assert "WARNING" not in with_npm.stderr


def test_validate_names_the_project_whose_own_manager_is_missing(tmp_path: Path, env: dict[str, str]) -> None:
    """A local pnpm project on a machine with npm but no pnpm: `validate` names the project, its manager and that
    the job cannot run here; npm being there does not hide it."""
    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    config = updates_job(tmp_path, projects=[{"name": "server", "path": str(project)}])
    npm_only = tmp_path / "bin"
    npm_only.mkdir()
    (npm_only / "npm").symlink_to("/bin/true")
    result = opskeeper("validate", "--config", str(config), env={**env, "PATH": str(npm_only)})
    assert result.code == 0, result.stderr
    assert result.stderr.strip() == (
        "WARNING: job 'monthly-updates' (dependency_updates): project server installs with pnpm (its lockfile), and "
        "pnpm is not on PATH: this job cannot run on this machine (in the Docker image: build it with "
        "OPSKEEPER_WITH_NODE=true)"
    )


@pytest.fixture
def github() -> Iterator[Any]:
    from tests.fixtures.github_standin import GitHubStandIn

    server = GitHubStandIn()
    files = {f"server/{p.name}": p.read_bytes() for p in (FIXTURES / "pnpm" / "mern-v9" / "server").iterdir()
             if p.is_file()}  # fmt: skip
    # An old runtime, so the pull request can say which updates need a newer Node.js.
    server.repo("acme/shop").seed("main", {**files, "server/.nvmrc": b"14.21.3\n", "README.md": b"# shop\n"})
    yield server
    server.close()


def pull_request_run(tmp_path: Path, env: dict[str, str], registry: ReplayRegistry, github: Any) -> dict[str, Any]:
    source = {"repo": "acme/shop", "ref": "main", "path": "server", "api_url": github.url}
    config = updates_job(tmp_path, mode="pull_request", registry=registry.url,
                         projects=[{"name": "server", "github": source}])  # fmt: skip
    return run_now(config, env, GITHUB_TOKEN="ghp_TestToken00000000000000000000")


@pytest.mark.slow
def test_pull_request_run_writes_the_lockfile_to_its_branch_and_opens_one_pull_request(
    tmp_path: Path, env: dict[str, str], registry: ReplayRegistry, github: Any, with_pnpm: None
) -> None:
    """The real pnpm's lockfile lands on opskeeper/updates/server, one commit on main; one PR, refreshed next run."""
    repo = github.repo("acme/shop")
    main_before = repo.refs["main"]
    first = pull_request_run(tmp_path, env, registry, github)
    assert first["status"] == "warn", first
    branch = repo.refs["opskeeper/updates/server"]
    assert repo.commits[branch]["parents"] == [main_before]
    assert repo.refs["main"] == main_before  # the base branch is never written
    changed = {p for p, d in repo.files(branch).items() if repo.files(main_before).get(p) != d}
    assert changed == {"server/pnpm-lock.yaml"}
    assert b"express@4.2" in repo.files(branch)["server/pnpm-lock.yaml"]
    second = pull_request_run(tmp_path, env, registry, github)
    assert second["status"] == "warn"
    assert repo.refs["opskeeper/updates/server"] == branch  # the same lockfile again: no new commit to re-run CI on
    [pull] = [p for p in repo.pulls if p["head"]["ref"] == "opskeeper/updates/server"]  # refreshed, not duplicated
    assert (pull["state"], pull["base"]["ref"]) == ("open", "main")
    assert "| express | 4.21.2 | 4." in pull["body"]
    body = pull["body"]
    assert "### Majors held back (outside the ranges)" in body
    assert "| express | 4." in body.split("### Majors held back")[1]
    assert (
        "GHSA-76c9-3jph-rj3q" in body.split("### Advisories this fixes")[1]
    )  # morgan's update brings on-headers 1.1.0
    needs = body.split("### Needs a newer Node.js than the app runs (14.21.3 (.nvmrc))")[1]
    assert "- mongoose 8." in needs
    assert all(a == "Bearer ghp_TestToken00000000000000000000" for a in github.auth)


@pytest.mark.slow
def test_nothing_left_to_update_closes_the_open_pull_request(
    tmp_path: Path, env: dict[str, str], registry: ReplayRegistry, github: Any, with_pnpm: None
) -> None:
    """Once main holds the updated lockfile, the next run finds nothing and closes the pull request, saying why."""
    repo = github.repo("acme/shop")
    pull_request_run(tmp_path, env, registry, github)
    updated = repo.files(repo.refs["opskeeper/updates/server"])
    repo.refs["main"] = repo.seed("(merged)", updated, "merge the updates")
    out = pull_request_run(tmp_path, env, registry, github)
    assert out["details"]["projects"][0]["updates"] == [], out
    [pull] = [p for p in repo.pulls if p["head"]["ref"] == "opskeeper/updates/server"]
    assert pull["state"] == "closed"
    assert repo.comments[pull["number"]] == ["Nothing is left to update: opskeeper closed this."]


@pytest.mark.slow
def test_npm_project_is_planned_with_the_real_npm(tmp_path: Path, registry: ReplayRegistry) -> None:
    """Real npm on an npm-locked server: express 4.21.2 moves within 4.x, package.json is not rewritten."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: apt-get install nodejs npm (as root)")
    project = shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "mern-server-npm", tmp_path / "server")
    before = digest(project)
    result = plan("server", project, registry.url)
    assert result.manager == "npm"
    express = next(u for u in result.updates if u["name"] == "express")
    assert (express["from"], express["to"][:2], express["kind"]) == ("4.21.2", "4.", "minor")
    assert all(u["kind"] != "major" for u in result.updates)
    assert digest(project) == before


@pytest.mark.slow
def test_two_lockfiles_side_by_side_plan_with_the_one_package_manager_installs_from(
    tmp_path: Path, registry: ReplayRegistry, with_pnpm: None
) -> None:
    """package-lock.json beside pnpm-lock.yaml: packageManager npm@11 makes the plan npm's, as the check reads it."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: apt-get install nodejs npm (as root)")
    project = shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "mern-server-npm", tmp_path / "server")
    shutil.copy2(FIXTURES / "pnpm" / "mern-v9" / "server" / "pnpm-lock.yaml", project / "pnpm-lock.yaml")
    assert plan("server", project, registry.url).manager == "pnpm"  # no word from the project: pnpm's comes first
    manifest = json.loads((project / "package.json").read_text())
    (project / "package.json").write_text(json.dumps({**manifest, "packageManager": "npm@11.19.1"}, indent=2))
    result = plan("server", project, registry.url)
    assert (result.manager, result.lockfile) == ("npm", "package-lock.json")


def test_dry_run_names_the_in_range_fix_for_a_transitive_advisory(tmp_path: Path, registry: ReplayRegistry,
                                                                 with_pnpm: None) -> None:  # fmt: skip
    """on-headers 1.0.2 (GHSA-76c9-3jph-rj3q, <1.1.0) comes through morgan 1.10.0: updating morgan in range fixes it."""
    from jobs.updates.security import findings, fix

    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    result = plan("server", project, registry.url)
    assert result.before is not None
    found, gaps = findings(result.before, registry.url)
    assert gaps == []
    [finding] = [f for f in found if f.package == "on-headers"]
    assert (finding.version, finding.via) == ("1.0.2", [["morgan", "on-headers"]])
    fixed, reason = fix("server", project, registry.url, finding)
    assert reason == ""
    assert fixed is not None
    morgan = next(u for u in fixed.updates if u["name"] == "morgan")
    assert (morgan["from"], morgan["to"][:2]) == ("1.10.0", "1.")
    assert {u["name"] for u in fixed.updates} == {"morgan"}  # only what pulls the package in moves
    assert fixed.after is not None
    assert {v for n, v in fixed.after.registry_packages if n == "on-headers"} == {"1.1.0"}


@pytest.mark.slow
def test_no_in_range_fix_opens_nothing_and_says_why(tmp_path: Path, env: dict[str, str],
                                                    registry: ReplayRegistry) -> None:  # fmt: skip
    """multer 1.4.5-lts.2 needs 2.x for its advisories: `^1.4.5-lts.2` cannot reach it, and the run says so."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: apt-get install nodejs npm (as root)")
    project = shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "multer-lts", tmp_path / "uploads")
    out = run_now(updates_job(tmp_path, registry=registry.url, projects=[{"name": "uploads", "path": str(project)}]),
                  env)  # fmt: skip
    [uploads] = out["details"]["projects"]
    multer = [s for s in uploads["security"] if s["package"] == "multer"]
    assert {s["id"] for s in multer} == {"1104917", "1104916"}
    assert all("fix" not in s for s in multer)
    assert all(s["reason"].startswith("no update within the ranges removes multer@1.4.5-lts.2") for s in multer)
    assert "no update within the ranges removes multer@1.4.5-lts.2" in out["summary"]
    # npm asks for multer once a run: the plan, then one fix run shared by both advisories; opskeeper once more
    # for the latest versions. A run per advisory would make it four.
    assert registry.asked.count("multer") == 3, registry.asked.count("multer")


@pytest.mark.slow
def test_security_fix_opens_its_own_pull_request_titled_with_the_advisory(
    tmp_path: Path, env: dict[str, str], registry: ReplayRegistry, github: Any, with_pnpm: None
) -> None:
    """pull_request mode: the on-headers fix is a pull request of its own beside the monthly one."""
    repo = github.repo("acme/shop")
    out = pull_request_run(tmp_path, env, registry, github)
    titles = sorted(p["title"] for p in repo.pulls)
    count = len(out["details"]["projects"][0]["updates"])
    assert titles == ["Fix GHSA-76c9-3jph-rj3q (low) in on-headers@1.0.2",
                      f"Update server dependencies ({count} in range)"]  # fmt: skip
    branch = repo.refs["opskeeper/security/server/1106212"]
    assert b"on-headers@1.1.0" in repo.files(branch)["server/pnpm-lock.yaml"]
    security = next(p for p in repo.pulls if p["title"].startswith("Fix "))
    assert "https://github.com/advisories/GHSA-76c9-3jph-rj3q" in security["body"]
    pull_request_run(tmp_path, env, registry, github)
    assert len(repo.pulls) == 2  # refreshed on the next run, not duplicated


def test_patch_mode_holds_back_minor_steps(tmp_path: Path, env: dict[str, str], registry: ReplayRegistry,
                                           with_pnpm: None) -> None:  # fmt: skip
    """`update: patch`: only patch steps are planned; express's minor step (4.21 → 4.22) is held back and named."""
    project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    out = run_now(updates_job(tmp_path, update="patch", security="off", registry=registry.url,
                              projects=[{"name": "server", "path": str(project)}]), env)  # fmt: skip
    [server] = out["details"]["projects"]
    assert server["updates"]
    assert all(u["kind"] == "patch" for u in server["updates"])
    assert "express" in {u["name"] for u in server["held"]}


MORGAN_LATER = {"morgan": {"1.10.1", "1.11.0", "1.12.0", "1.12.1"}}
"""morgan's releases after on-headers 1.1.0 fixed GHSA-76c9-3jph-rj3q: hidden, no parent's release takes the fix."""


@pytest.fixture
def before_morgan_fix() -> Iterator[ReplayRegistry]:
    with ReplayRegistry(hidden=MORGAN_LATER) as server:
        yield server


def test_a_transitive_fix_no_parent_takes_yet_becomes_a_pnpm_override_pull_request(
    tmp_path: Path, env: dict[str, str], before_morgan_fix: ReplayRegistry, github: Any, with_pnpm: None
) -> None:
    """No morgan release takes on-headers 1.1.0 yet: the security PR adds an override in pnpm-workspace.yaml."""
    import yaml

    repo = github.repo("acme/shop")
    out = pull_request_run(tmp_path, env, before_morgan_fix, github)
    [entry] = [s for s in out["details"]["projects"][0]["security"] if s["package"] == "on-headers"]
    assert entry["fix"] == [{"name": "on-headers", "from": "1.0.2", "to": "1.1.0", "kind": "minor",
                             "group": "override"}], entry  # fmt: skip
    branch = repo.refs["opskeeper/security/server/1106212"]
    files, base = repo.files(branch), repo.files(repo.refs["main"])
    assert {p for p, d in files.items() if base.get(p) != d} == {"server/pnpm-workspace.yaml", "server/pnpm-lock.yaml"}
    assert yaml.safe_load(files["server/pnpm-workspace.yaml"]) == {"overrides": {"on-headers@1.0.2": "^1.1.0"}}
    lock = yaml.safe_load(files["server/pnpm-lock.yaml"])
    assert lock["overrides"] == {"on-headers@1.0.2": "^1.1.0"}  # pnpm itself applied it
    assert "morgan@1.10.0" in lock["packages"]  # the parent did not move
    assert "on-headers@1.1.0" in lock["packages"]
    assert "on-headers@1.0.2" not in lock["packages"]
    security = next(p for p in repo.pulls if p["title"].startswith("Fix "))
    assert "adds an override for the vulnerable version in `pnpm-workspace.yaml`" in security["body"]
    assert "Remove it once morgan releases a version that takes the fix" in security["body"]


@pytest.mark.slow
def test_a_transitive_fix_becomes_an_npm_override_in_package_json(
    tmp_path: Path, before_morgan_fix: ReplayRegistry
) -> None:
    """npm project, no morgan release with the fix: package.json gains `overrides`, its formatting kept."""
    from jobs.updates.security import findings, fix

    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: apt-get install nodejs npm (as root)")
    project = shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "mern-server-npm", tmp_path / "server")
    before = digest(project)
    result = plan("server", project, before_morgan_fix.url)
    assert result.before is not None
    [finding] = [f for f in findings(result.before, before_morgan_fix.url)[0] if f.package == "on-headers"]
    fixed, reason = fix("server", project, before_morgan_fix.url, finding)
    assert fixed is not None, reason
    assert set(fixed.files) == {"package.json", "package-lock.json"}
    original = (project / "package.json").read_text()
    edited = fixed.files["package.json"].decode()
    assert json.loads(edited) == {**json.loads(original), "overrides": {"on-headers@1.0.2": "^1.1.0"}}
    assert edited.splitlines()[1].startswith('  "')
    assert edited.endswith("\n")
    assert fixed.after is not None
    assert {v for n, v in fixed.after.registry_packages if n == "on-headers"} == {"1.1.0"}
    assert {v for n, v in fixed.after.registry_packages if n == "morgan"} == {"1.10.0"}
    assert digest(project) == before  # the project itself is untouched


def test_overrides_are_added_by_line_and_refused_where_they_cannot_be() -> None:
    """pnpm-workspace.yaml keeps every other line; a flow-style block or an existing entry is refused by name."""
    from jobs.updates.planner import PlanError
    from jobs.updates.security import with_overrides

    text = "packages:\n  - client\n# pinned for a reason\noverrides:\n    lodash: ^4.17.21\ncatalog:\n  react: ^19\n"
    out = with_overrides(text, {"on-headers@1.0.2": "^1.1.0"})
    assert out == text.replace("overrides:\n", 'overrides:\n    "on-headers@1.0.2": "^1.1.0"\n')
    added = with_overrides("packages: [a]", {"x@1.0.0": "^1.0.1"})
    assert added == 'packages: [a]\noverrides:\n  "x@1.0.0": "^1.0.1"\n'
    with pytest.raises(PlanError, match=r"not a block opskeeper can add to by line; add x@1.0.0: \^1.0.1"):
        with_overrides("overrides: {lodash: ^4}\n", {"x@1.0.0": "^1.0.1"})
    with pytest.raises(PlanError, match=r"already overrides x@1.0.0"):
        with_overrides("overrides:\n  x@1.0.0: 2.0.0\n", {"x@1.0.0": "^1.0.1"})


def test_the_override_target_is_the_first_fixed_release_in_the_same_major() -> None:
    """on-headers-like history: 1.0.3 is deprecated, 2.0.0 is newer, so 1.1.0 is the target; a prerelease never is."""
    from jobs.updates.security import first_fixed

    document = {"versions": {"1.0.2": {}, "1.0.3": {"deprecated": "broken"}, "1.1.0-rc.1": {}, "1.1.0": {},
                             "1.2.0": {}, "2.0.0": {}}}  # fmt: skip
    advisory = {"vulnerable_versions": "<1.1.0"}
    assert first_fixed(document, advisory, ["1.0.2"]) == "1.1.0"
    assert first_fixed(document, {"vulnerable_versions": "<2.0.0"}, ["1.0.2"]) == "2.0.0"
    assert first_fixed(document, {"vulnerable_versions": "*"}, ["1.0.2"]) is None


def test_group_all_makes_one_pull_request_for_client_and_server(
    tmp_path: Path, env: dict[str, str], registry: ReplayRegistry, with_pnpm: None
) -> None:
    """`group: all`: both lockfiles in one commit on opskeeper/updates/all, one PR with a section per project."""
    from tests.fixtures.github_standin import GitHubStandIn

    github = GitHubStandIn()
    mern = FIXTURES / "pnpm" / "mern-v9"
    files = {f"{side}/{p.name}": p.read_bytes() for side in ("client", "server") for p in (mern / side).iterdir()
             if p.is_file()}  # fmt: skip
    repo = github.repo("acme/shop")
    repo.seed("main", files)
    projects = [{"name": side, "github": {"repo": "acme/shop", "ref": "main", "path": side, "api_url": github.url}}
                for side in ("client", "server")]  # fmt: skip
    config = updates_job(tmp_path, mode="pull_request", group="all", security="off", registry=registry.url,
                         projects=projects)  # fmt: skip
    try:
        out = run_now(config, env, GITHUB_TOKEN="ghp_TestToken00000000000000000001")
        assert out["status"] == "warn", out
        assert set(repo.refs) == {"main", "opskeeper/updates/all"}
        branch = repo.refs["opskeeper/updates/all"]
        base = repo.files(repo.refs["main"])
        changed = {p for p, d in repo.files(branch).items() if base.get(p) != d}
        assert changed == {"client/pnpm-lock.yaml", "server/pnpm-lock.yaml"}
        [pull] = repo.pulls
        count = sum(len(p["updates"]) for p in out["details"]["projects"])
        assert pull["title"] == f"Update dependencies of client, server ({count} in range)"
        assert "## client\n" in pull["body"]
        assert "## server\n" in pull["body"]
        assert "| express | 4.21.2 | 4." in pull["body"].split("## server")[1]
    finally:
        github.close()


def test_group_all_needs_one_repository(tmp_path: Path, env: dict[str, str]) -> None:
    """`group: all` over two repositories is refused at validation, naming both and the way out."""
    config = updates_job(tmp_path, mode="pull_request", group="all",
                         projects=[{"name": "client", "github": {"repo": "acme/web", "ref": "main"}},
                                   {"name": "server", "github": {"repo": "acme/api", "ref": "main"}}])  # fmt: skip
    result = opskeeper("validate", "--config", str(config), env=env)
    assert result.code == 78
    assert "these are on acme/api@main, acme/web@main (use group: project)" in result.stderr


@pytest.fixture
def mirror() -> Iterator[ReplayRegistry]:
    with ReplayRegistry(tarballs=True) as server:
        yield server


def test_yarn_classic_project_is_planned_with_the_real_yarn(tmp_path: Path, mirror: ReplayRegistry,
                                                           with_yarn: None) -> None:  # fmt: skip
    """Real yarn 1.x `upgrade` on a yarn.lock it wrote: express moves within 4.x, the project is left as it was."""
    project = shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "yarn-api", tmp_path / "api")
    before = digest(project)
    result = plan("api", project, mirror.url)
    assert result.manager == "yarn"
    assert result.lockfile == "yarn.lock"
    updates = {u["name"]: u for u in result.updates}
    assert (updates["express"]["from"], updates["express"]["to"][:2]) == ("4.21.2", "4.")
    assert all(u["kind"] != "major" for u in result.updates)
    assert result.new_lockfile.startswith(b"# THIS IS AN AUTOGENERATED FILE")
    assert digest(project) == before
    assert result.after is not None
    # yarn fetched every package of the new lockfile from the configured registry (none from the lockfile's host)
    assert {f.rsplit("/-/", 1)[0] for f in mirror.fetched} >= {name for name, _ in result.after.registry_packages}


@pytest.mark.slow
def test_yarn_transitive_fix_through_the_parent_and_else_through_resolutions(
    tmp_path: Path, mirror: ReplayRegistry, with_yarn: None
) -> None:
    """yarn: morgan's in-range update fixes on-headers; before morgan's release, `resolutions` by path does."""
    from jobs.updates.security import findings, fix

    project = shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "yarn-api", tmp_path / "api")
    result = plan("api", project, mirror.url)
    assert result.before is not None
    [finding] = [f for f in findings(result.before, mirror.url)[0] if f.package == "on-headers"]
    assert finding.via == [["morgan", "on-headers"]]
    fixed, reason = fix("api", project, mirror.url, finding)
    assert fixed is not None, reason
    assert {u["name"] for u in fixed.updates} == {"morgan"}
    assert fixed.edited == {}
    with ReplayRegistry(hidden=MORGAN_LATER, tarballs=True) as hidden:
        overridden, reason = fix("api", project, hidden.url, finding)
    assert overridden is not None, reason
    manifest = json.loads(overridden.files["package.json"])
    assert manifest["resolutions"] == {"morgan/on-headers": "^1.1.0"}
    assert overridden.after is not None
    assert {v for n, v in overridden.after.registry_packages if n == "on-headers"} == {"1.1.0"}
    assert {v for n, v in overridden.after.registry_packages if n == "morgan"} == {"1.10.0"}


def test_a_yarn_berry_lockfile_is_named_not_guessed_at(tmp_path: Path, with_yarn: None) -> None:
    """A Yarn 2+ lockfile: the plan fails with the file and what is supported, before any tool runs."""
    project = tmp_path / "web"
    project.mkdir()
    (project / "package.json").write_text('{"name": "web", "dependencies": {"left-pad": "^1.3.0"}}')
    (project / "yarn.lock").write_text(
        '__metadata:\n  version: 8\n  cacheKey: 10c0\n\n"left-pad@npm:^1.3.0":\n  version: 1.3.0\n'
        '  resolution: "left-pad@npm:1.3.0"\n  checksum: 10c0/3fb3\n  languageName: node\n  linkType: hard\n'
        '\n"web@workspace:.":\n  version: 0.0.0-use.local\n  resolution: "web@workspace:."\n'
        '  dependencies:\n    left-pad: "npm:^1.3.0"\n  languageName: unknown\n  linkType: soft\n'
    )
    with pytest.raises(PlanError, match=r"web: .*yarn.lock is a Yarn berry 8 lockfile; dependency_updates runs Yarn "
                                        r"classic \(1.x\) only so far"):  # fmt: skip
        plan("web", project, "http://127.0.0.1:9/")


@pytest.mark.slow
@pytest.mark.parametrize("manager", ["pnpm", "npm", "yarn"])
def test_the_package_manager_goes_through_the_proxy_and_trusts_the_operators_ca(
    manager: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: Proxy, with_pnpm: None
) -> None:
    """Behind a proxy with a private CA (HTTPS_PROXY, SSL_CERT_FILE), the real pnpm, npm and yarn tunnel through
    the proxy and trust that CA, as opskeeper's own requests do; without the CA the plan fails, naming the tool."""
    import ssl

    import trustme

    on_path(monkeypatch, manager)
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    bundle = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    registry = ReplayRegistry(ssl_context=context, tarballs=manager == "yarn")
    fixture = {"pnpm": FIXTURES / "pnpm" / "mern-v9" / "server",
               "npm": ROOT / "tests" / "fixtures" / "projects" / "mern-server-npm",
               "yarn": ROOT / "tests" / "fixtures" / "projects" / "yarn-api"}[manager]  # fmt: skip
    project = shutil.copytree(fixture, tmp_path / "server")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    # npm would retry an untrusted certificate for a minute; the job's pass_env hands the operator's setting on.
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    with registry:
        with pytest.raises(PlanError, match=rf"server: {manager} (update|upgrade) exited"):
            plan("server", project, registry.url, pass_env=["npm_config_fetch_retries"])  # the CA is not trusted yet
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        result = plan("server", project, registry.url, pass_env=["npm_config_fetch_retries"])
    assert result.manager == manager
    assert "express" in {u["name"] for u in result.updates}
    assert f"CONNECT localhost:{registry.server.server_address[1]}" in proxy.seen

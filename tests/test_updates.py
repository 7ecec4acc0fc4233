"""Updates computed by the real pnpm and npm, in lockfile-only mode, against recorded registry documents."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest

from jobs.updates.planner import PlanError, plan
from tests.conftest import ROOT, SHARED

RECORDED = ROOT / "tests" / "fixtures" / "registry-full"
TOOLS = ROOT / "var" / "tools" / "node_modules" / ".bin"


class ReplayRegistry:
    """Serves the recorded documents; anything not recorded is a 404, as an unknown package is."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = unquote(self.path.lstrip("/").split("?", 1)[0])
                registry.asked.append(name)
                path = RECORDED / f"{quote(name, safe='')}.json.gz"
                body = gzip.decompress(path.read_bytes()) if path.is_file() else b'{"error": "Not found"}'
                self.send_response(200 if path.is_file() else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            # pnpm opens dozens of connections at once: the default backlog of 5 drops some, and the
            # client's SYN retries turn one request into 15 s.
            request_queue_size = 128

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"


@pytest.fixture
def registry() -> Iterator[ReplayRegistry]:
    server = ReplayRegistry()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def with_pnpm(monkeypatch: pytest.MonkeyPatch) -> None:
    if TOOLS.is_dir():
        monkeypatch.setenv("PATH", f"{TOOLS}{os.pathsep}{os.environ['PATH']}")
    if shutil.which("pnpm") is None:
        pytest.skip("pnpm is not installed (npm install --prefix var/tools pnpm)")


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_dry_run_plans_in_range_updates_only_and_leaves_the_project_as_it_was(
    tmp_path: Path, registry: ReplayRegistry, with_pnpm: None
) -> None:
    """Real pnpm on the MERN server: express 4.21.2 moves within 4.x (never 5), and no project file changes."""
    project = shutil.copytree(SHARED / "fixtures" / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    before = digest(project)
    result = plan("server", project, registry.url)
    updates = {u["name"]: u for u in result.updates}
    assert updates["express"]["from"] == "4.21.2"
    assert updates["express"]["to"].startswith("4.")
    assert all(u["kind"] != "major" for u in result.updates)
    assert digest(project) == before
    assert b"express@" + updates["express"]["to"].encode() in result.new_lockfile


def test_ignored_packages_stay_where_they_are(tmp_path: Path, registry: ReplayRegistry, with_pnpm: None) -> None:
    """`ignore: [mongoose]`: mongoose keeps its locked version while the others move."""
    project = shutil.copytree(SHARED / "fixtures" / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    result = plan("server", project, registry.url, ignore=["mongoose"])
    names = {u["name"] for u in result.updates}
    assert "mongoose" not in names
    assert "express" in names


def test_a_missing_package_manager_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pnpm on PATH the error names pnpm and how to get it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    project = shutil.copytree(SHARED / "fixtures" / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    with pytest.raises(PlanError, match=r"server: pnpm is not on PATH"):
        plan("server", project, "http://127.0.0.1:9/")


def test_dependency_updates_job_dry_run_through_run_now(tmp_path: Path, env: dict[str, str], registry: ReplayRegistry,
                                                        with_pnpm: None) -> None:  # fmt: skip
    """`run-now` of a dry run: WARN with the plan in the details, nothing changed in the project."""
    import json

    from tests.conftest import opskeeper, write

    project = shutil.copytree(SHARED / "fixtures" / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    before = digest(project)
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: monthly-updates
    kind: dependency_updates
    schedule: "0 7 1 * *"
    options:
      registry: "{registry.url}"
      projects: [{{name: server, path: "{project}"}}]
""")  # fmt: skip
    result = opskeeper("run-now", "monthly-updates", "--config", str(config), "--json",
                       env={**env, "PATH": os.environ["PATH"]})  # fmt: skip
    out = json.loads(result.stdout)
    assert out["status"] == "warn", result.stderr
    [server] = out["details"]["projects"]
    express = next(u for u in server["updates"] if u["name"] == "express")
    assert (express["from"], express["to"][:2]) == ("4.21.2", "4.")
    assert out["summary"].startswith(f"server: {len(server['updates'])} update(s) (")
    assert digest(project) == before


def test_pull_request_mode_needs_projects_on_github(tmp_path: Path, env: dict[str, str]) -> None:
    """A local project cannot become a pull request: validation says which project and what it needs."""
    from tests.conftest import opskeeper, write

    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: monthly-updates
    kind: dependency_updates
    schedule: "0 7 1 * *"
    options: {mode: pull_request, projects: [{name: server, path: server}]}
""")  # fmt: skip
    result = opskeeper("validate", "--config", str(config), env=env)
    assert result.code == 78
    assert "project(s) server need github: {repo, ref, path}" in result.stderr


@pytest.fixture
def github() -> Iterator[Any]:
    from tests.fixtures.github_standin import GitHubStandIn

    server = GitHubStandIn()
    files = {f"server/{p.name}": p.read_bytes() for p in (SHARED / "fixtures" / "pnpm" / "mern-v9" / "server").iterdir()
             if p.is_file()}  # fmt: skip
    server.repo("acme/shop").seed("main", {**files, "README.md": b"# shop\n"})
    yield server
    server.close()


def pull_request_run(tmp_path: Path, env: dict[str, str], registry: ReplayRegistry, github: Any) -> dict[str, Any]:
    import json

    from tests.conftest import opskeeper, write

    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: monthly-updates
    kind: dependency_updates
    schedule: "0 7 1 * *"
    options:
      mode: pull_request
      registry: "{registry.url}"
      projects: [{{name: server, github: {{repo: acme/shop, ref: main, path: server, api_url: "{github.url}"}}}}]
""")  # fmt: skip
    token = "ghp_TestToken00000000000000000000"
    result = opskeeper("run-now", "monthly-updates", "--config", str(config), "--json",
                       env={**env, "PATH": os.environ["PATH"], "GITHUB_TOKEN": token})  # fmt: skip
    assert "ghp_TestToken" not in result.stdout + result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


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
    [pull] = repo.pulls  # refreshed, not duplicated
    assert (pull["state"], pull["head"]["ref"], pull["base"]["ref"]) == ("open", "opskeeper/updates/server", "main")
    assert "| express | 4.21.2 | 4." in pull["body"]
    assert all(a == "Bearer ghp_TestToken00000000000000000000" for a in github.auth)


def test_nothing_left_to_update_closes_the_open_pull_request(
    tmp_path: Path, env: dict[str, str], registry: ReplayRegistry, github: Any, with_pnpm: None
) -> None:
    """Once main holds the updated lockfile, the next run finds nothing and closes the pull request, saying why."""
    repo = github.repo("acme/shop")
    pull_request_run(tmp_path, env, registry, github)
    updated = repo.files(repo.refs["opskeeper/updates/server"])
    repo.refs["main"] = repo.seed("(merged)", updated, "merge the updates")
    out = pull_request_run(tmp_path, env, registry, github)
    assert out["status"] == "ok", out
    [pull] = repo.pulls
    assert pull["state"] == "closed"
    assert pull["comments"] == ["Nothing is left to update: opskeeper closed this."]


def test_npm_project_is_planned_with_the_real_npm(tmp_path: Path, registry: ReplayRegistry) -> None:
    """Real npm on an npm-locked server: express 4.21.2 moves within 4.x, package.json is not rewritten."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH")
    project = shutil.copytree(ROOT / "tests" / "fixtures" / "projects" / "mern-server-npm", tmp_path / "server")
    before = digest(project)
    result = plan("server", project, registry.url)
    assert result.manager == "npm"
    express = next(u for u in result.updates if u["name"] == "express")
    assert (express["from"], express["to"][:2], express["kind"]) == ("4.21.2", "4.", "minor")
    assert all(u["kind"] != "major" for u in result.updates)
    assert digest(project) == before

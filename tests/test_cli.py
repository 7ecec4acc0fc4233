"""The command line: jobs, run-now exit codes, history, settings errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, opskeeper, write

SCHEDULE = """\
timezone: Europe/Berlin
jobs:
  - id: sunday-backup
    kind: command
    schedule: "0 3 * * 7"
    options: {argv: ["true"]}
  - id: probe
    kind: command
    schedule: every 90s
    options: {argv: ["true"]}
  - id: paused
    kind: command
    schedule: "@quarterly"
    enabled: false
    options: {argv: ["true"]}
  - id: warns
    kind: command
    schedule: "@daily"
    options: {shell: true, argv: ["echo 2 outdated >&2; exit 1"], warn_codes: [1]}
  - id: fails
    kind: command
    schedule: "@daily"
    options: {shell: true, argv: ["exit 2"]}
  - id: errors
    kind: command
    schedule: "@daily"
    options: {argv: ["/nonexistent/program"]}
"""


def test_jobs_json_lists_next_three_runs_in_the_timezone(tmp_path: Path, env: dict[str, str]) -> None:
    """`jobs --json --now` gives each job's schedule and next 3 runs with the zone's offset."""
    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    result = opskeeper("jobs", "--config", str(config), "--now", "2026-03-20T12:00:00+01:00", "--json", env=env)
    assert result.code == 0, result.stderr
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert rows["sunday-backup"] == {
        "id": "sunday-backup",
        "kind": "command",
        "schedule": "0 3 * * 7",
        "description": "at 03:00, on Sunday",
        "timezone": "Europe/Berlin",
        "enabled": True,
        "next_runs": ["2026-03-22T03:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-04-05T03:00:00+02:00"],
    }
    assert rows["probe"]["next_runs"] == [
        "2026-03-20T12:01:30+01:00", "2026-03-20T12:03:00+01:00", "2026-03-20T12:04:30+01:00"
    ]  # fmt: skip
    assert rows["paused"]["enabled"] is False
    assert rows["paused"]["next_runs"] == []


def test_jobs_text_shows_schedule_in_words(tmp_path: Path, env: dict[str, str]) -> None:
    """The text form names each job, its schedule in words and its next runs."""
    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    result = opskeeper("jobs", "--config", str(config), "--now", "2026-11-26T12:00:00", env=env)
    assert result.code == 0
    assert "sunday-backup  [command]  0 3 * * 7 — at 03:00, on Sunday (Europe/Berlin)" in result.stdout
    assert "    next: 2026-11-29T03:00:00+01:00" in result.stdout
    assert "paused" in result.stdout
    assert "(disabled)" in result.stdout


def test_bad_now_is_a_clear_error(tmp_path: Path, env: dict[str, str]) -> None:
    """An unparseable --now is named with the expected format."""
    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    result = opskeeper("jobs", "--config", str(config), "--now", "next tuesday", env=env)
    assert result.code == 64
    assert "--now 'next tuesday': not an ISO 8601 time" in result.stderr


@pytest.mark.slow
def test_run_now_exits_like_a_monitoring_plugin(tmp_path: Path, env: dict[str, str]) -> None:
    """run-now exits 0 ok, 1 warn, 2 fail, 3 error, and prints the outcome as JSON."""
    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    codes = {}
    for job_id in ("sunday-backup", "warns", "fails", "errors"):
        result = opskeeper("run-now", job_id, "--config", str(config), "--json", env=env)
        out = json.loads(result.stdout)
        assert set(out) == {"run_id", "job_id", "status", "summary", "details"}
        assert out["job_id"] == job_id
        codes[job_id] = (result.code, out["status"])
    assert codes == {"sunday-backup": (0, "ok"), "warns": (1, "warn"), "fails": (2, "fail"), "errors": (3, "error")}


def test_run_now_unknown_job_lists_the_jobs(tmp_path: Path, env: dict[str, str]) -> None:
    """An unknown job id is a usage error (64, not a job's FAIL 2) and names the ids that exist."""
    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    result = opskeeper("run-now", "backup", "--config", str(config), env=env)
    assert result.code == 64
    assert "no job 'backup' in" in result.stderr
    assert "sunday-backup, probe, paused, warns, fails, errors" in result.stderr


@pytest.mark.slow
def test_history_lists_recorded_runs_newest_first(tmp_path: Path, env: dict[str, str]) -> None:
    """history --json returns the runs run-now recorded, newest first, filterable and limited."""
    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    for job_id in ("sunday-backup", "fails", "warns"):
        opskeeper("run-now", job_id, "--config", str(config), env=env)
    runs = json.loads(opskeeper("history", "--json", env=env).stdout)
    assert [r["job_id"] for r in runs] == ["warns", "fails", "sunday-backup"]
    assert set(runs[0]) == {"run_id", "job_id", "kind", "status", "scheduled_at", "started_at", "finished_at",
                            "duration_s", "summary"}  # fmt: skip
    assert runs[1]["status"] == "fail"
    only = json.loads(opskeeper("history", "--job", "fails", "--json", env=env).stdout)
    assert [r["job_id"] for r in only] == ["fails"]
    assert len(json.loads(opskeeper("history", "--limit", "2", "--json", env=env).stdout)) == 2
    text = opskeeper("history", env=env).stdout
    assert "warn" in text
    assert "fails" in text


def test_bad_environment_names_the_variable(tmp_path: Path, env: dict[str, str]) -> None:
    """An invalid setting exits 78 naming the variable and the allowed values."""
    result = opskeeper("history", env={**env, "OPSKEEPER_LOG_FORMAT": "xml"})
    assert result.code == 78
    assert "OPSKEEPER_LOG_FORMAT: Input should be 'json' or 'console' (got 'xml')" in result.stderr


def test_unreadable_secret_file_names_the_variable(tmp_path: Path, env: dict[str, str]) -> None:
    """SENTRY_DSN_FILE pointing nowhere is one clear line naming the variable and the path."""
    missing = tmp_path / "dsn"
    result = opskeeper("history", env={**env, "SENTRY_DSN_FILE": str(missing)})
    assert result.code == 78
    assert f"SENTRY_DSN_FILE={missing}: cannot read the secret file: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_mongodb_ledger_is_a_clear_error_without_password(env: dict[str, str]) -> None:
    """A MongoDB ledger that cannot be reached: exit 3, the reason, and no password."""
    from tests.conftest import free_port_closed

    url = f"mongodb://ops:TopSecretPw@127.0.0.1:{free_port_closed()}/ops?serverSelectionTimeoutMS=300"
    result = opskeeper("history", env={**env, "OPSKEEPER_LEDGER": url})
    assert result.code == 3
    assert "cannot open the ledger mongodb://ops:***@127.0.0.1" in result.stderr
    assert "TopSecretPw" not in result.stderr + result.stdout


def test_python_dash_m_worker_is_the_opskeeper_command(env: dict[str, str]) -> None:
    """`python -m worker --version` answers like the console script."""
    result = opskeeper("--version", env=env)
    assert result.code == 0
    assert result.stdout.startswith("opskeeper ")


#: Runs `python -m worker ARGV`, then prints every module it loaded, as JSON, on the last line of stderr (a None in
#: sys.modules is a module barred from loading, as worker.http bars httpx's command-line client).
MODULES_PROBE = """
import json, runpy, sys
sys.argv = ["opskeeper", *sys.argv[1:]]
try:
    runpy.run_module("worker", run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)), file=sys.stderr)
"""


def _run_counting_modules(argv: list[str], env: dict[str, str]) -> tuple[str, set[str]]:
    """(stdout, every module loaded) of one `opskeeper ARGV` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", MODULES_PROBE, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return proc.stdout, set(json.loads(proc.stderr.splitlines()[-1]))


#: What answering `--version` or `--help` may import besides the standard library: the command table and the
#: kinds' `register` functions. Anything heavier (pydantic, structlog, sentry_sdk, httpx, pymongo, boto3, a job
#: kind's code) is imported by the command that uses it.
START_UP = frozenset({"__main__", "worker", "worker.__main__", "worker.cli", "worker.commands", "worker.version",
                      "jobs", *(f"jobs.{k}{m}" for k in ("backup", "dependencies", "deploys", "health", "review")
                               for m in ("", ".commands"))})  # fmt: skip


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["deps", "--help"], ["restore", "--help"]])
def test_version_and_help_import_almost_nothing(argv: list[str]) -> None:
    """`--version` and `--help` load only the command table: no third-party module and no job kind's code."""
    stdout, modules = _run_counting_modules(argv, dict(os.environ))
    loaded = {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names}
    assert "opskeeper" in stdout or "usage:" in stdout
    assert loaded - START_UP == set()
    assert "worker.cli" in loaded


def test_validate_loads_no_driver_or_reporter(tmp_path: Path) -> None:
    """`validate` of the shipped schedule reads options only: no HTTP client, MongoDB driver, Sentry or logger."""
    env = {"PATH": os.environ["PATH"], "OPSKEEPER_LEDGER": str(tmp_path / "l.db")}
    stdout, modules = _run_counting_modules(["validate", "--config", "config/jobs.yaml"], env)
    assert stdout.startswith("OK: ")
    tops = {m.split(".")[0] for m in modules}
    assert tops & {"httpx", "pymongo", "sentry_sdk", "boto3", "botocore", "structlog", "rich"} == set()
    assert "pydantic" in tops  # it did validate


def test_httpx_loads_without_its_command_line_client() -> None:
    """Where click is installed (a development environment), httpx is still loaded without its command-line
    client (click, rich, pygments), which opskeeper never runs."""
    pytest.importorskip("click")
    probe = "import sys, worker.http, httpx; print(sorted(m for m in ('click', 'pygments') if sys.modules.get(m)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_mongodb_ledger_end_to_end(tmp_path: Path, env: dict[str, str], mongo_uri: str) -> None:
    """With OPSKEEPER_LEDGER set to a MongoDB URL, run-now records there and history reads it back."""
    import uuid

    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    mongo_env = {**env, "OPSKEEPER_LEDGER": f"{mongo_uri.rstrip('/')}/cli_{uuid.uuid4().hex[:8]}"}
    ran = opskeeper("run-now", "fails", "--config", str(config), "--json", env=mongo_env)
    assert ran.code == 2, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    runs = json.loads(opskeeper("history", "--json", env=mongo_env).stdout)
    assert [(r["run_id"], r["status"]) for r in runs] == [(run_id, "fail")]


def test_closed_pipe_ends_quietly(tmp_path: Path, env: dict[str, str]) -> None:
    """`opskeeper jobs | head`: when the reader has gone, the command stops with 141 and no traceback."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    proc = subprocess.Popen([sys.executable, "-m", "worker", "jobs", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes its first line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert err == ""


def test_history_of_an_unknown_job_is_a_usage_error(tmp_path: Path, env: dict[str, str]) -> None:
    """`history --job` with a typo says there is no such job (64); a real job with no runs just has none yet."""
    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    typo = opskeeper("history", "--job", "sunday-bakup", "--config", str(config), env=env)
    assert typo.code == 64
    assert typo.stderr == (f"opskeeper: no job 'sunday-bakup' in {config} and no runs recorded for it; "
                           "jobs: sunday-backup, probe, paused, warns, fails, errors\n")  # fmt: skip
    quiet = opskeeper("history", "--job", "probe", "--config", str(config), env=env)
    assert (quiet.code, quiet.stdout) == (0, "no runs of probe recorded yet\n")


@pytest.mark.slow
def test_no_color_and_force_color(tmp_path: Path, env: dict[str, str]) -> None:
    """Console logs are coloured on FORCE_COLOR even into a pipe, and never with NO_COLOR."""
    config = write(tmp_path / "jobs.yaml", SCHEDULE)
    console = {**env, "OPSKEEPER_LOG_FORMAT": "console"}
    plain = opskeeper("run-now", "probe", "--config", str(config), env=console)
    forced = opskeeper("run-now", "probe", "--config", str(config), env={**console, "FORCE_COLOR": "1"})
    muted = opskeeper("run-now", "probe", "--config", str(config),
                      env={**console, "FORCE_COLOR": "1", "NO_COLOR": "1"})  # fmt: skip
    assert "job.finished" in plain.stderr
    assert "\x1b[" not in plain.stderr
    assert "\x1b[" in forced.stderr
    assert "job.finished" in muted.stderr
    assert "\x1b[" not in muted.stderr + muted.stdout


def test_color_follows_the_terminal_by_default() -> None:
    """On a real terminal colour is on, unless NO_COLOR; FORCE_COLOR=0 forces nothing."""
    import os

    from worker.reporting.log import use_color

    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as tty, open(os.devnull, "w") as pipe:  # noqa: PTH123 - an fd
            assert use_color(tty, {}) is True
            assert use_color(tty, {"NO_COLOR": "1"}) is False
            assert use_color(pipe, {}) is False
            assert use_color(pipe, {"FORCE_COLOR": "0"}) is False
            assert use_color(pipe, {"FORCE_COLOR": "1"}) is True
    finally:
        os.close(leader)
        os.close(follower)


def test_a_bad_proxy_setting_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """An unusable HTTPS_PROXY is named with its variable (78), with no traceback and no password."""
    result = opskeeper("deps", str(tmp_path), env={**env, "HTTPS_PROXY": "ftp://bob:hunter22@proxy:8021"})
    assert result.code == 78
    assert result.stderr == ("opskeeper: HTTPS_PROXY=ftp://proxy:8021: not a proxy URL; use http://, https://, "
                             "socks5:// or socks5h://\n")  # fmt: skip
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_lease_and_grace_rules_are_one_clear_line(env: dict[str, str]) -> None:
    """A renewal slower than half the lease, or a grace Render cannot give, is named (78); no setting leaks."""
    dsn = "https://0123456789abcdef@o1.ingest.sentry.io/42"
    slow = opskeeper("history", env={**env, "OPSKEEPER_LEASE_RENEW": "10s", "OPSKEEPER_LEASE_TTL": "15s",
                                     "SENTRY_DSN": dsn})  # fmt: skip
    assert slow.code == 78
    assert slow.stderr == ("opskeeper: invalid environment:\nOPSKEEPER_LEASE_RENEW (10s) must be at most half of "
                           "OPSKEEPER_LEASE_TTL (15s), so one missed renewal does not lose the lease\n")  # fmt: skip
    long = opskeeper("history", env={**env, "OPSKEEPER_SHUTDOWN_GRACE": "5m"})
    assert long.code == 78
    assert "OPSKEEPER_SHUTDOWN_GRACE (300s) must be under 300s" in long.stderr


def test_a_forked_command_is_what_python_m_worker_is(tmp_path: Path, env: dict[str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The tests' fork server (tests/forkserver.py) gives the output, exit code and environment of a fresh
    `python -m worker`: the same words for a bad file, and a command job sees the caller's variables only."""
    bad = write(tmp_path / "bad.yaml", "jobs:\n  - id: x\n    kind: command\n    schedule: every 0s\n")
    probe = write(tmp_path / "probe.yaml", 'jobs:\n  - id: env\n    kind: command\n    schedule: "@daily"\n    options:'
                  ' {shell: true, inherit_env: true, argv: ["echo home=$HOME probe=$FORK_PROBE"]}\n')  # fmt: skip
    caller = {k: v for k, v in env.items() if k != "HOME"} | {"FORK_PROBE": "yes"}

    def both(*args: str) -> list[tuple[int, str, str]]:
        spawned = subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, env=caller, capture_output=True,
                                 text=True, timeout=60, check=False)  # fmt: skip
        monkeypatch.delenv("OPSKEEPER_TEST_SPAWN", raising=False)
        forked = opskeeper(*args, env=caller)
        return [(spawned.returncode, spawned.stdout, spawned.stderr), (forked.code, forked.stdout, forked.stderr)]

    version, forked_version = both("--version")
    assert version == forked_version
    invalid, forked_invalid = both("validate", "--config", str(bad))
    assert invalid == forked_invalid
    assert invalid[0] == 78
    runs = both("run-now", "env", "--config", str(probe), "--json")
    assert [(code, json.loads(out)["details"]["stdout_tail"]) for code, out, _ in runs] == [
        (0, "home= probe=yes\n")
    ] * 2

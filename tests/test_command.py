"""The `command` kind: exit codes become outcomes, output tails are kept, stops kill the whole group."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jobs.command import CommandJob, CommandOptions
from worker.job import JobContext, Status
from worker.ledger import JobState, SqliteLedger

# The command kind keeps no state; the context still gets the real store a run gets.
_LEDGER = SqliteLedger(Path(tempfile.mkdtemp(prefix="opskeeper-command-")) / "ledger.db")


def context(timeout: float = 30, cancel: threading.Event | None = None) -> JobContext:
    return JobContext(
        job_id="cmd", run_id="r1", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + timeout,
        state=JobState(_LEDGER, "cmd"), cancel=cancel or threading.Event(), log=lambda *a, **k: None,
    )  # fmt: skip


def run(timeout: float = 30, **options: Any) -> Any:
    return CommandJob(CommandOptions(**options)).run(context(timeout))


def test_exit_zero_is_ok_with_output_tail() -> None:
    """Exit 0 is OK; stdout lands in details."""
    outcome = run(argv=["echo", "all good"])
    assert outcome.status is Status.OK
    assert outcome.details["exit_code"] == 0
    assert outcome.details["stdout_tail"] == "all good\n"


def test_nonzero_exit_is_fail_with_last_stderr_line_in_summary() -> None:
    """A failing script is FAIL, and the summary quotes its last stderr line."""
    outcome = run(shell=True, argv=["echo progress; echo 'backup is 26h old' >&2; exit 2"])
    assert outcome.status is Status.FAIL
    assert outcome.summary == "shell script exited 2: backup is 26h old"
    assert outcome.details["stderr_tail"] == "backup is 26h old\n"


def test_warn_codes_make_a_warning() -> None:
    """An exit code listed in warn_codes is WARN, others stay FAIL."""
    assert run(shell=True, argv=["exit 1"], warn_codes=[1]).status is Status.WARN
    assert run(shell=True, argv=["exit 3"], warn_codes=[1]).status is Status.FAIL


def test_fingerprint_ignores_changing_output() -> None:
    """Two failures with the same exit code but different messages group as one problem."""
    a = run(shell=True, argv=["echo '3 vulnerabilities' >&2; exit 1"])
    b = run(shell=True, argv=["echo '4 vulnerabilities' >&2; exit 1"])
    assert a.problem_key() == b.problem_key()


def test_argv_is_not_run_through_a_shell_by_default(tmp_path: Path) -> None:
    """Without shell: true, metacharacters are plain arguments."""
    outcome = run(argv=["echo", "$HOME; touch pwned"], cwd=str(tmp_path))
    assert outcome.details["stdout_tail"] == "$HOME; touch pwned\n"
    assert not (tmp_path / "pwned").exists()


def test_cwd_and_env_are_applied(tmp_path: Path) -> None:
    """The program runs in cwd with env added to the daemon's environment."""
    outcome = run(shell=True, argv=['pwd; echo "$OPS_GREETING"; test -n "$PATH"'], cwd=str(tmp_path),
                  env={"OPS_GREETING": "hello"})  # fmt: skip
    assert outcome.status is Status.OK
    assert outcome.details["stdout_tail"] == f"{tmp_path}\nhello\n"


def test_missing_cwd_is_a_failure_naming_it(tmp_path: Path) -> None:
    """A working directory that does not exist fails with its path."""
    outcome = run(argv=["true"], cwd=str(tmp_path / "server"))
    assert outcome.status is Status.FAIL
    assert outcome.summary == f"working directory does not exist: {tmp_path / 'server'}"


def test_missing_program_raises_for_the_runner() -> None:
    """A program that does not exist is an error (the runner turns it into ERROR)."""
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        run(argv=["no-such-program-xyz"])


def test_output_tail_is_bounded() -> None:
    """A chatty program keeps only the last 4 KiB of each stream in memory and details."""
    outcome = run(shell=True, argv=["yes 0123456789 | head -c 5000000; echo END"])
    tail = outcome.details["stdout_tail"]
    assert len(tail.encode()) <= 4096
    assert tail.endswith("END\n")


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    """When the run is cancelled, the script and its children are killed and the job returns."""
    pid_file = tmp_path / "child.pid"
    cancel = threading.Event()
    job = CommandJob(CommandOptions(shell=True, argv=[f"sleep 60 & echo $! > {pid_file}; wait"]))
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(job.run(context(cancel=cancel))))
    thread.start()
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()):  # the child announces itself
        assert time.monotonic() < deadline, "script never started"
        time.sleep(0.01)
    child = int(pid_file.read_text())
    cancel.set()
    thread.join(15)
    assert result[0].status is Status.FAIL
    assert result[0].summary == "shell script was stopped before it finished"
    assert not alive(child)


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_past_deadline_the_program_is_stopped() -> None:
    """A program still running at the run's deadline is stopped."""
    outcome = run(timeout=0.3, argv=["sleep", "30"])
    assert outcome.status is Status.FAIL
    assert outcome.details["exit_code"] == -15


@pytest.mark.parametrize(
    ("options", "message"),
    [({"argv": []}, "at least 1 item"), ({"argv": ["a", "b"], "shell": True}, "single string"),
     ({"argv": ["x"], "warn_codes": [0]}, "greater than or equal to 1")],
)  # fmt: skip
def test_options_are_validated(options: dict[str, Any], message: str) -> None:
    """Empty argv, multi-item shell scripts and warn code 0 are rejected."""
    with pytest.raises(ValueError, match=message):
        CommandOptions(**options)


# --- what a child process may see, and that it never outlives us ---------------------------


def test_a_command_sees_a_minimal_environment_and_its_own_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's secrets stay out; PATH, HOME, a credential-free proxy and the job's env go in."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    monkeypatch.setenv("SENTRY_DSN", "https://k@o1.ingest.sentry.io/1")
    monkeypatch.setenv("MONGODB_URI", "mongodb://u:pw@db/")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://user:proxy-pw@proxy.internal:3128")
    outcome = run(argv=["env"], env={"PNPM_HOME": "/opt/pnpm"})
    seen = dict(line.split("=", 1) for line in outcome.details["stdout_tail"].splitlines())
    assert {"AWS_SECRET_ACCESS_KEY", "SENTRY_DSN", "MONGODB_URI", "HTTP_PROXY"}.isdisjoint(seen)
    assert seen["HTTPS_PROXY"] == "http://proxy.internal:3128"
    assert seen["PNPM_HOME"] == "/opt/pnpm"
    assert "PATH" in seen
    everything = run(argv=["env"], inherit_env=True)
    assert "AWS_SECRET_ACCESS_KEY=aws-secret-value" in everything.details["stdout_tail"]


def test_the_operators_ca_reaches_node_children_too() -> None:
    """SSL_CERT_FILE is also given as NODE_EXTRA_CA_CERTS (Node.js reads only that); one set by hand wins."""
    from worker.children import child_env

    assert child_env(environ={"SSL_CERT_FILE": "/etc/corp.pem"})["NODE_EXTRA_CA_CERTS"] == "/etc/corp.pem"
    mine = child_env(environ={"SSL_CERT_FILE": "/etc/corp.pem", "NODE_EXTRA_CA_CERTS": "/etc/node-extra.pem"})
    assert mine["NODE_EXTRA_CA_CERTS"] == "/etc/node-extra.pem"
    assert "NODE_EXTRA_CA_CERTS" not in child_env(environ={"PATH": "/usr/bin"})


@pytest.mark.slow
def test_run_now_timeout_leaves_no_process_behind(tmp_path: Path) -> None:
    """run-now of a command past its timeout exits with no process of its tree left running."""
    import psutil

    from tests.conftest import clean_env, opskeeper, write

    marker = f"opskeeper-test-{tmp_path.name}"
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: slow
    kind: command
    schedule: "@daily"
    timeout: 1s
    options: {{argv: [sh, -c, "sleep 3000.25 & sleep 3000.5 & wait", {marker}]}}
""")  # fmt: skip
    result = opskeeper("run-now", "slow", "--config", str(config), "--json",
                       env=clean_env(OPSKEEPER_LEDGER=str(tmp_path / "l.db")))  # fmt: skip
    assert result.code == 3, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "timeout"
    left = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and
            (marker in p.info["cmdline"] or p.info["cmdline"][-1] in ("3000.25", "3000.5"))]  # fmt: skip
    _gone, still = psutil.wait_procs(left, timeout=5)
    assert still == []


def test_a_child_dies_with_its_parent_even_on_kill_9(tmp_path: Path) -> None:
    """A program started through worker.children is killed by the kernel when its parent is kill -9'd."""
    import signal
    import subprocess
    import sys

    import psutil

    from tests.conftest import ROOT

    script = ("from worker import children; import sys, time\n"
              "p = children.spawn(['sleep', '300'], children.child_env())\n"
              "print(p.pid, flush=True); time.sleep(300)")  # fmt: skip
    with subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        parent.send_signal(signal.SIGKILL)
    child.wait(timeout=10)  # raises TimeoutExpired if the kernel did not kill it (it is not our child to reap)
    assert not child.is_running()

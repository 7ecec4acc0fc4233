"""The daemon as a real process: runs land in the ledger, live reloads, graceful stop, timeouts."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, SentryReceiver, opskeeper, write
from worker.job import Status
from worker.ledger import SqliteLedger

Start = Callable[[Path, dict[str, str]], DaemonProcess]


def job(job_id: str, schedule: str, argv: str, extra: str = "") -> str:
    return f"  - id: {job_id}\n    kind: command\n    schedule: {schedule}\n{extra}    options: {{argv: {argv}}}\n"


def ledger_of(env: dict[str, str]) -> SqliteLedger:
    return SqliteLedger(Path(env["OPSKEEPER_LEDGER"]))


def test_every_second_jobs_run_and_land_in_the_ledger(
    tmp_path: Path, env: dict[str, str], daemon_factory: Start
) -> None:
    """Two `every 1s` jobs run repeatedly; each finished run is in the ledger with its status."""
    config = write(tmp_path / "jobs.yaml", "jobs:\n" + job("tick", "every 1s", "[echo, tick]")
                   + job("tock", "every 1s", "[sh, -c, 'exit 3']"))  # fmt: skip
    daemon = daemon_factory(config, env)
    daemon.wait_for(lambda e: e["event"] == "daemon.started")
    _, first_tick = daemon.finished("tick")
    index, _ = daemon.finished("tock")
    _, second_tick = daemon.finished("tick", after=index + 1)
    assert daemon.terminate() == 0
    ledger = ledger_of(env)
    stored = {r.run_id: r for r in ledger.recent(limit=100)}
    assert stored[first_tick["run_id"]].status is Status.OK
    assert stored[second_tick["run_id"]].status is Status.OK
    tocks = [r for r in stored.values() if r.job_id == "tock"]
    assert tocks
    assert all(r.status is Status.FAIL for r in tocks)
    assert all(r.scheduled_at is not None and r.finished_at is not None for r in stored.values())


@pytest.mark.slow
def test_editing_the_file_reschedules_without_restart(
    tmp_path: Path, env: dict[str, str], daemon_factory: Start
) -> None:
    """Saving a changed schedule swaps jobs in the running daemon; the removed job stops running."""
    config = write(tmp_path / "jobs.yaml", "jobs:\n" + job("old", "every 1s", "['true']"))
    daemon = daemon_factory(config, {**env, "OPSKEEPER_RELOAD_POLL": "100ms"})
    daemon.finished("old")
    pid_before = daemon.proc.pid
    write(config, "jobs:\n" + job("new", "every 1s", "['true']"))
    reload_at, reloaded = daemon.wait_for(lambda e: e["event"] == "config.reloaded")
    assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (["new"], ["old"], [])
    index, _ = daemon.finished("new", after=reload_at)
    daemon.finished("new", after=index + 1)
    # `old` ran every second before; over the two seconds of `new` runs it must not have started.
    late_starts = [e for e in daemon.events[reload_at + 2 :] if e["event"] == "job.started" and e["job_id"] == "old"]
    assert late_starts == []
    assert daemon.proc.pid == pid_before
    assert daemon.terminate() == 0


@pytest.mark.slow
def test_changed_job_is_rescheduled_and_unchanged_job_is_left_alone(
    tmp_path: Path, env: dict[str, str], daemon_factory: Start
) -> None:
    """Only the jobs whose definition changed are rescheduled on reload."""
    keep = job("keep", "every 1s", "['true']")
    config = write(tmp_path / "jobs.yaml", "jobs:\n" + keep + job("edit", "every 1s", "[echo, one]"))
    daemon = daemon_factory(config, {**env, "OPSKEEPER_RELOAD_POLL": "100ms"})
    daemon.finished("edit")
    write(config, "jobs:\n" + keep + job("edit", "every 1s", "[echo, two]"))
    reload_at, reloaded = daemon.wait_for(lambda e: e["event"] == "config.reloaded")
    assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == ([], [], ["edit"])
    daemon.finished("edit", after=reload_at)
    assert daemon.terminate() == 0
    newest = ledger_of(env).recent("edit", limit=1)[0]
    assert newest.details["stdout_tail"] == "two\n"


@pytest.mark.slow
def test_invalid_edit_keeps_the_running_schedule(
    tmp_path: Path, env: dict[str, str], daemon_factory: Start, sentry: SentryReceiver
) -> None:
    """A broken save is logged with FILE:LINE:COL and sent to Sentry, and the old schedule keeps running."""
    config = write(tmp_path / "jobs.yaml", "jobs:\n" + job("steady", "every 1s", "['true']"))
    daemon = daemon_factory(config, {**env, "OPSKEEPER_RELOAD_POLL": "100ms", "SENTRY_DSN": sentry.dsn})
    daemon.finished("steady")
    write(config, "jobs:\n" + job("steady", "'0 3 * * 8'", "['true']"))
    bad_at, invalid = daemon.wait_for(lambda e: e["event"] == "config.invalid")
    assert invalid["level"] == "error"
    assert invalid["errors"] == [
        f"{config}:4:15: jobs[0] (steady).schedule: '0 3 * * 8': day-of-week: 8 is out of range; it must be 0-7 "
        "or sun-sat"
    ]
    index, _ = daemon.finished("steady", after=bad_at)
    daemon.finished("steady", after=index + 1)
    problem = next(e for e in sentry.wait_items("event", 1) if e["fingerprint"] == ["opskeeper", "config-invalid"])
    assert problem["level"] == "error"
    assert "day-of-week: 8 is out of range" in str(problem)
    # SIGHUP asks again explicitly, and the same error is reported again.
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda e: e["event"] == "config.invalid", after=bad_at + 1)
    assert daemon.terminate() == 0


def test_sigterm_during_a_long_job_exits_0_and_records_interrupted(
    tmp_path: Path, env: dict[str, str], daemon_factory: Start
) -> None:
    """SIGTERM: running jobs get the grace, then are recorded `interrupted`; exit code 0; child killed."""
    pid_file = tmp_path / "sleep.pid"
    script = f'["echo $$$$ > {pid_file}; exec sleep 60"]'  # $$ is YAML-escaped $
    config = write(tmp_path / "jobs.yaml", "jobs:\n  - id: long\n    kind: command\n    schedule: every 1s\n"
                   f"    timeout: 5m\n    options:\n      shell: true\n      argv: {script}\n")  # fmt: skip
    daemon = daemon_factory(config, {**env, "OPSKEEPER_SHUTDOWN_GRACE": "1s"})
    _, started = daemon.wait_for(lambda e: e["event"] == "job.started" and e["job_id"] == "long")
    assert daemon.terminate(timeout=20) == 0
    events = [e["event"] for e in daemon.events]
    assert events.index("daemon.stopping") < events.index("daemon.interrupting") < events.index("daemon.stopped")
    record = ledger_of(env).get(started["run_id"])
    assert record is not None
    assert record.status is Status.INTERRUPTED
    assert record.summary == "the daemon stopped before this run ended"
    child = int(pid_file.read_text())
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_hung_job_past_timeout_does_not_stop_others(tmp_path: Path, env: dict[str, str], daemon_factory: Start) -> None:
    """A job that hangs (ignoring SIGTERM) is recorded `timeout`; other jobs keep their schedule."""
    hang = "  - id: hang\n    kind: command\n    schedule: every 1s\n    timeout: 1s\n    options:\n" \
           "      shell: true\n      argv: [\"trap '' TERM; sleep 30\"]\n"  # fmt: skip
    config = write(tmp_path / "jobs.yaml", "jobs:\n" + hang + job("beat", "every 1s", "['true']"))
    daemon = daemon_factory(config, env)
    timed_out_at, timed_out = daemon.finished("hang")
    assert timed_out["status"] == "timeout"
    index, _ = daemon.finished("beat", after=timed_out_at)
    index, _ = daemon.finished("beat", after=index + 1)
    daemon.finished("beat", after=index + 1)
    assert daemon.terminate() == 0


def test_overlapping_run_is_recorded_as_missed(tmp_path: Path, env: dict[str, str], daemon_factory: Start) -> None:
    """A run due while the previous one still runs is skipped — and recorded and logged, not silent."""
    config = write(tmp_path / "jobs.yaml", "jobs:\n" + job("slow", "every 1s", "[sleep, '2.5']"))
    daemon = daemon_factory(config, env)
    _, missed = daemon.wait_for(lambda e: e["event"] == "job.missed")
    assert missed["level"] == "warning"
    assert missed["summary"] == "skipped: the previous run was still running"
    assert daemon.terminate() == 0
    record = ledger_of(env).get(missed["run_id"])
    assert record is not None
    assert record.status is Status.MISSED


def test_run_for_stops_by_itself(tmp_path: Path, env: dict[str, str], daemon_factory: Start) -> None:
    """`opskeeper run --for` (used by `make demo`) stops by itself with exit 0."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    config = write(tmp_path / "jobs.yaml", "jobs:\n" + job("tick", "every 1s", "['true']"))
    proc = subprocess.run([sys.executable, "-m", "worker", "run", "--config", str(config), "--for", "2s"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 0
    assert '"event": "daemon.stopped"' in proc.stdout
    assert ledger_of(env).recent("tick")


def test_half_written_file_is_not_reported_as_invalid(
    tmp_path: Path, env: dict[str, str], daemon_factory: Start
) -> None:
    """A save that passes through a broken state is reloaded once settled, with no config.invalid noise."""
    config = write(tmp_path / "jobs.yaml", "jobs:\n" + job("first", "every 1s", "['true']"))
    daemon = daemon_factory(config, {**env, "OPSKEEPER_RELOAD_POLL": "300ms"})
    daemon.finished("first")
    config.write_text("jobs:\n  - id: second\n    kind: comm")  # an editor mid-save, in place
    seen, _ = daemon.wait_for(lambda e: e["event"] == "config.changed")  # the daemon saw the broken state
    config.write_text("jobs:\n" + job("second", "every 1s", "['true']"))
    at, reloaded = daemon.wait_for(lambda e: e["event"] == "config.reloaded", after=seen)
    assert reloaded["added"] == ["second"]
    assert not [e for e in daemon.events[:at] if e["event"] == "config.invalid"]
    assert daemon.terminate() == 0


def test_hostile_reloads_keep_the_running_schedule(tmp_path: Path, env: dict[str, str], daemon_factory: Start) -> None:
    """Billion laughs, 5000 '[', a huge timeout and a recursive alias: each reload is config.invalid; jobs go on."""
    from tests.test_config import LAUGHS

    config = write(tmp_path / "jobs.yaml", "jobs:\n" + job("steady", "every 1s", "['true']"))
    daemon = daemon_factory(config, {**env, "OPSKEEPER_RELOAD_POLL": "100ms"})
    at, _ = daemon.finished("steady")
    hostile = [LAUGHS, "jobs: " + "[" * 5000 + "\n", "jobs:\n" + job("steady", "every 1s", "['true']")
               + "    timeout: 99999999999d\n", "jobs: &a [*a]\n"]  # fmt: skip
    for text in hostile:
        write(config, text)
        at, invalid = daemon.wait_for(lambda e: e["event"] == "config.invalid", after=at + 1)
        assert invalid["summary"] == "kept the running schedule; fix the file and save it again"
        at, _ = daemon.finished("steady", after=at)
    assert daemon.proc.poll() is None
    assert daemon.terminate() == 0


def test_a_reload_to_no_jobs_is_refused_and_validate_warns(tmp_path: Path, env: dict[str, str],
                                                           daemon_factory: Start) -> None:  # fmt: skip
    """`jobs: []` saved over a running schedule: config.invalid naming the rule, the jobs go on; `validate` of that
    file passes with a warning that the daemon would run nothing."""
    config = write(tmp_path / "jobs.yaml", "jobs:\n" + job("steady", "every 1s", "['true']"))
    daemon = daemon_factory(config, {**env, "OPSKEEPER_RELOAD_POLL": "100ms"})
    at, _ = daemon.finished("steady")
    write(config, "jobs: []\n")
    at, invalid = daemon.wait_for(lambda e: e["event"] == "config.invalid", after=at + 1)
    assert invalid["summary"].startswith("the file now has no jobs: kept the running schedule")
    daemon.finished("steady", after=at)
    assert daemon.terminate() == 0
    checked = opskeeper("validate", "--config", str(config), env=env)
    assert (checked.code, checked.stdout) == (0, "OK: 0 jobs\n")
    assert checked.stderr.startswith(f"WARNING: {config} has no jobs: the daemon would run nothing")

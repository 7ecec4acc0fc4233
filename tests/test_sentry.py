"""Sentry through a local envelope receiver: Crons check-ins, one grouped event per alert, no secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import SentryReceiver, free_port_closed, opskeeper, write

CRON_JOB = """\
timezone: Europe/Berlin
jobs:
  - id: weekly-audit
    kind: command
    schedule: "0 3 * * 0"
    options:
      argv: [echo, "0 vulnerabilities"]
  - id: export-check
    kind: command
    schedule: every 90s
    misfire_grace: 3m
    timeout: 2h30m
    options:
      shell: true
      argv: ["echo \\"export is $(( $(date +%s) % 50 + 25 ))h old\\" >&2; exit 2"]
"""


def test_ok_run_sends_in_progress_and_ok_checkins_with_monitor_config(
    tmp_path: Path, env: dict[str, str], sentry: SentryReceiver
) -> None:
    """A run yields `in_progress` then `ok` for the job's monitor, carrying its schedule as config."""
    config = write(tmp_path / "jobs.yaml", CRON_JOB)
    result = opskeeper("run-now", "weekly-audit", "--config", str(config),
                       env={**env, "SENTRY_DSN": sentry.dsn, "SENTRY_ENVIRONMENT": "staging",
                            "RENDER_GIT_COMMIT": "abc1234"})  # fmt: skip
    assert result.code == 0, result.stderr
    checkins = sentry.wait_items("check_in", 2)
    assert [c["status"] for c in checkins] == ["in_progress", "ok"]
    assert {c["monitor_slug"] for c in checkins} == {"weekly-audit"}
    assert checkins[0]["check_in_id"] == checkins[1]["check_in_id"]
    assert isinstance(checkins[1]["duration"], float)
    assert checkins[1]["environment"] == "staging"
    assert checkins[1]["release"] == "abc1234"
    for checkin in checkins:
        assert checkin["monitor_config"] == {
            "schedule": {"type": "crontab", "value": "0 3 * * 0"},
            "timezone": "Europe/Berlin",
            "checkin_margin": 10,
            "max_runtime": 60,
            "failure_issue_threshold": 1,
            "recovery_threshold": 1,
        }
    assert sentry.items("event") == []
    transactions = sentry.items("transaction")
    assert [t["transaction"] for t in transactions] == ["weekly-audit"]
    assert transactions[0]["tags"]["job_id"] == "weekly-audit"
    assert all(path == "/api/42/envelope/" for path in sentry.paths)


def test_failing_run_sends_error_checkin_and_exactly_one_event(
    tmp_path: Path, env: dict[str, str], sentry: SentryReceiver
) -> None:
    """A failing run: an `error` check-in and one event tagged and fingerprinted by job and problem."""
    config = write(tmp_path / "jobs.yaml", CRON_JOB)
    result = opskeeper("run-now", "export-check", "--config", str(config), env={**env, "SENTRY_DSN": sentry.dsn})
    assert result.code == 2
    checkins = sentry.wait_items("check_in", 2)
    assert [c["status"] for c in checkins] == ["in_progress", "error"]
    assert checkins[1]["monitor_config"]["schedule"] == {"type": "interval", "value": 2, "unit": "minute"}
    assert (checkins[1]["monitor_config"]["checkin_margin"], checkins[1]["monitor_config"]["max_runtime"]) == (3, 150)
    events = sentry.wait_items("event", 1)
    assert len(events) == 1
    event = events[0]
    assert event["tags"]["job_id"] == "export-check"
    assert event["tags"]["kind"] == "command"
    assert event["tags"]["status"] == "fail"
    assert event["level"] == "error"
    assert event["fingerprint"][:3] == ["opskeeper", "export-check", "fail"]
    # The script's number changes from run to run (to prove the fingerprint ignores numbers).
    assert re.fullmatch(r"export-check fail: shell script exited 2: export is \d+h old", event["message"])


def test_repeats_of_a_problem_share_one_fingerprint(
    tmp_path: Path, env: dict[str, str], sentry: SentryReceiver
) -> None:
    """Two failures that differ only in numbers group into one Sentry issue."""
    config = write(tmp_path / "jobs.yaml", CRON_JOB)
    fingerprints: list[Any] = []
    for n in (1, 2):
        opskeeper("run-now", "export-check", "--config", str(config), env={**env, "SENTRY_DSN": sentry.dsn})
        fingerprints.append(sentry.wait_items("event", n)[-1]["fingerprint"])
    assert fingerprints[0] == fingerprints[1]


def test_secrets_appear_neither_in_stdout_nor_in_any_envelope(
    tmp_path: Path, env: dict[str, str], sentry: SentryReceiver
) -> None:
    """A token from the environment, a password in a URL and the DSN key never leave the process."""
    token = "ghp_SuperSecretToken1234567890"
    db_password = "Hunter2-db-pass"
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: leaky
    kind: command
    schedule: "@daily"
    options:
      shell: true
      env:
        API_TOKEN: "${API_TOKEN}"
        DATABASE_URL: "mongodb+srv://app:${DB_PASSWORD}@cluster0.example.net/prod"
      argv: ["echo token=$API_TOKEN url=$DATABASE_URL; echo Authorization: Bearer $API_TOKEN >&2; exit 1"]
""")  # fmt: skip
    run_env = {**env, "SENTRY_DSN": sentry.dsn, "API_TOKEN": token, "DB_PASSWORD": db_password}
    result = opskeeper("run-now", "leaky", "--config", str(config), "--json", env=run_env)
    assert result.code == 2
    sentry.wait_items("event", 1)
    sentry.wait_items("check_in", 2)
    dsn_key = "0123456789abcdef0123456789abcdef"
    for secret in (token, db_password, dsn_key):
        assert secret not in result.stdout
        assert secret not in result.stderr
    # The DSN's public key authenticates each envelope to Sentry itself, so only the others count there.
    for secret in (token, db_password):
        for envelope in sentry.envelopes:
            assert secret.encode() not in envelope.raw
    assert "mongodb+srv://app:***@cluster0.example.net/prod" in result.stdout


def test_unreachable_sentry_does_not_break_a_run(tmp_path: Path, env: dict[str, str]) -> None:
    """With Sentry's port closed, the run still succeeds and is recorded."""
    config = write(tmp_path / "jobs.yaml", CRON_JOB)
    dsn = f"http://0123456789abcdef0123456789abcdef@127.0.0.1:{free_port_closed()}/1"
    result = opskeeper("run-now", "weekly-audit", "--config", str(config), env={**env, "SENTRY_DSN": dsn})
    assert result.code == 0
    assert result.stdout.strip().endswith("OK: weekly-audit: echo exited 0")
    history = opskeeper("history", "--json", env=env)
    assert '"status": "ok"' in history.stdout


def test_hanging_sentry_does_not_hold_the_run(tmp_path: Path, env: dict[str, str], stuck_server: int) -> None:
    """A Sentry that accepts connections but never answers: the run finishes and the process exits."""
    config = write(tmp_path / "jobs.yaml", CRON_JOB)
    dsn = f"http://0123456789abcdef0123456789abcdef@127.0.0.1:{stuck_server}/1"
    result = opskeeper("run-now", "weekly-audit", "--config", str(config), env={**env, "SENTRY_DSN": dsn}, timeout=30)
    assert result.code == 0
    assert "OK: weekly-audit" in result.stdout


def test_no_dsn_sends_nothing(tmp_path: Path, env: dict[str, str], sentry: SentryReceiver) -> None:
    """Without SENTRY_DSN, nothing is sent anywhere."""
    config = write(tmp_path / "jobs.yaml", CRON_JOB)
    assert opskeeper("run-now", "export-check", "--config", str(config), env=env).code == 2
    assert sentry.envelopes == []


def test_exit_waits_for_sentry_once(stuck_server: int) -> None:
    """flush() at exit closes the client, so the SDK's exit hook has nothing left to wait for a second time."""
    import sentry_sdk

    from worker.reporting.redact import Redactor
    from worker.reporting.sentry import SentryReporter

    dsn = f"http://0123456789abcdef0123456789abcdef@127.0.0.1:{stuck_server}/1"
    reporter = SentryReporter(dsn, environment="test", release=None, traces_sample_rate=0.0, redactor=Redactor())
    sentry_sdk.capture_message("queued for a Sentry that never answers")
    assert sentry_sdk.get_client().transport is not None
    reporter.flush()
    assert sentry_sdk.get_client().transport is None  # the exit hook's close() returns at once

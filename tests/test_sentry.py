"""Sentry through a local envelope receiver: Crons check-ins, one grouped event per alert, no secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Reply, SentryReceiver, VendorAPI, free_port_closed, opskeeper, write

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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- traces, redaction, monitors, sampling, outages (issue 15) ---------------------------------


def trace_of(item: dict[str, Any]) -> str:
    return str(item["contexts"]["trace"]["trace_id"])


@pytest.mark.slow
def test_each_run_is_its_own_trace_shared_by_its_checkins_and_event(
    tmp_path: Path, env: dict[str, str], sentry: SentryReceiver, daemon_factory: Any
) -> None:
    """In one daemon, every run has its own trace id; its two check-ins and its alert event share it."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: good
    kind: command
    schedule: every 1s
    options: {argv: ["true"]}
  - id: bad
    kind: command
    schedule: every 1s
    options: {argv: [sh, -c, "exit 1"]}
""")  # fmt: skip
    daemon = daemon_factory(config, {**env, "SENTRY_DSN": sentry.dsn})
    index = 0
    for _ in range(2):
        index, _ = daemon.finished("bad", after=index + 1)
    daemon.finished("good")
    assert daemon.terminate() == 0
    checkins = sentry.wait_items("check_in", 8)
    by_id: dict[str, set[str]] = {}
    for checkin in checkins:
        by_id.setdefault(checkin["check_in_id"], set()).add(trace_of(checkin))
    assert all(len(traces) == 1 for traces in by_id.values())  # opening and closing check-in: one trace
    traces = [next(iter(t)) for t in by_id.values()]
    assert len(set(traces)) == len(traces) >= 4  # no two runs share one
    error_traces = {trace_of(c) for c in checkins if c["status"] == "error"}
    events = sentry.wait_items("event", 2)
    assert {trace_of(e) for e in events} <= error_traces
    assert len({trace_of(e) for e in events}) == len(events)


def test_sentrys_plain_fields_survive_a_secret_that_is_a_common_word(
    tmp_path: Path, env: dict[str, str], sentry: SentryReceiver
) -> None:
    """A secret whose value is 'production' is masked in messages, never in environment or trace headers."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: leaky
    kind: command
    schedule: "@daily"
    options: {argv: [sh, -c, "echo deploying production >&2; exit 1"]}
""")  # fmt: skip
    result = opskeeper("run-now", "leaky", "--config", str(config),
                       env={**env, "SENTRY_DSN": sentry.dsn, "REALM_SECRET": "production"})  # fmt: skip
    assert result.code == 2
    sentry.wait_items("event", 1)
    # The payloads that carry a top-level environment: a client report (what the SDK dropped: on a loaded
    # machine, a span, 'buffer_overflow') has none.
    items = [p for e in sentry.envelopes for h, p in e.items if h.get("type") in ("event", "transaction", "check_in")]
    assert items
    assert {item["environment"] for item in items} == {"production"}
    # A client report's envelope has no trace header: on a loaded machine the SDK sends one for a span it dropped.
    for envelope in (e for e in sentry.envelopes if any(h.get("type") != "client_report" for h, _ in e.items)):
        assert envelope.header["trace"]["environment"] == "production"
        assert envelope.header["trace"]["public_key"] == "0123456789abcdef0123456789abcdef"
    [event] = sentry.items("event")
    assert event["message"] == "leaky fail: sh exited 1: deploying ***"


@pytest.mark.slow
def test_monitor_blocks_shape_the_checkins(tmp_path: Path, env: dict[str, str], sentry: SentryReceiver,
                                           vendor: VendorAPI) -> None:  # fmt: skip
    """Defaults and job monitor blocks merge; upsert false sends no config; enabled false sends no check-in; the
    owner team named by slug is sent as its numeric id, looked up in the organization's teams."""
    vendor.routes["/api/0/organizations/acme/teams/"] = lambda r: Reply(200, [  # type: ignore[arg-type]
        {"id": "4502", "slug": "web"}, {"id": "4509", "slug": "ops", "name": "Ops"}])  # fmt: skip
    config = write(tmp_path / "jobs.yaml", """\
defaults:
  monitor: {failure_issue_threshold: 3, owner: "team:ops"}
jobs:
  - id: shaped
    kind: command
    schedule: every 10m
    misfire_grace: 3m
    jitter: 2m
    timeout: 7d
    monitor: {recovery_threshold: 2}
    options: {argv: ["true"]}
  - id: hands-off
    kind: command
    schedule: "@daily"
    monitor: {upsert: false}
    options: {argv: ["true"]}
  - id: unmonitored
    kind: command
    schedule: "@daily"
    monitor: {enabled: false}
    options: {argv: ["true"]}
""")  # fmt: skip
    run_env = {**env, "SENTRY_DSN": sentry.dsn, "SENTRY_ORG": "acme", "SENTRY_AUTH_TOKEN": "sntrys_test",
               "SENTRY_API_URL": vendor.url}  # fmt: skip
    for job in ("shaped", "hands-off", "unmonitored"):
        assert opskeeper("run-now", job, "--config", str(config), env=run_env).code == 0
    checkins = sentry.wait_items("check_in", 4)
    assert {c["monitor_slug"] for c in checkins} == {"shaped", "hands-off"}
    shaped = next(c for c in checkins if c["monitor_slug"] == "shaped" and c["status"] == "ok")["monitor_config"]
    assert (shaped["failure_issue_threshold"], shaped["recovery_threshold"], shaped["owner"]) == (3, 2, "team:4509")
    assert (shaped["checkin_margin"], shaped["max_runtime"]) == (5, 10080)  # margin covers grace + jitter
    assert all("monitor_config" not in c for c in checkins if c["monitor_slug"] == "hands-off")


OWNED = """\
jobs:
  - id: nightly
    kind: command
    schedule: "@daily"
    monitor: {{owner: "{owner}"}}
    options: {{argv: ["true"]}}
"""


@pytest.mark.parametrize(("owner", "with_token", "code", "said"), [
    ("team:ops", False, 78, "monitor owner team:ops: Sentry Crons takes a team's numeric id (team:ID); set "
                            "SENTRY_ORG and a SENTRY_AUTH_TOKEN with org:read"),
    ("team:ops", True, 0, "OK: 1 jobs"),
    ("team:sre", True, 78, "monitor owner team:sre: no such team in the Sentry organization (it has: ops, web)"),
    ("team:4509", False, 0, "OK: 1 jobs"),
    ("user:12345", False, 0, "OK: 1 jobs"),
])  # fmt: skip
def test_validate_refuses_a_team_slug_it_cannot_resolve(
    tmp_path: Path, env: dict[str, str], vendor: VendorAPI, owner: str, with_token: bool, code: int, said: str
) -> None:
    """A slug owner is looked up when a token allows (GET /api/0/organizations/{org}/teams/); without one, or for
    a team the organization has not, validate refuses it with the reason. Ids need no lookup."""
    vendor.routes["/api/0/organizations/acme/teams/"] = lambda r: Reply(200, [  # type: ignore[arg-type]
        {"id": "4502", "slug": "web"}, {"id": "4509", "slug": "ops"}])  # fmt: skip
    config = write(tmp_path / "jobs.yaml", OWNED.format(owner=owner))
    token = (
        {"SENTRY_ORG": "acme", "SENTRY_AUTH_TOKEN": "sntrys_test", "SENTRY_API_URL": vendor.url} if with_token else {}
    )
    result = opskeeper("validate", "--config", str(config), env={**env, **token})
    assert result.code == code
    assert said in result.stdout + result.stderr
    asked = [r for r in vendor.requests if r.path.endswith("/teams/")]
    assert bool(asked) is (with_token and not owner[5:].isdigit())
    assert all(r.headers["authorization"] == "Bearer sntrys_test" for r in asked)


def test_transactions_are_sampled_by_frequency_unless_a_job_says(tmp_path: Path) -> None:
    """Hourly or slower: every run; every 1m: 1 in 60; */5 cron: 1 in 12; a job's own rate or the process's wins."""
    from worker.reporting.sentry import sample_rate
    from worker.schedule import JobSpec
    from worker.timespec import parse_schedule

    def job(schedule: str, **extra: Any) -> JobSpec:
        return JobSpec(id="j", kind="command", schedule=parse_schedule(schedule), **extra)

    assert sample_rate(job("@hourly")) == 1.0
    assert sample_rate(job("0 3 * * *")) == 1.0
    assert sample_rate(job("every 1m")) == 1 / 60
    assert sample_rate(job("*/5 * * * *")) == 1 / 12
    assert sample_rate(job("every 1m", traces_sample_rate=0.5)) == 0.5
    assert sample_rate(job("every 1m"), default=0.25) == 0.25


def test_a_job_with_rate_zero_sends_no_transaction(tmp_path: Path, env: dict[str, str], sentry: SentryReceiver) -> None:
    """traces_sample_rate: 0 keeps the check-ins and drops the transaction; 1 sends it."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: quiet
    kind: command
    schedule: "@daily"
    traces_sample_rate: 0
    options: {argv: ["true"]}
  - id: traced
    kind: command
    schedule: "@daily"
    traces_sample_rate: 1
    options: {argv: ["true"]}
""")  # fmt: skip
    for job in ("quiet", "traced"):
        assert opskeeper("run-now", job, "--config", str(config), env={**env, "SENTRY_DSN": sentry.dsn}).code == 0
    sentry.wait_items("check_in", 4)
    assert [t["transaction"] for t in sentry.wait_items("transaction", 1)] == ["traced"]


@pytest.mark.slow
def test_recovery_resolves_the_down_issue_through_the_web_api(
    tmp_path: Path, env: dict[str, str], sentry: SentryReceiver, vendor: Any, app: Any
) -> None:
    """DOWN then recovered: the recovery finds the DOWN issue by its tag and PUTs it resolved."""
    from tests.conftest import Reply

    healthy = {"now": False}
    app.routes["/api/health"] = lambda n: Reply(200 if healthy["now"] else 500)
    vendor.routes["/api/0/organizations/acme/issues/"] = lambda r: Reply(200, [{"id": "4242"}])
    vendor.routes["/api/0/organizations/acme/issues/4242/"] = lambda r: Reply(200, {"id": "4242", "status": "resolved"})
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: api-health
    kind: health
    schedule: every 1m
    options:
      failure_threshold: 1
      success_threshold: 1
      endpoints: [{{name: backend, url: "{app.url("/api/health")}"}}]
""")  # fmt: skip
    run_env = {**env, "SENTRY_DSN": sentry.dsn, "SENTRY_ORG": "acme", "SENTRY_AUTH_TOKEN": "sntrys_token_1234",
               "SENTRY_API_URL": vendor.url}  # fmt: skip
    assert opskeeper("run-now", "api-health", "--config", str(config), env=run_env).code == 2
    [down] = sentry.wait_items("event", 1)
    assert vendor.requests == []  # nothing to resolve yet
    healthy["now"] = True
    recovered = opskeeper("run-now", "api-health", "--config", str(config), env=run_env)
    assert recovered.code == 0
    assert len(vendor.requests) == 2, recovered.stderr
    search, put = vendor.requests
    assert search.query["query"] == [f"is:unresolved opskeeper_problem:{down['tags']['opskeeper_problem']}"]
    assert search.headers["authorization"] == "Bearer sntrys_token_1234"
    assert (put.method, put.path, json.loads(put.body)) == ("PUT", "/api/0/organizations/acme/issues/4242/",
                                                            {"status": "resolved"})  # fmt: skip

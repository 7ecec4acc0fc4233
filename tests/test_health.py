"""The `health` kind against real local HTTP servers: verdicts, thresholds, state, uptime."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from jobs.health.job import (
    DOWN,
    UP,
    Check,
    EndpointState,
    Expect,
    HealthJob,
    HealthOptions,
    evaluate,
    transition,
    uptime_report,
)
from tests.conftest import AppServer, Reply, SentryReceiver, free_port_closed, opskeeper, write
from worker.job import CheckRecord, JobContext, Notice, Outcome, Status
from worker.ledger import JobChecks, JobState, SqliteLedger

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    opened = SqliteLedger(tmp_path / "ledger.db")
    yield opened
    opened.close()


class Harness:
    """Runs a health job the way the runner does, keeping its notices."""

    def __init__(self, ledger: SqliteLedger, **options: Any) -> None:
        self.ledger = ledger
        self.options = HealthOptions.model_validate(options)
        self.notices: list[Notice] = []

    def run(self) -> Outcome:
        ctx = JobContext(
            job_id="api-health", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 60,
            state=JobState(self.ledger, "api-health"), cancel=threading.Event(), log=lambda *a, **k: None,
            notify=self.notices.append, checks=JobChecks(self.ledger, "api-health"),
        )  # fmt: skip
        return HealthJob(self.options).run(ctx)


def endpoint(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": kw.pop("name", "api"), "url": url, **kw}


# --- verdicts against a real server --------------------------------------------------


def test_healthy_endpoint_is_ok(app: AppServer, ledger: SqliteLedger) -> None:
    """A 200 with the expected JSON is UP, and the run is OK."""
    app.routes["/api/health"] = lambda n: Reply(200, {"status": "OK", "db": {"connected": True}, "uptime": 12.5})
    expect = {"json": {"status": "OK", "db.connected": True, "uptime": "> 0"}}
    outcome = Harness(ledger, endpoints=[endpoint(app.url("/api/health"), expect=expect)]).run()
    assert outcome.status is Status.OK
    assert outcome.summary == "1/1 up"
    assert outcome.details["api"]["state"] == UP
    assert outcome.details["api"]["status_code"] == 200


@pytest.mark.parametrize(
    ("reply", "expect", "reason"),
    [
        (Reply(500, b"Internal Server Error"), {}, "HTTP 500"),
        (Reply(200, b"<html>down</html>"), {"json": {"status": "OK"}}, "body is not JSON: '<html>down</html>'"),
        (Reply(200, {"status": "DOWN"}), {"json": {"status": "OK"}}, "json status: expected 'OK', got 'DOWN'"),
        (Reply(200, {"status": "OK"}), {"json": {"db.connected": True}}, "json db.connected: missing (expected True)"),
        (Reply(200, {"uptime": 0}), {"json": {"uptime": "> 0"}}, "json uptime: expected > 0, got 0"),
        (Reply(200, b"booting"), {"body_contains": "ready"}, "body does not contain 'ready'"),
        (Reply(301, b"", {"Location": "/elsewhere"}), {}, "HTTP 301"),
    ],
    ids=["500", "not-json", "wrong-value", "missing-path", "comparison", "body-contains", "redirect-not-followed"],
)  # fmt: skip
def test_failed_check_reasons(
    app: AppServer, ledger: SqliteLedger, reply: Reply, expect: dict[str, Any], reason: str
) -> None:
    """Each kind of bad answer fails the check with a reason naming what was wrong; one failure only warns."""
    app.routes["/h"] = lambda n: reply
    outcome = Harness(ledger, endpoints=[endpoint(app.url("/h"), expect=expect)]).run()
    assert outcome.status is Status.WARN
    assert outcome.details["api"]["reason"] == reason
    assert outcome.summary == f"0/1 up: api failing 1/3 ({reason})"


def test_slow_answer_is_degraded_not_down(app: AppServer, ledger: SqliteLedger) -> None:
    """Slower than max_latency but otherwise fine is DEGRADED: a warning, not a failure."""
    release = threading.Event()
    app.routes["/slow"] = lambda n: Reply(200, {"status": "OK"}, wait=release, wait_timeout=0.3)
    outcome = Harness(ledger, endpoints=[endpoint(app.url("/slow"), expect={"max_latency": "100ms"})]).run()
    assert outcome.status is Status.WARN
    assert outcome.details["api"]["verdict"] == "degraded"
    assert outcome.details["api"]["reason"].startswith("slow: ")
    assert outcome.details["api"]["state"] == "DEGRADED"


def test_server_that_never_answers_times_out(stuck_server: int, ledger: SqliteLedger) -> None:
    """A server that accepts and never answers fails with the endpoint's timeout as reason."""
    outcome = Harness(ledger, endpoints=[endpoint(f"http://127.0.0.1:{stuck_server}/h", timeout="300ms")]).run()
    assert outcome.details["api"]["reason"] == "timed out after 300ms"


def test_connection_refused(ledger: SqliteLedger) -> None:
    """Nothing listening: the reason says connection refused."""
    outcome = Harness(ledger, endpoints=[endpoint(f"http://127.0.0.1:{free_port_closed()}/h")]).run()
    assert outcome.details["api"]["reason"] == "connection refused"


def test_unresolvable_host_is_a_dns_failure(ledger: SqliteLedger) -> None:
    """A host name that does not resolve fails as DNS."""
    outcome = Harness(ledger, endpoints=[endpoint("http://no-such-host.invalid/api/health", timeout="5s")]).run()
    assert outcome.details["api"]["reason"] == "DNS: name not resolved"


def test_rate_limited_is_reported_apart_from_down_and_retry_after_is_honoured(
    app: AppServer, ledger: SqliteLedger
) -> None:
    """HTTP 429 is `rate limited`, never DOWN; the endpoint is not asked again before its Retry-After."""
    asked: list[int] = []

    def limited(n: int) -> Reply:
        asked.append(n)
        return Reply(429, b"slow down", {"Retry-After": "30"})

    app.routes["/h"] = limited
    harness = Harness(ledger, endpoints=[endpoint(app.url("/h"))], failure_threshold=1)
    first = harness.run()
    assert first.details["api"]["reason"] == "rate limited (HTTP 429, Retry-After: 30)"
    for _ in range(2):
        outcome = harness.run()
    assert len(asked) == 1
    assert outcome.status is Status.WARN
    assert outcome.details["api"]["reason"].startswith("rate limited: not probed before ")
    assert outcome.details["api"]["state"] != DOWN
    assert harness.notices == []


def test_hanging_endpoint_does_not_hold_up_the_others(app: AppServer, ledger: SqliteLedger) -> None:
    """Endpoints are probed at once: /first only answers after /second has been asked."""
    second_asked = threading.Event()
    app.routes["/first"] = lambda n: Reply(200, wait=second_asked, wait_timeout=5)

    def second(n: int) -> Reply:
        second_asked.set()
        return Reply(200)

    app.routes["/second"] = second
    endpoints = [endpoint(app.url("/first"), name="first", timeout="3s"), endpoint(app.url("/second"), name="second")]
    outcome = Harness(ledger, endpoints=endpoints).run()
    assert outcome.status is Status.OK, outcome.summary


def test_retry_success_counts_as_degraded(app: AppServer, ledger: SqliteLedger) -> None:
    """A check that passes only when retried within the run is DEGRADED, with the first reason kept."""
    app.routes["/h"] = lambda n: Reply(503, b"warming up") if n == 0 else Reply(200)
    harness = Harness(ledger, endpoints=[endpoint(app.url("/h"))], retry=True, retry_delay="10ms")
    outcome = harness.run()
    assert outcome.details["api"]["verdict"] == "degraded"
    assert outcome.details["api"]["reason"] == "passed on retry (first: HTTP 503)"
    assert app.calls["/h"] == 2


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def https_app(ca: trustme.CA, days_left: float) -> AppServer:
    cert = ca.issue_cert("localhost", not_after=datetime.now(UTC) + timedelta(days=days_left))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server = AppServer(ssl_context=context)
    server.routes["/h"] = lambda n: Reply(200)
    return server


def test_certificate_expiring_soon_warns(ca: trustme.CA, ledger: SqliteLedger, tmp_path: Path) -> None:
    """An https endpoint whose certificate expires in 5 days, with cert_min_days 14, is a warning."""
    server = https_app(ca, days_left=5.5)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        ep = endpoint(server.url("/h", host="localhost"), ca_file=str(ca_file), expect={"cert_min_days": 14})
        outcome = Harness(ledger, endpoints=[ep]).run()
    finally:
        server.close()
    assert outcome.status is Status.WARN
    assert outcome.details["api"]["reason"] == "certificate expires in 5 days (< 14)"


def test_untrusted_certificate_is_a_tls_failure(ca: trustme.CA, ledger: SqliteLedger) -> None:
    """A certificate the probe does not trust fails with a TLS reason."""
    server = https_app(ca, days_left=90)
    try:
        outcome = Harness(ledger, endpoints=[endpoint(server.url("/h", host="localhost"))]).run()
    finally:
        server.close()
    assert outcome.details["api"]["reason"].startswith("TLS: ")


# --- thresholds and state ----------------------------------------------------------


def test_down_after_threshold_then_recovered_once(app: AppServer, ledger: SqliteLedger) -> None:
    """Three failures make DOWN (one error notice); two good checks make UP again (one info notice)."""
    healthy = {"ok": False}
    app.routes["/h"] = lambda n: Reply(200) if healthy["ok"] else Reply(502, b"Bad Gateway")
    harness = Harness(ledger, endpoints=[endpoint(app.url("/h"))])
    statuses = [harness.run().status for _ in range(4)]
    assert statuses == [Status.WARN, Status.WARN, Status.FAIL, Status.FAIL]
    assert [(n.level, n.message) for n in harness.notices] == [("error", "api is DOWN: HTTP 502")]
    assert harness.notices[0].fingerprint == ("health", "api", "down")
    assert harness.notices[0].context["excerpt"] == "Bad Gateway"
    healthy["ok"] = True
    assert harness.run().status is Status.FAIL  # one good check is not enough
    assert harness.run().status is Status.OK
    assert [n.level for n in harness.notices] == ["error", "info"]
    assert harness.notices[1].message.startswith("api recovered after ")


def test_flapping_endpoint_never_alerts_but_shows_in_uptime(app: AppServer, ledger: SqliteLedger) -> None:
    """A server failing every other request stays below the threshold: no alert, 50 % in the figures."""
    app.routes["/h"] = lambda n: Reply(500) if n % 2 else Reply(200)
    harness = Harness(ledger, endpoints=[endpoint(app.url("/h"))])
    outcomes = [harness.run() for _ in range(10)]
    assert harness.notices == []
    assert {o.status for o in outcomes} == {Status.OK, Status.WARN}
    report = uptime_report(ledger.checks(datetime.now(UTC) - timedelta(hours=1)), "1h", datetime.now(UTC))
    assert len(report) == 1
    assert (report[0]["checks"], report[0]["failures"], report[0]["uptime_pct"]) == (10, 5, 50.0)
    assert report[0]["outages"] == []


def test_transition_rules() -> None:
    """The pure state machine: thresholds, reminders and rate limits."""
    opts = HealthOptions.model_validate({"endpoints": [{"name": "a", "url": "http://x/"}], "failure_threshold": 2,
                                         "success_threshold": 1, "remind_every": "30m"})  # fmt: skip
    fail, ok, limited = Check("fail", "HTTP 500"), Check("ok"), Check("rate_limited", "rate limited (HTTP 429)")
    s, notes = transition(EndpointState(), fail, T0, opts, "a")
    assert (s.state, s.fails, notes) == ("UNKNOWN", 1, [])
    s, notes = transition(s, limited, T0 + timedelta(minutes=1), opts, "a")
    assert (s.fails, notes) == (1, [])
    s, notes = transition(s, fail, T0 + timedelta(minutes=2), opts, "a")
    assert (s.state, s.down_since, len(notes)) == (DOWN, T0.isoformat(), 1)
    s, notes = transition(s, fail, T0 + timedelta(minutes=20), opts, "a")
    assert notes == []
    s, notes = transition(s, fail, T0 + timedelta(minutes=33), opts, "a")
    assert [n.message for n in notes] == ["a is still DOWN after 33m: HTTP 500"]
    s, notes = transition(s, ok, T0 + timedelta(minutes=40), opts, "a")
    assert (s.state, [n.message for n in notes]) == (UP, ["a recovered after 40m"])


def test_evaluate_status_classes_and_lists() -> None:
    """`status` takes a code, a class like 2xx, or a list of both."""
    both = Expect.model_validate({"status": [204, "3xx"]})
    assert evaluate(both, 204, {}, b"", 1).verdict == "ok"
    assert evaluate(both, 302, {}, b"", 1).verdict == "ok"
    assert evaluate(both, 200, {}, b"", 1).reason == "HTTP 200"
    with pytest.raises(ValueError, match="not a status"):
        Expect.model_validate({"status": "6xx"})


# --- uptime from a recorded sequence --------------------------------------------------


def test_uptime_and_outages_from_recorded_checks() -> None:
    """Uptime %, latency percentiles and outage start/end/duration come from the checks as recorded."""
    verdicts = ["ok", "ok", "fail", "fail", "fail", "fail", "ok", "ok", "degraded", "ok"]
    states = [UP, UP, UP, UP, DOWN, DOWN, DOWN, UP, "DEGRADED", UP]
    rows = [
        CheckRecord(job_id="j", endpoint="api", at=T0 + timedelta(minutes=i), verdict=v, state=s,
                    status_code=200 if v != "fail" else 500, latency_ms=float(10 * (i + 1)))
        for i, (v, s) in enumerate(zip(verdicts, states, strict=True))
    ]  # fmt: skip
    [report] = uptime_report(rows, "24h", T0 + timedelta(minutes=10))
    assert report["uptime_pct"] == 60.0
    assert (report["checks"], report["failures"], report["degraded"]) == (10, 4, 1)
    assert report["latency_ms"] == {"p50": 70.0, "p95": 100.0, "p99": 100.0}
    assert report["outages"] == [
        {"start": (T0 + timedelta(minutes=2)).isoformat(), "end": (T0 + timedelta(minutes=7)).isoformat(),
         "duration_s": 300.0}
    ]  # fmt: skip


def test_ongoing_outage_has_no_end() -> None:
    """An outage still going at the end of the window is reported open, measured to now."""
    rows = [CheckRecord(job_id="j", endpoint="api", at=T0 + timedelta(minutes=i), verdict="fail",
                        state=DOWN if i >= 2 else UP) for i in range(4)]  # fmt: skip
    [report] = uptime_report(rows, "1h", T0 + timedelta(minutes=30))
    assert report["outages"] == [{"start": T0.isoformat(), "end": None, "duration_s": 1800.0}]


# --- through the CLI, across restarts, with Sentry -----------------------------------


@pytest.mark.slow
def test_outage_across_restarts_alerts_once_and_recovers_once(
    tmp_path: Path, env: dict[str, str], sentry: SentryReceiver, app: AppServer
) -> None:
    """Each run-now is a fresh process: an outage spanning them gives one DOWN event and one recovery, one issue."""
    healthy = {"ok": False}
    app.routes["/api/health"] = lambda n: Reply(200, {"status": "OK"}) if healthy["ok"] else Reply(503, b"db down")
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: api-health
    kind: health
    schedule: every 1m
    options:
      failure_threshold: 2
      success_threshold: 2
      endpoints:
        - name: backend
          url: {app.url("/api/health")}
          expect: {{json: {{status: OK}}}}
""")  # fmt: skip
    run_env = {**env, "SENTRY_DSN": sentry.dsn}
    codes = [opskeeper("run-now", "api-health", "--config", str(config), env=run_env).code for _ in range(4)]
    assert codes == [1, 2, 2, 2]
    healthy["ok"] = True
    codes = [opskeeper("run-now", "api-health", "--config", str(config), env=run_env).code for _ in range(3)]
    assert codes == [2, 0, 0]
    events = sentry.wait_items("event", 2)
    assert len(events) == 2
    assert (events[0]["level"], events[0]["message"]) == ("error", "backend is DOWN: HTTP 503")
    assert events[1]["level"] == "info"
    assert "backend recovered after" in json.dumps(events[1])
    assert events[0]["fingerprint"] == ["opskeeper", "api-health", "health", "backend", "down"]
    assert events[0]["tags"]["job_id"] == "api-health"
    # No token to resolve it with: the recovery joins the outage's issue (one outage, one issue), marked resolved.
    assert events[1]["fingerprint"] == events[0]["fingerprint"]
    assert events[1]["tags"]["opskeeper_state"] == "resolved"
    assert "opskeeper_state" not in events[0]["tags"]
    # The probe itself worked every time, so Sentry Crons saw healthy runs throughout.
    statuses = [c["status"] for c in sentry.items("check_in")]
    assert statuses.count("error") == 0
    assert statuses.count("ok") == 7
    report = json.loads(opskeeper("uptime", "--window", "1h", "--json", env=env).stdout)
    assert [(r["endpoint"], r["checks"], r["failures"], len(r["outages"])) for r in report] == [("backend", 7, 4, 1)]
    text = opskeeper("uptime", "--window", "1h", env=env).stdout
    assert "api-health/backend: 42.857% up over 1h" in text


def test_latency_is_measured_to_the_response_headers(app: AppServer, ledger: SqliteLedger) -> None:
    """A body that arrives 1.5 s after the headers does not count as latency (the README says so)."""
    app.routes["/h"] = lambda n: Reply(200, body_delay=1.5)
    outcome = Harness(ledger, endpoints=[endpoint(app.url("/h"))]).run()
    assert outcome.status is Status.OK, outcome.summary
    assert outcome.details["api"]["latency_ms"] < 1500


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """256 MiB of zeros, gzipped into about 250 KiB."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(256)) + packer.flush()


def test_a_gzip_bomb_is_read_only_up_to_the_cap_and_spares_the_others(
    app: AppServer, ledger: SqliteLedger, gzip_bomb: bytes
) -> None:
    """A hostile endpoint's bomb is decoded to 1 MiB at most (in a fresh process peaking under 90 MB)."""
    from tests.conftest import peak_rss_mb

    app.routes["/bomb"] = lambda n: Reply(200, gzip_bomb, {"Content-Encoding": "gzip"})
    app.routes["/ok"] = lambda n: Reply(200)
    script = f"""
import asyncio
from worker import http
from jobs.health.job import Endpoint, probe
async def main():
    async with http.async_client() as client:
        bomb, ok = await asyncio.gather(probe(client, Endpoint(name="bomb", url={app.url("/bomb")!r})),
                                        probe(client, Endpoint(name="ok", url={app.url("/ok")!r})))
    print(bomb.verdict, ok.verdict, len(bomb.excerpt))
asyncio.run(main())
"""
    peak_mb, out = peak_rss_mb(script)
    assert out.split() == ["ok", "ok", "300"]
    assert peak_mb < 90, f"the probe peaked at {peak_mb:.0f} MB"

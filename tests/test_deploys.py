"""Deploys and rollback against a local HTTP server that speaks the Render API's shapes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from jobs.deploys.job import DeployRecord, ServiceHistory, assess, rollback_target
from tests.conftest import ROOT, AppServer, Reply, SentryReceiver, opskeeper, send_reply, write
from worker.job import CheckRecord, Status

KEY = "rnd_TestRenderKey0123456789"
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def deploy(n: int, status: str, minutes_ago: float, message: str = "") -> dict[str, Any]:
    """A deploy in the Render API's shape, finished `minutes_ago`."""
    at = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()
    return {"id": f"dep-{n:03d}", "commit": {"id": f"{n:03d}" + "a" * 37, "message": message or f"change {n}\n\nbody",
            "createdAt": at}, "status": status, "trigger": "new_commit", "startedAt": at, "finishedAt": at,
            "createdAt": at}  # fmt: skip


@dataclass
class RenderServer:
    """Serves /v1/services/{id}/deploys with cursors, rollback and PATCH; records every request."""

    deploys: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any] | None, str]] = field(default_factory=list)
    throttle: int = 0  # answer this many requests with 429 first
    server: Any = None

    def start(self) -> RenderServer:
        render = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                render.requests.append((self.command, self.path, body, self.headers.get("Authorization", "")))
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"message": "unauthorized"})
                if render.throttle > 0:
                    render.throttle -= 1
                    return self._send(429, {"message": "rate limited"}, {"Retry-After": "1"})
                parts = urlsplit(self.path)
                segments = parts.path.strip("/").split("/")  # v1 services srv-x deploys
                service = segments[2] if len(segments) > 2 else ""
                if self.command == "GET" and segments[3:] == ["deploys"]:
                    query = parse_qs(parts.query)
                    items = render.deploys.get(service, [])
                    cursor = query.get("cursor", [None])[0]
                    start = next((i + 1 for i, d in enumerate(items) if d["id"] == cursor), 0) if cursor else 0
                    page = items[start : start + int(query["limit"][0])]
                    return self._send(200, [{"cursor": d["id"], "deploy": d} for d in page])
                if self.command == "POST" and segments[3:] == ["rollback"]:
                    return self._send(201, {"id": "dep-rollback", "status": "created"})
                if self.command == "PATCH" and len(segments) == 3:
                    return self._send(200, {"id": service, "autoDeploy": body and body.get("autoDeploy")})
                return self._send(404, {"message": "not found"})

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                send_reply(self, Reply(status, payload, headers or {}), {"Content-Type": "application/json"})

            do_GET = do_POST = do_PATCH = _handle  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def sent(self, method: str) -> list[tuple[str, str, dict[str, Any] | None, str]]:
        return [r for r in self.requests if r[0] == method]


@pytest.fixture
def render() -> Iterator[RenderServer]:
    server = RenderServer().start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def schedule(render: RenderServer, app: AppServer, settle: str = "10m", page_size: int = 100) -> str:
    return f"""\
jobs:
  - id: api-health
    kind: health
    schedule: every 1m
    options:
      failure_threshold: 1
      endpoints: [{{name: backend, url: "{app.url("/api/health")}"}}]
  - id: render-deploys
    kind: deploys
    schedule: every 5m
    options:
      api_url: {render.url}
      settle: {settle}
      page_size: {page_size}
      services:
        - {{name: api, service_id: srv-api123, health: api-health}}
"""


@pytest.fixture
def deploy_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "RENDER_API_KEY": KEY}


def run_now(job: str, config: Path, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    result = opskeeper("run-now", job, "--config", str(config), "--json", env=env)
    assert KEY not in result.stdout + result.stderr
    return result.code, json.loads(result.stdout), result.stderr


# --- the job --------------------------------------------------------------------------


def test_pagination_records_every_deploy(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """Deploys spread over several pages are all recorded, following each page's last cursor."""
    render.deploys["srv-api123"] = [deploy(5, "live", 30)] + [
        deploy(n, "deactivated", 60 * (6 - n)) for n in (4, 3, 2, 1)
    ]
    app.routes["/api/health"] = lambda n: Reply(200)
    config = write(tmp_path / "jobs.yaml", schedule(render, app, page_size=2))
    run_now("api-health", config, deploy_env)
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert code == 0, out
    cursors = [parse_qs(urlsplit(p).query).get("cursor", [None])[0] for m, p, _, _ in render.sent("GET")]
    assert cursors == [None, "dep-004", "dep-002"]
    listed = json.loads(opskeeper("deploys", "--config", str(config), "--json", env=deploy_env).stdout)
    assert [d["deploy_id"] for d in listed] == ["dep-005", "dep-004", "dep-003", "dep-002", "dep-001"]
    assert listed[0]["message"] == "change 5"
    assert listed[0]["good"] is True


def test_live_and_healthy_deploy_becomes_good_and_is_a_release(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, sentry: SentryReceiver
) -> None:
    """A deploy live for longer than `settle` with the app UP throughout is recorded good, once."""
    render.deploys["srv-api123"] = [deploy(2, "live", 15), deploy(1, "deactivated", 120)]
    app.routes["/api/health"] = lambda n: Reply(200)
    config = write(tmp_path / "jobs.yaml", schedule(render, app))
    run_env = {**deploy_env, "SENTRY_DSN": sentry.dsn}
    run_now("api-health", config, run_env)
    code, out, log = run_now("render-deploys", config, run_env)
    assert (code, out["status"]) == (0, "ok")
    assert out["summary"].startswith('api: live deploy dep-002 (commit 002aaaa "change 2") is good')
    assert '"event": "release.good"' in log
    assert f'"release": "002{"a" * 37}"' in log
    run_now("render-deploys", config, run_env)  # already good: no second release notice
    releases = [e for e in sentry.wait_items("event", 1) if "is good" in e.get("message", "")]
    assert len(releases) == 1


def test_deploy_live_while_app_down_never_becomes_good(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """If the health job reports DOWN after the deploy went live, it stays unproven and warns."""
    render.deploys["srv-api123"] = [deploy(2, "live", 15), deploy(1, "deactivated", 120)]
    app.routes["/api/health"] = lambda n: Reply(503, b"db down")
    config = write(tmp_path / "jobs.yaml", schedule(render, app))
    run_now("api-health", config, deploy_env)
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert (code, out["status"]) == (1, "warn")
    assert "app DOWN since" in out["summary"]
    assert "dep-002" in out["summary"]
    listed = json.loads(opskeeper("deploys", "--config", str(config), "--json", env=deploy_env).stdout)
    assert not any(d["good"] for d in listed)


def test_failed_build_fails_the_run(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """The newest deploy failing to build fails the run and names the last good deploy."""
    app.routes["/api/health"] = lambda n: Reply(200)
    config = write(tmp_path / "jobs.yaml", schedule(render, app))
    render.deploys["srv-api123"] = [deploy(1, "live", 60)]
    run_now("api-health", config, deploy_env)
    run_now("render-deploys", config, deploy_env)
    render.deploys["srv-api123"] = [deploy(2, "build_failed", 1, "break things"), deploy(1, "live", 60)]
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert (code, out["status"]) == (2, "fail")
    assert out["summary"] == (
        'api: newest deploy dep-002 (commit 002aaaa "break things") build_failed; '
        'last good: dep-001 (commit 001aaaa "change 1")'
    )


def test_rejected_key_is_a_clear_error(
    tmp_path: Path, env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """A 401 from Render: an error naming RENDER_API_KEY and the API, and no key in the output."""
    config = write(tmp_path / "jobs.yaml", schedule(render, app))
    wrong = "rnd_WrongKeyWrongKey0000"
    result = opskeeper("run-now", "render-deploys", "--config", str(config), "--json",
                       env={**env, "RENDER_API_KEY": wrong})  # fmt: skip
    assert result.code == 3
    assert json.loads(result.stdout)["summary"] == (
        f"RejectedError: Render API: GET {render.url}/services/srv-api123/deploys: RENDER_API_KEY rejected (HTTP 401)"
    )
    assert wrong not in result.stdout + result.stderr
    assert render.requests[0][3] == f"Bearer {wrong}"


def test_rate_limit_is_retried_after_retry_after(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """A 429 is retried (after its Retry-After) and the run then succeeds."""
    render.deploys["srv-api123"] = [deploy(1, "live", 60)]
    render.throttle = 1
    app.routes["/api/health"] = lambda n: Reply(200)
    config = write(tmp_path / "jobs.yaml", schedule(render, app))
    code, _out, _ = run_now("render-deploys", config, deploy_env)
    assert code in (0, 1)
    assert len(render.sent("GET")) == 2


# --- judging, as a pure function -------------------------------------------------------


def record(n: int, status: str, finished: datetime, good: bool = False) -> DeployRecord:
    return DeployRecord(f"dep-{n}", status, commit=f"c{n}" * 4, message=f"m{n}", created_at=finished.isoformat(),
                        finished_at=finished.isoformat(), good=good)  # fmt: skip


def check(at: datetime, state: str = "UP") -> CheckRecord:
    return CheckRecord(job_id="h", endpoint="backend", at=at, verdict="ok" if state == "UP" else "fail", state=state)


def test_settling_then_good_with_frozen_time() -> None:
    """Live for less than `settle`: settling (ok, not good); after it, with checks UP: good, with a release."""
    history = ServiceHistory([record(2, "live", T0), record(1, "deactivated", T0 - timedelta(days=1), good=True)])
    settle = timedelta(minutes=10)
    early = assess("api", history, [check(T0 + timedelta(minutes=1))], T0 + timedelta(minutes=5), settle)
    assert (early.status, early.notices) == (Status.OK, [])
    assert "settling (5m of 10m)" in early.summary
    assert not history.deploys[0].good
    checks = [check(T0 + timedelta(minutes=m)) for m in range(0, 12, 2)]
    later = assess("api", history, checks, T0 + timedelta(minutes=11), settle)
    assert history.deploys[0].good
    assert history.deploys[0].good_at == (T0 + timedelta(minutes=11)).isoformat()
    assert [n.context["release"] for n in later.notices] == ["c2c2c2c2"]


def test_no_checks_means_unproven() -> None:
    """Past the window with no health checks at all, the deploy is unproven (warn), not good."""
    history = ServiceHistory([record(2, "live", T0)])
    verdict = assess("api", history, [], T0 + timedelta(minutes=30), timedelta(minutes=10))
    assert verdict.status is Status.WARN
    assert "unproven" in verdict.summary
    assert not history.deploys[0].good


def test_without_a_health_job_time_alone_proves_a_deploy() -> None:
    """A service that names no health job is good once live for `settle`."""
    history = ServiceHistory([record(2, "live", T0)])
    assert assess("api", history, None, T0 + timedelta(minutes=11), timedelta(minutes=10)).status is Status.OK
    assert history.deploys[0].good


def test_failed_deploy_notice_is_sent_once() -> None:
    """A failed newest deploy fails every run but is announced only the first time."""
    history = ServiceHistory([record(2, "update_failed", T0), record(1, "live", T0 - timedelta(hours=1), good=True)])
    first = assess("api", history, None, T0, timedelta(minutes=10))
    second = assess("api", history, None, T0 + timedelta(minutes=5), timedelta(minutes=10))
    assert (first.status, len(first.notices), second.status, len(second.notices)) == (Status.FAIL, 1, Status.FAIL, 0)


def test_rollback_target_is_the_newest_good_deploy_that_is_not_live() -> None:
    """Rollback goes to the last known good deploy other than the live one."""
    live = record(3, "live", T0, good=True)
    history = ServiceHistory([live, record(2, "deactivated", T0 - timedelta(hours=1), good=False),
                              record(1, "deactivated", T0 - timedelta(days=1), good=True)])  # fmt: skip
    assert rollback_target(history, live, None).deploy_id == "dep-1"
    assert rollback_target(history, live, "dep-2").deploy_id == "dep-2"


# --- rollback from the command line ---------------------------------------------------


@pytest.fixture
def known_good(tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer) -> Path:
    """A ledger that knows dep-001 as good while dep-002 (bad) is live."""
    app.routes["/api/health"] = lambda n: Reply(200)
    config = write(tmp_path / "jobs.yaml", schedule(render, app))
    render.deploys["srv-api123"] = [deploy(1, "live", 60)]
    run_now("api-health", config, deploy_env)
    run_now("render-deploys", config, deploy_env)
    render.deploys["srv-api123"] = [deploy(2, "live", 1, "bad change"), deploy(1, "deactivated", 60)]
    render.requests.clear()
    return config


def rollback(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", "rollback", "api", "--config", str(config), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                          check=False)  # fmt: skip


def test_rollback_sends_the_right_request_and_records_it(
    known_good: Path, deploy_env: dict[str, str], render: RenderServer
) -> None:
    """`rollback api --yes` posts deployId of the last good deploy with the bearer token, and logs it."""
    result = rollback(known_good, deploy_env, "--yes")
    assert result.returncode == 0, result.stderr
    assert 'from dep-002 (commit 002aaaa "bad change")' in result.stdout
    assert 'to   dep-001 (commit 001aaaa "change 1")' in result.stdout
    assert "auto-deploy is still on" in result.stdout
    assert [(p, b, a) for _, p, b, a in render.sent("POST")] == [
        ("/v1/services/srv-api123/rollback", {"deployId": "dep-001"}, f"Bearer {KEY}")
    ]
    assert KEY not in result.stdout + result.stderr
    history = json.loads(opskeeper("history", "--json", env=deploy_env).stdout)
    assert history[0]["kind"] == "rollback"
    assert history[0]["summary"] == "rolled back api from dep-002 to dep-001"


def test_rollback_refuses_without_confirmation_when_not_interactive(
    known_good: Path, deploy_env: dict[str, str], render: RenderServer
) -> None:
    """Without --yes and without a terminal, rollback refuses (a usage error, 64) and sends nothing."""
    result = rollback(known_good, deploy_env)
    assert result.returncode == 64
    assert "refusing to roll back without confirmation" in result.stderr
    assert render.sent("POST") == []


def test_rollback_dry_run_sends_nothing(known_good: Path, deploy_env: dict[str, str], render: RenderServer) -> None:
    """--dry-run prints the plan and makes no change."""
    result = rollback(known_good, deploy_env, "--dry-run")
    assert result.returncode == 0
    assert "dry run: nothing was sent" in result.stdout
    assert render.sent("POST") == []
    assert render.sent("PATCH") == []


def test_rollback_can_disable_autodeploy(known_good: Path, deploy_env: dict[str, str], render: RenderServer) -> None:
    """--disable-autodeploy also PATCHes the service so the next push does not redeploy."""
    result = rollback(known_good, deploy_env, "--yes", "--disable-autodeploy")
    assert result.returncode == 0, result.stderr
    assert [(p, b) for _, p, b, _ in render.sent("PATCH")] == [("/v1/services/srv-api123", {"autoDeploy": "no"})]
    assert "auto-deploy is still on" not in result.stdout


@pytest.mark.parametrize(("answer", "code", "posts"), [("y\n", 0, 1), ("n\n", 1, 0)])
def test_rollback_asks_on_a_terminal(
    known_good: Path, deploy_env: dict[str, str], render: RenderServer, answer: str, code: int, posts: int
) -> None:
    """On a terminal, rollback asks first: `y` rolls back, anything else cancels and sends nothing."""
    import os

    controller, terminal = os.openpty()
    os.write(controller, answer.encode())
    try:
        result = subprocess.run([sys.executable, "-m", "worker", "rollback", "api", "--config", str(known_good)],
                                cwd=ROOT, env=deploy_env, stdin=terminal, capture_output=True, text=True, timeout=60,
                                check=False)  # fmt: skip
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == code, result.stderr
    assert "Proceed? [y/N]" in result.stdout
    assert len(render.sent("POST")) == posts


# --- Sentry releases and deploy markers -------------------------------------------------------


def with_releases(text: str) -> str:
    return text.replace(
        "      services:\n", "      sentry_releases: {project: shop-api, repository: acme/shop}\n      services:\n"
    )


def test_a_good_deploy_becomes_a_sentry_release_with_a_deploy_marker(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, vendor: Any
) -> None:
    """The good deploy's commit is POSTed as a release (project, repository ref) and a deploy in the environment."""
    from tests.conftest import Request

    render.deploys["srv-api123"] = [deploy(2, "live", 15), deploy(1, "deactivated", 120)]
    app.routes["/api/health"] = lambda n: Reply(200)
    commit = "002" + "a" * 37
    vendor.routes["/api/0/organizations/acme/releases/"] = lambda r: Reply(201, {"version": commit})
    vendor.routes[f"/api/0/organizations/acme/releases/{commit}/deploys/"] = lambda r: Reply(201, {"id": "1"})
    config = write(tmp_path / "jobs.yaml", with_releases(schedule(render, app)))
    run_env = {**deploy_env, "SENTRY_ORG": "acme", "SENTRY_AUTH_TOKEN": "sntrys_rel_1234", "SENTRY_API_URL": vendor.url,
               "SENTRY_ENVIRONMENT": "staging"}  # fmt: skip
    run_now("api-health", config, run_env)
    code, out, _ = run_now("render-deploys", config, run_env)
    assert code == 0, out
    release, marker = vendor.requests
    refs = [{"repository": "acme/shop", "commit": commit}]
    assert (release.method, json.loads(release.body)) == ("POST", {"version": commit, "projects": ["shop-api"],
                                                                   "refs": refs})  # fmt: skip
    body = json.loads(marker.body)
    assert (body["environment"], body["name"]) == ("staging", "api dep-002")
    assert "sentry_releases_gap" not in out["details"]
    assert all(
        isinstance(r, Request) and r.headers["authorization"] == "Bearer sntrys_rel_1234" for r in vendor.requests
    )


def test_a_failed_deploy_is_marked_and_a_token_without_scope_is_a_gap_not_an_error(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, vendor: Any
) -> None:
    """A failed deploy is recorded as '(failed)'; a 403 for releases is a gap the weekly review names."""
    render.deploys["srv-api123"] = [deploy(3, "build_failed", 5), deploy(2, "live", 60)]
    app.routes["/api/health"] = lambda n: Reply(200)
    vendor.routes["/api/0/organizations/acme/releases/"] = lambda r: Reply(
        403, {"detail": "You do not have permission"}
    )
    config = write(tmp_path / "jobs.yaml", with_releases(schedule(render, app)) + """\
  - id: weekly
    kind: weekly_review
    schedule: "@weekly"
""")  # fmt: skip
    run_env = {**deploy_env, "SENTRY_ORG": "acme", "SENTRY_AUTH_TOKEN": "sntrys_rel_1234", "SENTRY_API_URL": vendor.url}
    run_now("api-health", config, run_env)
    code, out, log = run_now("render-deploys", config, run_env)
    assert code == 2  # the failed deploy fails the run, as before; the gap does not add an error
    assert out["details"]["sentry_releases_gap"].startswith(
        "the token may not write releases (it needs project:releases)"
    )
    assert '"event": "sentry.releases_gap"' in log
    report = json.loads(opskeeper("report", "weekly", "--config", str(config), "--json", env=run_env).stdout)
    [gap] = [g for g in report["gaps"] if g["source"] == "sentry releases"]
    assert "project:releases" in gap["reason"]

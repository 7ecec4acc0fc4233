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


_PATCHABLE = {"autoDeploy": ("yes", "no"), "autoDeployTrigger": ("off", "commit", "checksPass")}
_DEPLOY_FIELDS = {"commitId", "clearCache", "imageUrl"}


@dataclass
class RenderServer:
    """The Render API's deploys, service, rollback, trigger-deploy and update calls, as strict as Render's
    documented bodies (unknown fields or values are a 400); records every request."""

    deploys: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any] | None, str]] = field(default_factory=list)
    exchanges: list[tuple[str, str, Any, int, Any]] = field(default_factory=list)
    """(method, path with query, body, status, answer) of each request, for the check against Render's description."""
    throttle: int = 0  # answer this many requests with 429 first
    pre_deploy: dict[str, str] = field(default_factory=dict)
    """A service's preDeployCommand, by service id."""
    retained: set[str] | None = None
    """Deploys whose builds Render still keeps (None: all): /rollback to any other answers `not_retained`."""
    not_retained: int = 400
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: threading.Event = field(default_factory=threading.Event)
    """Set when a rollback or a deploy is started."""
    server: Any = None

    def start(self) -> RenderServer:
        render = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                render.requests.append((self.command, self.path, body, self.headers.get("Authorization", "")))
                self._asked = (self.command, self.path, body)
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"message": "unauthorized"})
                if render.throttle > 0:
                    render.throttle -= 1
                    return self._send(429, {"message": "rate limited"}, {"Retry-After": "1"})
                parts = urlsplit(self.path)
                segments = parts.path.strip("/").split("/")  # v1 services srv-x deploys
                service = segments[2] if len(segments) > 2 else ""
                if service not in render.deploys:
                    return self._send(404, {"message": "service not found"})
                items = render.deploys[service]
                if self.command == "GET" and segments[3:] == ["deploys"]:
                    query = parse_qs(parts.query)
                    cursor = query.get("cursor", [None])[0]
                    start = next((i + 1 for i, d in enumerate(items) if d["id"] == cursor), 0) if cursor else 0
                    page = items[start : start + int(query["limit"][0])]
                    return self._send(200, [{"cursor": d["id"], "deploy": d} for d in page])
                if self.command == "GET" and len(segments) == 3:
                    return self._send(200, render.service(service))
                if self.command == "POST" and segments[3:] == ["rollback"]:
                    if not isinstance(body, dict) or set(body) != {"deployId"}:
                        return self._send(400, {"message": "deployId is required"})
                    target = next((d for d in items if d["id"] == body["deployId"]), None)
                    if target is None:
                        return self._send(404, {"message": "deploy not found"})
                    if target["status"] not in ("live", "deactivated"):  # only a deploy that once went live has a build
                        return self._send(400, {"message": f"cannot roll back to a deploy that is {target['status']}"})
                    if render.retained is not None and target["id"] not in render.retained:
                        return self._send(render.not_retained, {"message": "build is no longer available"})
                    return self._send(201, render.new_deploy(service, target["commit"], "rollback"))
                if self.command == "POST" and segments[3:] == ["deploys"]:
                    body = body or {}
                    if set(body) - _DEPLOY_FIELDS or body.get("clearCache", "clear") not in ("clear", "do_not_clear"):
                        return self._send(400, {"message": "invalid body"})
                    commit = next((d["commit"] for d in items if d["commit"]["id"] == body.get("commitId")),
                                  {"id": body.get("commitId", "head"), "message": "", "createdAt": None})  # fmt: skip
                    return self._send(201, render.new_deploy(service, commit, "api"))
                if self.command == "PATCH" and len(segments) == 3:
                    bad = [k for k, v in (body or {}).items() if v not in _PATCHABLE.get(k, ())]
                    if bad or not body:
                        return self._send(400, {"message": f"invalid field(s): {bad}"})
                    render.settings.setdefault(service, {}).update(body)
                    return self._send(200, render.service(service))
                return self._send(404, {"message": "not found"})

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                render.exchanges.append((*self._asked, status, payload))
                send_reply(self, Reply(status, payload, headers or {}), {"Content-Type": "application/json"})

            do_GET = do_POST = do_PATCH = _handle  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def service(self, service_id: str) -> dict[str, Any]:
        """The service object, its pre-deploy command where Render keeps it for a native runtime."""
        details: dict[str, Any] = {"buildCommand": "npm ci", "startCommand": "node server.js"}
        if service_id in self.pre_deploy:
            details["preDeployCommand"] = self.pre_deploy[service_id]
        settings = {"autoDeploy": "yes", "autoDeployTrigger": "commit", **self.settings.get(service_id, {})}
        return {"id": service_id, "name": "api", "type": "web_service", **settings,
                "serviceDetails": {"env": "node", "envSpecificDetails": details}}  # fmt: skip

    def new_deploy(self, service_id: str, commit: dict[str, Any], trigger: str) -> dict[str, Any]:
        """A deploy Render has just created (not live yet), newest first."""
        items = self.deploys.setdefault(service_id, [])
        at = datetime.now(UTC).isoformat()
        made = {"id": f"dep-new{len(items) + 1:02d}", "commit": commit, "status": "created", "trigger": trigger,
                "startedAt": at, "finishedAt": None, "createdAt": at}  # fmt: skip
        items.insert(0, made)
        self.started.set()
        return dict(made)

    def goes_live(self, service_id: str, deploy_id: str, status: str = "live") -> None:
        """The deploy finishes now (live, or failed); a live one deactivates the one live before it."""
        at = datetime.now(UTC).isoformat()
        for item in self.deploys[service_id]:
            if item["id"] == deploy_id:
                item["status"], item["finishedAt"] = status, at
            elif status == "live" and item["status"] == "live":
                item["status"] = "deactivated"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def sent(self, method: str) -> list[tuple[str, str, dict[str, Any] | None, str]]:
        return [r for r in self.requests if r[0] == method]


@pytest.fixture
def render() -> Iterator[RenderServer]:
    """Render's API stand-in; at the test's end every exchange is checked against Render's published description
    (render-oss/cli's generated client, tests/fixtures/contracts/render.json)."""
    from tests.contracts import answer_problems, request_problems

    server = RenderServer().start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    problems: set[str] = set()
    for method, target, body, status, answer in server.exchanges:
        parts = urlsplit(target)
        problems.update(request_problems("render", method, parts.path, parse_qs(parts.query), body))
        problems.update(answer_problems("render", method, parts.path, status, answer))
    if problems:
        pytest.fail("the Render stand-in's exchanges break Render's description:\n" + "\n".join(sorted(problems)))


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


@pytest.mark.slow
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
    assert [(p, b) for _, p, b, _ in render.sent("PATCH")] == [
        ("/v1/services/srv-api123", {"autoDeploy": "no", "autoDeployTrigger": "off"})
    ]
    assert render.service("srv-api123")["autoDeployTrigger"] == "off"
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


# --- the deploy guard: automatic rollback -------------------------------------------------


def guarded(render: RenderServer, app: AppServer, policy: str = "", service: str = "") -> str:
    """The schedule with `auto_rollback: true` on the api service (and a job-level policy, if given)."""
    text = schedule(render, app).replace(
        "health: api-health}", f"health: api-health, auto_rollback: true{', ' + service if service else ''}}}"
    )
    return (
        text.replace("      services:\n", f"      auto_rollback: {{{policy}}}\n      services:\n") if policy else text
    )


def break_the_app(render: RenderServer, app: AppServer, config: Path, env: dict[str, str], answer: int = 503) -> None:
    """dep-001 proven good; then dep-002 goes live and the app answers 503 (DOWN at the first check)."""
    app.routes["/api/health"] = lambda n: Reply(200)
    render.deploys["srv-api123"] = [deploy(1, "live", 60)]
    run_now("api-health", config, env)
    assert run_now("render-deploys", config, env)[1]["summary"].endswith("is good")
    render.deploys["srv-api123"] = [deploy(2, "live", 1, "bad change"), deploy(1, "deactivated", 60)]
    app.routes["/api/health"] = lambda n: Reply(answer, b"cannot reach the database")
    run_now("api-health", config, env)
    render.requests.clear()


def history_of(kind: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """The ledger's entries of one kind, newest first, with their details (`history --json` shows none)."""
    from worker.ledger import SqliteLedger

    ledger = SqliteLedger(Path(env["OPSKEEPER_LEDGER"]))
    try:
        return [{**r.public(), "details": dict(r.details)} for r in ledger.recent(limit=100) if r.kind == kind]
    finally:
        ledger.close()


@pytest.mark.slow
def test_a_deploy_that_breaks_the_app_is_rolled_back_once_verified_and_not_again(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, sentry: SentryReceiver
) -> None:
    """DOWN after a new deploy: one POST /rollback to the last good deploy, one PATCH turning auto-deploy off, a
    `rollback` history entry marked automatic, then `self-healed` once the rollback is live and the app UP; a
    second DOWN inside the cooldown calls a human instead of rolling back again."""
    env = {**deploy_env, "SENTRY_DSN": sentry.dsn}
    config = write(tmp_path / "jobs.yaml", guarded(render, app))
    break_the_app(render, app, config, env)
    code, out, log = run_now("render-deploys", config, env)
    assert (code, out["status"]) == (1, "warn"), out
    assert out["summary"].startswith("api: rolled back automatically from dep-002 to dep-001 (rolled back): ")
    assert "backend DOWN" in out["summary"]
    assert out["summary"].endswith("auto-deploy turned off; verifying")
    assert [(p, b) for _, p, b, _ in render.sent("POST")] == [("/v1/services/srv-api123/rollback",
                                                              {"deployId": "dep-001"})]  # fmt: skip
    assert [b for _, _, b, _ in render.sent("PATCH")] == [{"autoDeploy": "no", "autoDeployTrigger": "off"}]
    [entry] = history_of("rollback", env)
    assert (entry["details"]["automatic"], entry["details"]["from"], entry["details"]["to"]) == (True, "dep-002",
                                                                                                "dep-001")  # fmt: skip
    assert entry["details"]["signal"] == "health"
    assert entry["details"]["requested_after_down_s"] >= 0
    assert '"event": "deploy.rollback"' in log
    # Still verifying: the rollback deploy is not live yet; nothing is sent again.
    code, out, _ = run_now("render-deploys", config, env)
    assert "verifying until" in out["summary"]
    assert len(render.sent("POST")) == 1
    render.goes_live("srv-api123", "dep-new03")
    app.routes["/api/health"] = lambda n: Reply(200)
    run_now("api-health", config, env)
    run_now("api-health", config, env)  # success_threshold 2: UP again
    code, out, _ = run_now("render-deploys", config, env)
    assert out["summary"].startswith("api: the automatic rollback from dep-002 to dep-001 self-healed the app: "
                                     "dep-new03 is live and the health job sees the app UP")  # fmt: skip
    [outcome] = history_of("rollback_outcome", env)
    assert (outcome["status"], outcome["details"]["outcome"]) == ("ok", "self-healed")
    messages = [e.get("message", "") for e in sentry.wait_items("event", 3)]
    assert any("rolled back automatically" in m for m in messages)
    assert any("self-healed" in m for m in messages)
    # A second bad deploy within the 6h cooldown: a human is called, nothing is rolled back.
    render.deploys["srv-api123"].insert(0, deploy(4, "live", 0.5, "another bad change"))
    render.goes_live("srv-api123", "dep-004")
    app.routes["/api/health"] = lambda n: Reply(503)
    run_now("api-health", config, env)
    code, out, _ = run_now("render-deploys", config, env)
    assert (code, out["status"]) == (2, "fail")
    assert "needs a human now" in out["summary"]
    assert "cooldown 6h" in out["summary"]
    assert len(render.sent("POST")) == 1
    assert len(render.sent("PATCH")) == 1


@pytest.mark.slow
def test_a_healthy_new_deploy_is_never_rolled_back(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """A new deploy with the app UP is left alone: no rollback, no PATCH, no service lookup."""
    config = write(tmp_path / "jobs.yaml", guarded(render, app))
    break_the_app(render, app, config, deploy_env, answer=200)
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert (code, out["status"]) == (0, "ok"), out
    assert [m for m, *_ in render.requests] == ["GET"]


@pytest.mark.slow
@pytest.mark.parametrize("answer", [400, 404])
def test_a_good_deploy_whose_build_is_gone_is_deployed_anew_by_commit(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, answer: int
) -> None:
    """/rollback answering 400 or 404 (the build is no longer retained): POST /deploys with the good commitId."""
    config = write(tmp_path / "jobs.yaml", guarded(render, app))
    break_the_app(render, app, config, deploy_env)
    render.retained, render.not_retained = {"dep-002"}, answer
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert code == 1, out
    assert "deployed its commit 001aaaa anew (build not retained)" in out["summary"]
    assert [(p, b) for _, p, b, _ in render.sent("POST")] == [
        ("/v1/services/srv-api123/rollback", {"deployId": "dep-001"}),
        ("/v1/services/srv-api123/deploys", {"commitId": "001" + "a" * 37}),
    ]
    assert history_of("rollback", deploy_env)[0]["details"]["method"] == "deploy"


@pytest.mark.slow
def test_a_service_with_a_pre_deploy_command_calls_a_human_instead(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """With a preDeployCommand (migrations) and skip_if_pre_deploy on, the run fails naming why; nothing is sent;
    with it off, the same deploy is rolled back."""
    config = write(tmp_path / "jobs.yaml", guarded(render, app))
    break_the_app(render, app, config, deploy_env)
    render.pre_deploy["srv-api123"] = "npm run migrate"
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert (code, out["status"]) == (2, "fail")
    assert "needs a human now" in out["summary"]
    assert "pre-deploy command" in out["summary"]
    assert "a rollback does not undo a migration" in out["summary"]
    assert render.sent("POST") == []
    assert render.sent("PATCH") == []
    assert "npm run migrate" not in out["summary"]
    run_now("render-deploys", config, deploy_env)  # decided once per deploy: no second notice, still nothing sent
    assert render.sent("POST") == []
    bold = write(tmp_path / "bold.yaml", guarded(render, app, "skip_if_pre_deploy: false"))
    break_the_app(render, app, bold, {**deploy_env, "OPSKEEPER_LEDGER": str(tmp_path / "bold.db")})
    run_now("render-deploys", bold, {**deploy_env, "OPSKEEPER_LEDGER": str(tmp_path / "bold.db")})
    assert [p for _, p, _, _ in render.sent("POST")] == ["/v1/services/srv-api123/rollback"]


def test_no_good_deploy_known_means_an_alert_only(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """DOWN after the first deploy opskeeper ever saw: nothing proven good to go to, so FAIL and nothing sent."""
    config = write(tmp_path / "jobs.yaml", guarded(render, app))
    render.deploys["srv-api123"] = [deploy(1, "live", 1)]
    app.routes["/api/health"] = lambda n: Reply(503)
    run_now("api-health", config, deploy_env)
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert (code, out["status"]) == (2, "fail")
    assert out["summary"].endswith("not rolled back: no deploy was ever proven good to go back to")
    assert render.sent("POST") == []
    assert render.sent("PATCH") == []


@pytest.mark.slow
def test_a_deploy_that_went_live_while_the_app_was_already_down_is_kept(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """The app DOWN before the deploy went live (the deploy may be the fix): warn, and no rollback."""
    config = write(tmp_path / "jobs.yaml", guarded(render, app))
    app.routes["/api/health"] = lambda n: Reply(200)
    render.deploys["srv-api123"] = [deploy(1, "live", 60)]
    run_now("api-health", config, deploy_env)
    run_now("render-deploys", config, deploy_env)
    app.routes["/api/health"] = lambda n: Reply(503)
    run_now("api-health", config, deploy_env)
    render.deploys["srv-api123"] = [deploy(2, "live", 0, "the fix"), deploy(1, "deactivated", 60)]
    run_now("api-health", config, deploy_env)
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert (code, out["status"]) == (1, "warn"), out
    assert "not rolled back: backend was already DOWN before the deploy went live" in out["summary"]
    assert render.sent("POST") == []


@pytest.mark.slow
def test_a_rollback_deploy_that_fails_needs_a_human(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer
) -> None:
    """The rollback's own deploy failing ends the verification as `needs a human` (FAIL, history entry)."""
    config = write(tmp_path / "jobs.yaml", guarded(render, app))
    break_the_app(render, app, config, deploy_env)
    run_now("render-deploys", config, deploy_env)
    render.goes_live("srv-api123", "dep-new03", "update_failed")
    code, out, _ = run_now("render-deploys", config, deploy_env)
    assert (code, out["status"]) == (2, "fail")
    assert "needs a human now: the rollback deploy dep-new03 ended update_failed" in out["summary"]
    assert history_of("rollback_outcome", deploy_env)[0]["status"] == "fail"


def github_statuses(request: Any) -> Reply:
    """GitHub's create-commit-status endpoint: 422 for what the real one refuses (state, context, description)."""
    body = json.loads(request.body or b"{}")
    valid = (body.get("state") in ("error", "failure", "pending", "success") and isinstance(body.get("context"), str)
             and len(body.get("description", "")) <= 140 and set(body) <= {"state", "context", "description",
                                                                           "target_url"})  # fmt: skip
    return Reply(201, {"id": 1, **body}) if valid else Reply(422, {"message": "Validation Failed"})


@pytest.mark.slow
def test_commit_statuses_mark_the_last_good_and_the_rolled_back_commit(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, vendor: Any
) -> None:
    """With GITHUB_TOKEN and a repo: success `opskeeper/last-good` on the good commit, failure on the one rolled
    back, each with the deploy's dashboard link and the token as a bearer."""
    vendor.routes[f"/repos/acme/shop/statuses/{'001' + 'a' * 37}"] = github_statuses
    vendor.routes[f"/repos/acme/shop/statuses/{'002' + 'a' * 37}"] = github_statuses
    config = write(tmp_path / "jobs.yaml", guarded(render, app, service="repo: acme/shop").replace(
        "      services:\n", f"      github_api_url: {vendor.url}\n      services:\n"))  # fmt: skip
    env = {**deploy_env, "GITHUB_TOKEN": "github_pat_statuses_0123456789"}
    break_the_app(render, app, config, env)
    _, out, _ = run_now("render-deploys", config, env)
    assert "github_gap" not in out["details"]
    bodies = [(r.path.rsplit("/", 1)[1][:3], json.loads(r.body)) for r in vendor.requests]
    assert [(sha, b["state"], b["context"]) for sha, b in bodies] == [
        ("001", "success", "opskeeper/last-good"), ("002", "failure", "opskeeper/last-good")]  # fmt: skip
    assert bodies[0][1]["target_url"] == "https://dashboard.render.com/web/srv-api123/deploys/dep-001"
    assert bodies[1][1]["description"].startswith("rolled back by opskeeper to dep-001")
    assert all(r.headers["authorization"] == "Bearer github_pat_statuses_0123456789" for r in vendor.requests)


def test_a_token_that_may_not_write_statuses_is_a_gap(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, vendor: Any
) -> None:
    """A 403 from GitHub is the run's `github_gap`, naming the scope; the deploy is still proven good."""
    vendor.routes[f"/repos/acme/shop/statuses/{'001' + 'a' * 37}"] = lambda r: Reply(403, {"message": "denied"})
    config = write(tmp_path / "jobs.yaml", schedule(render, app).replace("health: api-health}", (
        "health: api-health, repo: acme/shop}")).replace(
        "      services:\n", f"      github_api_url: {vendor.url}\n      services:\n"))  # fmt: skip
    env = {**deploy_env, "GITHUB_TOKEN": "github_pat_statuses_0123456789"}
    app.routes["/api/health"] = lambda n: Reply(200)
    render.deploys["srv-api123"] = [deploy(1, "live", 60)]
    run_now("api-health", config, env)
    code, out, _ = run_now("render-deploys", config, env)
    assert (code, out["status"]) == (0, "ok")
    assert out["details"]["github_gap"].startswith("the token may not write commit statuses (it needs Commit statuses")


def test_auto_rollback_without_a_health_job_is_a_config_error(tmp_path: Path, env: dict[str, str]) -> None:
    """`auto_rollback: true` on a service with no health job is refused at validation, naming the service."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: render-deploys
    kind: deploys
    schedule: every 5m
    options:
      services: [{name: api, service_id: srv-api123, auto_rollback: true}]
""")  # fmt: skip
    result = opskeeper("validate", "--config", str(config), env=env)
    assert result.code == 78
    assert "service 'api': auto_rollback needs `health`" in result.stdout + result.stderr


@pytest.mark.slow
def test_the_daemon_runs_the_guard_as_soon_as_the_health_job_goes_down(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, daemon_factory: Any
) -> None:
    """In the daemon, a health job turning FAIL runs its deploys job at once (its own schedule is hourly): the
    rollback is requested right after the DOWN, not at the next scheduled run."""
    config = write(tmp_path / "jobs.yaml", guarded(render, app).replace("every 5m", "every 1h")
                   .replace("every 1m", "every 1s"))  # fmt: skip
    break_the_app(render, app, config, deploy_env)
    app.routes["/api/health"] = lambda n: Reply(200)
    run_now("api-health", config, deploy_env)
    run_now("api-health", config, deploy_env)  # UP again before the daemon starts
    app.routes["/api/health"] = lambda n: Reply(503)
    daemon = daemon_factory(config, deploy_env)
    _, woken = daemon.wait_for(lambda e: e["event"] == "job.woken")
    assert (woken["job_id"], woken["by"]) == ("render-deploys", "api-health")
    assert render.started.wait(30)
    _, done = daemon.wait_for(lambda e: e["event"] == "deploy.rollback")
    assert done["to"] == "dep-001"
    assert done["requested_after_down_s"] < 3600
    assert daemon.terminate() == 0


# --- the guard's decisions, as pure functions ----------------------------------------------


def guard_history() -> ServiceHistory:
    return ServiceHistory([record(2, "live", T0), record(1, "deactivated", T0 - timedelta(days=1), good=True)])


def test_an_outage_that_begins_after_the_watch_is_not_the_deploys_doing() -> None:
    """DOWN 20 minutes after going live, with a 15-minute watch: no rollback, and the reason says why."""
    from jobs.deploys.guard import AutoRollback, decide

    checks = [check(T0 + timedelta(minutes=m)) for m in range(0, 20, 5)] + [check(T0 + timedelta(minutes=20), "DOWN")]
    decision = decide(guard_history(), checks, T0 + timedelta(minutes=21), AutoRollback(), last=None, pre_deploy="")
    assert (decision.action, decision.reason) == ("none", "backend went DOWN 20m after the deploy went live, past "
                                                          "the 15m watch")  # fmt: skip


def test_the_sentry_signal_rolls_back_on_an_error_spike_with_the_figures() -> None:
    """With error_ratio 5: 60 errors against 4 for the last good release is a rollback; 15 against 4 is not."""
    from jobs.deploys.guard import AutoRollback, Errors, decide

    policy = AutoRollback(error_ratio=5, min_errors=20)
    ups = [check(T0 + timedelta(minutes=1))]
    now = T0 + timedelta(minutes=5)
    spike = decide(guard_history(), ups, now, policy, last=None, pre_deploy="",
                   errors=Errors(60, 4, timedelta(minutes=5)))  # fmt: skip
    assert (spike.action, spike.signal, spike.target and spike.target.deploy_id) == ("rollback", "errors", "dep-1")
    assert spike.figures == {"errors_new": 60, "errors_previous": 4, "window_s": 300.0, "limit": 20}
    assert "60 errors in Sentry in its first 5m against 4" in spike.reason
    calm = decide(
        guard_history(), ups, now, policy, last=None, pre_deploy="", errors=Errors(15, 4, timedelta(minutes=5))
    )
    assert calm.action == "none"


def test_a_rollback_not_healed_by_its_deadline_needs_a_human() -> None:
    """The rollback deploy live but the app still DOWN at `verify_by`: `needs a human`; before it, still waiting."""
    from jobs.deploys.guard import Rollback, verify

    history = ServiceHistory([record(3, "live", T0 + timedelta(minutes=3)), record(2, "deactivated", T0),
                              record(1, "deactivated", T0 - timedelta(days=1), good=True)])  # fmt: skip
    pending = Rollback(at=(T0 + timedelta(minutes=1)).isoformat(), from_deploy="dep-2",
                       to="dep-1", to_commit="c1", method="rollback", new_deploy="dep-3",
                       reason="r", signal="health",
                       verify_by=(T0 + timedelta(minutes=16)).isoformat())  # fmt: skip
    down = [check(T0 + timedelta(minutes=m), "DOWN") for m in range(4, 16)]
    assert verify(pending, history, down, T0 + timedelta(minutes=10)) is None
    assert verify(pending, history, down, T0 + timedelta(minutes=16)) == (
        "needs a human",
        "dep-3 is live but the app is not UP 15m after the rollback",
    )
    healed = [*down, check(T0 + timedelta(minutes=17))]
    assert verify(pending, history, healed, T0 + timedelta(minutes=17))[0] == "self-healed"  # type: ignore[index]


@pytest.mark.slow
def test_an_error_spike_in_sentry_rolls_back_a_deploy_whose_health_stays_up(
    tmp_path: Path, deploy_env: dict[str, str], render: RenderServer, app: AppServer, vendor: Any
) -> None:
    """With sentry_releases and error_ratio: the live release's errors (Discover, by release and project slug)
    against the last good one's over the same time; a spike rolls back, with both counts in the history."""
    from tests.conftest import Request

    good, bad = "001" + "a" * 37, "002" + "a" * 37
    vendor.routes["/api/0/organizations/acme/releases/"] = lambda r: Reply(201, {})
    vendor.routes[f"/api/0/organizations/acme/releases/{good}/deploys/"] = lambda r: Reply(201, {})
    vendor.routes[f"/api/0/organizations/acme/releases/{bad}/deploys/"] = lambda r: Reply(201, {})

    def events(request: Request) -> Reply:
        query = request.query["query"][0]
        assert request.query["dataset"] == ["errors"]
        assert "project" not in request.query
        return Reply(200, {"data": [{"count()": 90 if f'release:"{bad}"' in query else 3}]})

    vendor.routes["/api/0/organizations/acme/events/"] = events
    config = write(tmp_path / "jobs.yaml", with_releases(guarded(render, app, "error_ratio: 5")))
    env = {**deploy_env, "SENTRY_ORG": "acme", "SENTRY_AUTH_TOKEN": "sntrys_rel_1234", "SENTRY_API_URL": vendor.url}
    break_the_app(render, app, config, env, answer=200)
    code, out, _ = run_now("render-deploys", config, env)
    assert code == 1, out
    assert "90 errors in Sentry in its first" in out["summary"]
    assert "against 3 for the last good release" in out["summary"]
    [entry] = history_of("rollback", env)
    assert (entry["details"]["signal"], entry["details"]["errors_new"], entry["details"]["errors_previous"]) == (
        "errors", 90, 3)  # fmt: skip
    queries = [r.query["query"][0] for r in vendor.requests if r.path.endswith("/events/")]
    assert all(q.endswith("project:shop-api") for q in queries)


def test_a_rollback_of_an_unknown_service_is_not_a_lost_build(render: RenderServer) -> None:
    """Render's 404 for a service it does not have is said as such, not read as "build not retained" (which
    would make the guard rebuild the commit on a service that is not there); a known service's 404 still is."""
    from worker.http import HttpError
    from worker.vendors.render import RenderAPI

    render.deploys["srv-api123"] = [deploy(2, "live", 10), deploy(1, "deactivated", 600)]
    render.retained, render.not_retained = set(), 404
    api = RenderAPI(render.url, KEY)
    try:
        assert api.rollback("srv-api123", "dep-001") is None
        with pytest.raises(HttpError, match=r"no service srv-gone \(HTTP 404\): check the service id"):
            api.rollback("srv-gone", "dep-001")
    finally:
        api.close()

"""The HTTP layer against real local servers: a private CA, a forward proxy, Retry-After, retry rules."""

from __future__ import annotations

import ast
import asyncio
import email.utils
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.conftest import (
    ROOT,
    AppServer,
    Proxy,
    Reply,
    Request,
    SentryReceiver,
    VendorAPI,
    digest_auth,
    opskeeper,
    write,
)
from worker import http
from worker.http import Api, HttpError, Proxies, RejectedError, RetryPolicy, UnavailableError, bypasses, retry_after
from worker.job import JobContext, Status
from worker.vendors.atlas import AtlasAPI
from worker.vendors.github import GitHub
from worker.vendors.nodejs import release_data
from worker.vendors.npm import Registry
from worker.vendors.render import RenderAPI
from worker.vendors.sentry_api import SentryAPI

FAST = RetryPolicy(attempts=3, wait_initial=timedelta(0), wait_max=timedelta(0), wait_jitter=timedelta(0))


# --- a vendor API behind a private CA ------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def private(ca: trustme.CA) -> Iterator[VendorAPI]:
    """A vendor API over HTTPS whose certificate only the private CA vouches for, serving each vendor's routes."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server = VendorAPI(ssl_context=context)
    serve_every_vendor(server)
    yield server
    server.close()


def serve_every_vendor(server: VendorAPI) -> None:
    """One answer per vendor client, enough for each to succeed."""
    routes: dict[str, Callable[[Request], Reply]] = {
        "/v1/services/srv-abc/deploys": lambda r: Reply(200, [{"cursor": "c1", "deploy": {"id": "dep-1"}}]),
        "/api/0/organizations/acme/issues/": lambda r: Reply(200, [{"id": "1", "title": "TypeError"}]),
        "/repos/acme/shop": lambda r: Reply(200, {"default_branch": "main"}),
        "/express": lambda r: Reply(200, {"name": "express", "dist-tags": {"latest": "5.1.0"}, "versions": {}}),
        "/dist/index.json": lambda r: Reply(200, [{"version": "v24.1.0", "lts": False, "security": False}]),
        "/schedule.json": lambda r: Reply(200, {"v24": {"start": "2025-05-06", "end": "2028-04-30"}}),
    }
    server.routes.update(routes)
    server.routes["/api/atlas/v2/groups/g1/accessList"] = digest_auth(
        lambda r: Reply(200, {"results": []}), "pub", "priv-key-000", "MMS Public API"
    )


def call(client: str, base: str) -> Any:
    """One call through one vendor client (or a health probe) against `base`; returns what it read."""
    if client == "render":
        api = RenderAPI(base + "/v1", "rnd_key", retry=FAST)
        try:
            return list(api.deploys("srv-abc", 20, 1))
        finally:
            api.close()
    if client == "sentry":
        sentry = SentryAPI(base, "acme", "sntrys_token", [], timedelta(seconds=10))
        try:
            return sentry.issues("is:unresolved", "7d", max_pages=1)
        finally:
            sentry.close()
    if client == "github":
        with GitHub("acme/shop", api_url=base, token="ghp_x") as github:
            return github.default_branch()
    if client == "atlas":
        with AtlasAPI(base + "/api/atlas/v2", "digest", timedelta(seconds=10)) as atlas:
            return atlas.get("/groups/g1/accessList", "2023-01-01")
    if client == "registry":

        async def packages() -> Any:
            registry = Registry(base, None, {})
            try:
                found = await registry.packages(["express"])
                if "express" in registry.failures:  # a failed document is kept for the report's gap, not raised
                    raise registry.failures["express"]
                return found
            finally:
                await registry.close()

        return asyncio.run(packages())
    if client == "nodejs":
        return asyncio.run(release_data(base + "/dist/index.json", base + "/schedule.json"))[0]
    if client == "health":
        return probe(base + "/repos/acme/shop")
    raise AssertionError(client)


def probe(url: str, **endpoint: Any) -> dict[str, Any]:
    """Run a health job with one endpoint; its details for that endpoint."""
    import tempfile

    from jobs.health.job import HealthJob, HealthOptions
    from worker.ledger import JobState, SqliteLedger

    scratch = tempfile.TemporaryDirectory()
    ledger = SqliteLedger(Path(scratch.name) / "ledger.db")
    try:
        ctx = JobContext(job_id="h", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 60,
                         state=JobState(ledger, "h"), cancel=threading.Event(), log=lambda *a, **k: None,
                         notify=lambda n: None)  # fmt: skip
        outcome = HealthJob(HealthOptions.model_validate({"endpoints": [{"name": "api", "url": url, **endpoint}],
                                                          "failure_threshold": 1})).run(ctx)  # fmt: skip
    finally:
        ledger.close()
        scratch.cleanup()
    return {"status": outcome.status, **outcome.details["api"]}


CLIENTS = ["render", "sentry", "github", "atlas", "registry", "nodejs", "health"]


@pytest.fixture
def atlas_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_PUBLIC_KEY", "pub")
    monkeypatch.setenv("ATLAS_PRIVATE_KEY", "priv-key-000")


@pytest.mark.parametrize("client", CLIENTS)
def test_private_ca_through_ssl_cert_file_alone(client: str, private: VendorAPI, ca_file: str, atlas_keys: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """With the private CA only in SSL_CERT_FILE, every vendor client and a health probe reach the server."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    answer = call(client, private.url)
    if client == "health":
        assert (answer["status"], answer["state"]) == (Status.OK, "UP")
    else:
        assert answer
    assert private.requests, "the server saw no request"
    assert all(r.headers["user-agent"].startswith("opskeeper/") for r in private.requests)


@pytest.mark.parametrize("client", CLIENTS)
def test_untrusted_private_ca_names_the_bundle_and_the_fix(client: str, private: VendorAPI, atlas_keys: None) -> None:
    """Without SSL_CERT_FILE the call fails saying verification failed, which CAs were used, and what sets others."""
    if client == "health":
        reason = probe(private.url + "/repos/acme/shop")["reason"]
    else:
        with pytest.raises(HttpError) as caught:
            call(client, private.url)
        reason = str(caught.value)
        assert not isinstance(caught.value, UnavailableError), "a certificate failure is not worth retrying"
    assert "certificate verify failed" in reason
    assert "CA bundle used: the operating system's store; set SSL_CERT_FILE or ca_file to trust another CA" in reason
    assert private.requests == []


def test_ca_file_overrides_ssl_cert_file(private: VendorAPI, ca_file: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """An endpoint's own ca_file wins over SSL_CERT_FILE, in both directions."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    url = private.url + "/repos/acme/shop"
    assert probe(url, ca_file=ca_file)["state"] == "UP"
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    failed = probe(url, ca_file=str(other))
    assert failed["reason"].startswith("TLS: certificate verify failed")
    assert f"CA bundle used: ca_file {other}" in failed["reason"]


def test_unreadable_ca_file_is_a_setting_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SSL_CERT_FILE that does not exist is named when the client is built, not met as a TLS mystery later."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(http.HttpConfigError, match=r"SSL_CERT_FILE=.*missing\.pem: cannot read it"):
        Api("Render API", "https://localhost:1")


# --- a forward proxy ---------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_https_proxy_carries_every_client(client: str, private: VendorAPI, ca_file: str, proxy: Proxy,
                                          atlas_keys: None, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """With HTTPS_PROXY set, each client's requests go through the proxy's CONNECT tunnel."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    answer = call(client, private.url)
    assert answer
    port = private.server.server_address[1]
    assert proxy.seen
    assert set(proxy.seen) == {f"CONNECT localhost:{port}"}


@pytest.mark.parametrize("no_proxy", ["localhost", ".localhost", "LOCALHOST:{port}", "*", "example.com, localhost"])
def test_no_proxy_goes_straight_to_the_server(no_proxy: str, private: VendorAPI, ca_file: str, proxy: Proxy,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A host NO_PROXY names is reached directly: the proxy sees nothing."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", no_proxy.format(port=private.server.server_address[1]))
    assert call("github", private.url) == "main"
    assert proxy.seen == []


def test_http_proxy_relays_plain_http(proxy: Proxy, vendor: VendorAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY carries http:// requests in absolute form; HTTPS_PROXY alone leaves them direct."""
    serve_every_vendor(vendor)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    assert call("github", vendor.url) == "main"
    assert proxy.seen == []
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    assert call("github", vendor.url) == "main"
    assert proxy.seen == [f"GET {vendor.url}/repos/acme/shop"]


def test_proxy_credentials_are_used_and_never_shown(private: VendorAPI, ca_file: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Credentials in the proxy URL answer its 407; a wrong password fails naming the proxy but not the password."""
    guarded = Proxy(credentials=("alice", "s3cret-proxy-pw"))
    try:
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        monkeypatch.setenv("HTTPS_PROXY", f"http://alice:s3cret-proxy-pw@127.0.0.1:{guarded.port}")
        assert call("github", private.url) == "main"
        monkeypatch.setenv("HTTPS_PROXY", f"http://alice:wrong-proxy-pw@127.0.0.1:{guarded.port}")
        with pytest.raises(HttpError) as caught:
            call("github", private.url)
    finally:
        guarded.close()
    message = str(caught.value)
    assert "407" in message
    assert f"via proxy http://127.0.0.1:{guarded.port} (from HTTPS_PROXY)" in message
    assert "wrong-proxy-pw" not in message
    assert "alice" not in message


@pytest.mark.slow
def test_dead_proxy_is_named_in_the_error(closed_port: int, vendor: VendorAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy nobody answers on: the error says which proxy, from which variable."""
    monkeypatch.setenv("http_proxy", f"127.0.0.1:{closed_port}")
    with pytest.raises(UnavailableError) as caught:
        call("github", vendor.url)
    assert str(caught.value).endswith(f"(via proxy http://127.0.0.1:{closed_port} (from http_proxy))")


@pytest.fixture
def closed_port() -> int:
    from tests.conftest import free_port_closed

    return free_port_closed()


def test_proxy_variables_as_urllib_reads_them() -> None:
    """Either case works; the lower-case one wins; set empty, it unsets; NO_PROXY splits on commas and spaces."""
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "ALL_PROXY": "socks5://s:3",
           "http_proxy": "", "HTTP_PROXY": "http://ignored:4", "no_proxy": "a.com, .b.com  10.0.0.0/8"}  # fmt: skip
    proxies = Proxies.from_environ(env)
    assert (proxies.https, proxies.http, proxies.all) == (("https_proxy", "http://lower:2"), None,
                                                          ("ALL_PROXY", "socks5://s:3"))  # fmt: skip
    assert proxies.no_proxy == ("a.com", ".b.com", "10.0.0.0/8")
    assert proxies.for_url(httpx.URL("https://x.io/")) == ("https_proxy", "http://lower:2")
    assert proxies.for_url(httpx.URL("http://x.io/")) == ("ALL_PROXY", "socks5://s:3")
    assert proxies.for_url(httpx.URL("https://api.b.com/")) is None


@pytest.mark.parametrize(("host", "port", "entries", "expected"), [
    ("example.com", 443, ["example.com"], True),
    ("api.example.com", 443, ["example.com"], True),
    ("api.example.com", 443, [".example.com"], True),
    ("example.com", 443, [".example.com"], True),
    ("badexample.com", 443, ["example.com"], False),
    ("example.com.", 443, ["EXAMPLE.com"], True),
    ("example.com", 8443, ["example.com:443"], False),
    ("example.com", 443, ["example.com:443"], True),
    ("10.1.2.3", 80, ["10.0.0.0/8"], True),
    ("11.1.2.3", 80, ["10.0.0.0/8"], False),
    ("127.0.0.1", 80, ["localhost"], False),
    ("::1", 80, ["::1"], True),
    ("::1", 8080, ["[::1]:8080"], True),
    ("2001:db8::5", 80, ["2001:db8::/32"], True),
    ("anything.internal", 1, ["*"], True),
    ("example.com", 443, [], False),
])  # fmt: skip
def test_no_proxy_matches_as_curl_does(host: str, port: int, entries: list[str], expected: bool) -> None:
    """Names match themselves and subdomains, a leading dot changes nothing, addresses match ranges, ports narrow."""
    assert bypasses(host, port, entries) is expected


# --- retries -------------------------------------------------------------------------------


class Clock:
    """Arrival times of requests to one route, as the server saw them (wall clock, like Retry-After dates)."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []


def spaced(vendor: VendorAPI, first: Callable[[], Reply]) -> Clock:
    clock = Clock()

    def route(request: Request) -> Reply:
        clock.arrivals.append(time.time())
        return first() if len(clock.arrivals) == 1 else Reply(200, {"default_branch": "main"})

    vendor.routes["/repos/acme/shop"] = route
    return clock


def test_retry_after_seconds_is_honoured(vendor: VendorAPI) -> None:
    """A 503 with Retry-After: 1 is asked again, not before a second has passed, and the retry is logged once."""
    from structlog.testing import capture_logs

    clock = spaced(vendor, lambda: Reply(503, {"message": "busy"}, {"Retry-After": "1"}))
    with capture_logs() as logs:
        assert call("github", vendor.url) == "main"
    assert len(clock.arrivals) == 2
    assert clock.arrivals[1] - clock.arrivals[0] >= 1.0
    url = f"{vendor.url}/repos/acme/shop"
    assert logs == [{"event": "http.retry", "log_level": "warning", "method": "GET", "url": url, "attempt": 1,
                     "wait_s": 1.0, "reason": "HTTP 503"}]  # fmt: skip


def test_retry_after_http_date_is_honoured(vendor: VendorAPI) -> None:
    """A 429 with Retry-After as an HTTP date is asked again, and not before that date."""
    not_before: list[float] = []

    def first() -> Reply:
        not_before.append(float(int(time.time()) + 2))
        return Reply(429, {"message": "slow down"}, {"Retry-After": email.utils.formatdate(not_before[0], usegmt=True)})

    clock = spaced(vendor, first)
    assert call("github", vendor.url) == "main"
    assert len(clock.arrivals) == 2
    assert clock.arrivals[1] >= not_before[0]


def test_retry_after_past_the_cap_gives_up_at_once(vendor: VendorAPI) -> None:
    """A server asking for an hour is not asked again within this run; the error says why."""
    clock = spaced(vendor, lambda: Reply(503, {}, {"Retry-After": "3600"}))
    with GitHub("acme/shop", api_url=vendor.url) as github, pytest.raises(UnavailableError) as caught:
        github.default_branch()
    assert len(clock.arrivals) == 1
    assert str(caught.value) == (f"GitHub API: GET {vendor.url}/repos/acme/shop: HTTP 503 "
                                 "(Retry-After 3600s is past the 1m cap)")  # fmt: skip


@pytest.mark.parametrize(("method", "status", "tries"), [
    ("GET", 502, 3), ("GET", 503, 3), ("GET", 504, 3), ("GET", 429, 3), ("GET", 500, 1), ("GET", 404, 1),
    ("POST", 502, 1), ("POST", 504, 1), ("POST", 503, 3), ("POST", 429, 3), ("PATCH", 502, 1),
])  # fmt: skip
def test_what_is_retried(vendor: VendorAPI, method: str, status: int, tries: int) -> None:
    """429, 502, 503 and 504 are retried on a GET; a POST or PATCH only when the server did nothing (429, 503)."""
    seen: list[str] = []
    vendor.routes["/thing"] = lambda r: (seen.append(r.method), Reply(status, {"message": "no"}))[1]
    with Api("Test API", vendor.url, retry=FAST) as api, pytest.raises(HttpError) as caught:
        api.request(method, "/thing")
    assert seen == [method] * tries
    after = f" after {tries} attempts" if tries > 1 else ""
    detail = ': {"message": "no"}' if status < 500 and status != 429 else ""
    limited = "rate limited: " if status == 429 else ""  # 429 is Too Many Requests, whatever its headers
    assert str(caught.value) == f"Test API: {method} {vendor.url}/thing: {limited}HTTP {status}{after}{detail}"
    assert isinstance(caught.value, UnavailableError) is (status in http.RETRY_STATUSES)


def test_connection_refused_is_retried_then_named(closed_port: int) -> None:
    """Nobody listening: every attempt is made, each retry is logged, and the error names vendor, URL and cause."""
    from structlog.testing import capture_logs

    with capture_logs() as logs, Api("Render API", f"http://127.0.0.1:{closed_port}/v1", retry=FAST) as api, \
            pytest.raises(UnavailableError) as caught:  # fmt: skip
        api.get("/services")
    assert [(e["attempt"], e["url"], e["reason"]) for e in logs] == [
        (n, f"http://127.0.0.1:{closed_port}/v1/services", "connection refused") for n in (1, 2)
    ]
    assert str(caught.value) == f"Render API: GET http://127.0.0.1:{closed_port}/v1/services: connection refused"


def test_rejected_credentials_name_the_variable(vendor: VendorAPI) -> None:
    """A 401 names the credential to check, and is not retried."""
    vendor.routes["/v1/services/srv-abc/deploys"] = lambda r: Reply(401, {"message": "unauthorized"})
    api = RenderAPI(vendor.url + "/v1", "rnd_wrong", retry=FAST)
    try:
        with pytest.raises(RejectedError) as caught:
            list(api.deploys("srv-abc", 20, 1))
    finally:
        api.close()
    assert str(caught.value) == (f"Render API: GET {vendor.url}/v1/services/srv-abc/deploys: "
                                 "RENDER_API_KEY rejected (HTTP 401)")  # fmt: skip
    assert len(vendor.requests) == 1


# --- rate limits, as GitHub documents them (reference §15): 403 or 429, retry-after or x-ratelimit-* ------


@pytest.mark.parametrize(("status", "headers", "body", "expected"), [
    (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1796205630"}, "", 30.0),
    (429, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1796205570"}, "", 0.0),
    (403, {"retry-after": "60", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1796205900"}, "", 60.0),
    (403, {}, '{"message": "You have exceeded a secondary rate limit."}', -1.0),
    (429, {}, "", -1.0),
    (403, {"x-ratelimit-remaining": "0"}, "", -1.0),
    (403, {"x-ratelimit-remaining": "12", "x-ratelimit-reset": "1796205630"}, '{"message": "Must have admin"}', None),
    (403, {}, '{"message": "Resource not accessible by integration"}', None),
    (503, {"retry-after": "5"}, "", None),
])  # fmt: skip
def test_what_is_a_rate_limit(status: int, headers: dict[str, str], body: str, expected: float | None) -> None:
    """GitHub's primary and secondary limits, by status, headers and message; any other 403 is a refusal."""
    now = datetime.fromtimestamp(1796205600, UTC)
    assert http.rate_limit_wait(status, headers, body, now) == expected


def limited_once(vendor: VendorAPI, path: str, first: Callable[[], Reply]) -> Clock:
    """`path` answers `first()` once, then 200: the arrival times of its requests."""
    clock = Clock()

    def route(request: Request) -> Reply:
        clock.arrivals.append(time.time())
        if len(clock.arrivals) == 1:
            return first()
        # What GitHub answers each: a blob is created (201, its sha), a repository read (200).
        return Reply(201, {"sha": "b1"}) if path.endswith("/git/blobs") else Reply(200, {"default_branch": "main"})

    vendor.routes[path] = route
    return clock


def test_a_primary_rate_limit_is_waited_out_until_its_reset(vendor: VendorAPI) -> None:
    """A 403 with x-ratelimit-remaining: 0 is asked again at x-ratelimit-reset, not reported as a bad token."""
    reset: list[int] = []

    def first() -> Reply:
        reset.append(int(time.time()) + 2)
        return Reply(403, {"message": "API rate limit exceeded for installation."},
                     {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset[0])})  # fmt: skip

    clock = limited_once(vendor, "/repos/acme/shop", first)
    with GitHub("acme/shop", api_url=vendor.url, deadline=time.monotonic() + 60) as github:
        assert github.default_branch() == "main"
    assert len(clock.arrivals) == 2
    assert clock.arrivals[1] >= reset[0]


def test_a_rate_limited_blob_upload_is_sent_again(vendor: VendorAPI) -> None:
    """A POST refused by a secondary rate limit (403, retry-after) did nothing, so it is sent again."""
    clock = limited_once(vendor, "/repos/acme/shop/git/blobs", lambda: Reply(
        403, {"message": "You have exceeded a secondary rate limit."}, {"retry-after": "1"}))  # fmt: skip
    with GitHub("acme/shop", api_url=vendor.url, deadline=time.monotonic() + 60) as github:
        answer = github.api.request("POST", "/repos/acme/shop/git/blobs", json={"content": "x", "encoding": "utf-8"})
    assert answer.json()["sha"] == "b1"
    assert len(clock.arrivals) == 2
    assert clock.arrivals[1] - clock.arrivals[0] >= 1.0


@pytest.mark.parametrize(("deadline", "until"), [(5.0, "the job's deadline"), (None, "the 1m cap")])
def test_a_rate_limit_past_the_deadline_is_reported_as_one(vendor: VendorAPI, deadline: float | None,
                                                           until: str) -> None:  # fmt: skip
    """A reset an hour away is not waited for past the job's deadline (or a minute without one); the error says
    "rate limited", and that is a transient failure, not a rejected token."""
    clock = limited_once(vendor, "/repos/acme/shop", lambda: Reply(
        403, {"message": "API rate limit exceeded"},
        {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 3600)}))  # fmt: skip
    with GitHub("acme/shop", api_url=vendor.url, deadline=deadline and time.monotonic() + deadline) as github, \
            pytest.raises(UnavailableError) as caught:  # fmt: skip
        github.default_branch()
    assert len(clock.arrivals) == 1
    assert not isinstance(caught.value, RejectedError)
    assert str(caught.value).startswith(f"GitHub API: GET {vendor.url}/repos/acme/shop: rate limited: HTTP 403 "
                                        "(the rate limit's reset ")  # fmt: skip
    assert str(caught.value).endswith(f"s is past {until})")


def test_a_refusal_is_not_a_rate_limit(vendor: VendorAPI) -> None:
    """A 403 without rate-limit headers or words is the token's refusal: asked once, named as such."""
    vendor.routes["/repos/acme/shop"] = lambda r: Reply(403, {"message": "Resource not accessible by integration"},
                                                        {"x-ratelimit-remaining": "4999"})  # fmt: skip
    with GitHub("acme/shop", api_url=vendor.url, deadline=time.monotonic() + 60) as github, \
            pytest.raises(RejectedError) as caught:  # fmt: skip
        github.default_branch()
    assert len(vendor.requests) == 1
    assert str(caught.value).endswith("GITHUB_TOKEN rejected (HTTP 403)")


@pytest.mark.parametrize(("call", "path", "scope"), [
    (lambda s: s.slow_transactions("7d", 10), "/api/0/organizations/acme/events/", "org:read"),
    (lambda s: s.error_count("1.0", "web", datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)),
     "/api/0/organizations/acme/events/", "org:read"),
    (lambda s: s.issues("is:unresolved", "7d"), "/api/0/organizations/acme/issues/", "event:read"),
    (lambda s: s.resolve_issue("42"), "/api/0/organizations/acme/issues/42/", "event:write"),
    (lambda s: s.create_release("1.0", ["web"]), "/api/0/organizations/acme/releases/", "project:releases"),
])  # fmt: skip
def test_a_sentry_403_names_the_scope_the_call_needs(vendor: VendorAPI, call: Callable[[SentryAPI], object],
                                                     path: str, scope: str) -> None:  # fmt: skip
    """Each call's 403 names the scope Sentry's published description requires of it (the events endpoint needs
    org:read, which the README once gave as event:read); a 401 is still the token rejected."""
    vendor.routes[path] = lambda r: Reply(403, {"detail": "You do not have permission to perform this action."})
    sentry = SentryAPI(vendor.url, "acme", "sntrys_token", [], timedelta(seconds=10))
    try:
        with pytest.raises(RejectedError) as caught:
            call(sentry)
        assert str(caught.value).endswith(f": SENTRY_AUTH_TOKEN lacks the {scope} scope this call needs (HTTP 403)")
        vendor.routes[path] = lambda r: Reply(401, {"detail": "Invalid token"})
        with pytest.raises(RejectedError) as caught:
            call(sentry)
        assert str(caught.value).endswith(": SENTRY_AUTH_TOKEN rejected (HTTP 401)")
    finally:
        sentry.close()


@pytest.mark.parametrize(("header", "expected"), [
    ("120", 120.0), (" 7 ", 7.0), ("Wed, 02 Dec 2026 10:00:30 GMT", 30.0), ("Wed, 02 Dec 2026 09:59:00 GMT", 0.0),
    ("soon", None), ("", None), (None, None), ("-5", None),
])  # fmt: skip
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    """Retry-After is delta-seconds or an HTTP date (a past date means now); anything else is ignored."""
    assert retry_after(header, datetime(2026, 12, 2, 10, 0, tzinfo=UTC)) == expected


# --- the one place -----------------------------------------------------------------------


def test_only_the_http_layer_builds_clients() -> None:
    """No module in worker/ or jobs/ but worker/http.py builds an httpx client or calls httpx's one-shot helpers."""
    builders = {"Client", "AsyncClient", "HTTPTransport", "AsyncHTTPTransport", "get", "post", "put", "patch",
                "delete", "request", "stream"}  # fmt: skip
    offenders = []
    for path in sorted([*(ROOT / "worker").rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]):
        if path == ROOT / "worker" / "http.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "httpx"
                    for a in n.names if a.name in builders}  # fmt: skip
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "httpx"
                    and func.attr in builders) or (isinstance(func, ast.Name) and func.id in imported):  # fmt: skip
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(func)}(...)")
    assert offenders == []


def test_health_probe_sends_the_user_agent_unless_the_endpoint_sets_one(app: AppServer) -> None:
    """Probes say they are opskeeper; an endpoint's own User-Agent header wins."""
    agents: list[str] = []
    app.routes["/h"] = lambda n: Reply(200)
    seen = VendorAPI()
    try:
        seen.routes["/h"] = lambda r: (agents.append(r.headers["user-agent"]), Reply(200, {"status": "OK"}))[1]
        probe(seen.url + "/h")
        probe(seen.url + "/h", headers={"User-Agent": "uptime-check"})
    finally:
        seen.close()
    assert agents[0].startswith("opskeeper/")
    assert agents[1] == "uptime-check"


def test_sentry_envelopes_go_through_the_proxy_too(tmp_path: Path, env: dict[str, str], sentry: SentryReceiver,
                                                   proxy: Proxy) -> None:  # fmt: skip
    """The Sentry SDK sends its own envelopes; behind HTTP_PROXY its check-ins still arrive, through the proxy."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - id: audit
    kind: command
    schedule: "@daily"
    options: {argv: ["true"]}
""")  # fmt: skip
    run_env = {**env, "SENTRY_DSN": sentry.dsn, "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}"}
    result = opskeeper("run-now", "audit", "--config", str(config), env=run_env)
    assert result.code == 0, result.stderr
    assert [c["status"] for c in sentry.wait_items("check_in", 2)] == ["in_progress", "ok"]
    host, project = sentry.dsn.split("@", 1)[1].rsplit("/", 1)
    assert f"POST http://{host}/api/{project}/envelope/" in proxy.seen


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="curl is the reference and is not installed: apt-get install curl (as root)"
)
@pytest.mark.parametrize(("host", "no_proxy"), [
    ("localhost", "localhost"), ("api.localhost", "localhost"), ("api.localhost", ".localhost"),
    ("localhost", ".localhost"), ("localhost", "api.localhost"), ("localhost", "LocalHost"),
    ("127.0.0.1", "localhost"), ("127.0.0.1", "127.0.0.1"), ("127.5.5.5", "127.0.0.0/8"), ("127.5.5.5", "127.0.0.1/32"),
    ("localhost", "other.test, localhost"), ("localhost", "*"), ("localhost", ""), ("[::1]", "::1"),
    ("localhost", "localhost:1"),
])  # fmt: skip
def test_no_proxy_decisions_agree_with_curl(host: str, no_proxy: str, closed_port: int) -> None:
    """For each NO_PROXY case, curl goes through the proxy exactly when opskeeper would (loopback targets only)."""
    url = f"https://{host}:{closed_port}/"
    ours = Proxies.from_environ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": no_proxy}).for_url(httpx.URL(url))
    assert (ours is not None) is curl_uses_proxy(url, no_proxy)


def curl_uses_proxy(url: str, no_proxy: str) -> bool:
    """Whether the real curl, given HTTPS_PROXY and this NO_PROXY, sent its request to the proxy."""
    recorder = Proxy(dial=False)
    try:
        env = {"PATH": os.environ["PATH"], "HTTPS_PROXY": f"http://127.0.0.1:{recorder.port}", "NO_PROXY": no_proxy}
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "5", url], env=env, check=False, timeout=30)
        return bool(recorder.seen)
    finally:
        recorder.close()


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="curl is the reference and is not installed: apt-get install curl (as root)"
)
def test_no_proxy_port_entries_follow_pip_not_curl(closed_port: int) -> None:
    """`host:port` in NO_PROXY bypasses the proxy for that port, as pip (urllib) does; curl ignores such entries."""
    import urllib.request

    url, entry = f"https://localhost:{closed_port}/", f"localhost:{closed_port}"
    assert bypasses("localhost", closed_port, [entry])
    assert urllib.request.proxy_bypass_environment(f"localhost:{closed_port}", {"no": entry})
    assert curl_uses_proxy(url, entry)  # the one place we part from curl, on purpose


@pytest.fixture
def socks_proxy(closed_port: int) -> Iterator[tuple[int, Path]]:
    """A real SOCKS5 proxy (pproxy) on loopback, logging each connection it makes to a file."""
    import socket
    import tempfile

    log = Path(tempfile.mkstemp(prefix="pproxy-", suffix=".log")[1])
    with log.open("w") as out:
        argv = [str(Path(sys.executable).parent / "pproxy"), "-l", f"socks5://127.0.0.1:{closed_port}", "-v"]
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as probe_socket:
            if probe_socket.connect_ex(("127.0.0.1", closed_port)) == 0:
                break
        if time.monotonic() > deadline or server.poll() is not None:
            pytest.fail(f"pproxy did not start: {log.read_text()}")
        time.sleep(0.05)
    yield closed_port, log
    server.terminate()
    server.wait(10)
    log.unlink()


def test_all_proxy_socks5_carries_https(private: VendorAPI, ca_file: str, socks_proxy: tuple[int, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """ALL_PROXY=socks5:// (as curl takes it) tunnels an https request through a real SOCKS5 proxy."""
    port, log = socks_proxy
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    monkeypatch.setenv("ALL_PROXY", f"socks5://127.0.0.1:{port}")
    assert call("github", private.url) == "main"
    assert f"localhost:{private.server.server_address[1]}" in log.read_text()


def test_a_timeout_is_worded_with_the_wait_only_when_it_is_known() -> None:
    """A timeout says how long the client waited when that is known, and no invented figure otherwise."""
    exc = httpx.ConnectTimeout("timed out")
    assert http.describe(exc, timedelta(milliseconds=500)) == "timed out after 500ms"
    assert http.describe(exc, None) == "timed out"


def test_a_server_the_proxy_cannot_reach_is_the_proxys_502(proxy: Proxy, closed_port: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Through a proxy, an unreachable server is the proxy's 502 on CONNECT: named as such, with the proxy."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    with pytest.raises(UnavailableError) as caught:
        call("github", f"https://localhost:{closed_port}")
    assert str(caught.value) == (
        f"GitHub API: GET https://localhost:{closed_port}/repos/acme/shop: proxy refused the connection: "
        f"502 Bad Gateway (via proxy http://127.0.0.1:{proxy.port} (from HTTPS_PROXY))"
    )
    assert proxy.seen == [f"CONNECT localhost:{closed_port}"]


def serve_big_tree(vendor: VendorAPI) -> None:
    """A repository too big for one recursive answer: it comes back `truncated: true` with part of the tree, and
    the tree is there whole one level at a time."""

    def root(request: Request) -> Reply:
        if request.query.get("recursive") == ["1"]:
            return Reply(200, {"sha": "t0", "truncated": True, "tree": [
                {"path": "README.md", "type": "blob", "sha": "b1", "mode": "100644", "size": 10}]})  # fmt: skip
        return Reply(200, {"sha": "t0", "truncated": False, "tree": [
            {"path": "README.md", "type": "blob", "sha": "b1", "mode": "100644", "size": 10},
            {"path": "docs", "type": "tree", "sha": "t1", "mode": "040000"}]})  # fmt: skip

    vendor.routes["/repos/acme/shop/git/trees/main"] = root
    vendor.routes["/repos/acme/shop/git/trees/t1"] = lambda r: Reply(200, {"sha": "t1", "truncated": False, "tree": [
        {"path": "guide.md", "type": "blob", "sha": "b2", "mode": "100644", "size": 20},
        {"path": "run.sh", "type": "blob", "sha": "b3", "mode": "100755", "size": 5}]})  # fmt: skip


def test_a_truncated_tree_is_walked_to_its_end(vendor: VendorAPI) -> None:
    """`truncated: true` is not taken for the whole tree: each sub-tree is read on its own, paths joined."""
    serve_big_tree(vendor)
    with GitHub("acme/shop", api_url=vendor.url) as github:
        entries = github.tree("main")
    assert sorted(e["path"] for e in entries) == ["README.md", "docs", "docs/guide.md", "docs/run.sh"]
    assert next(e for e in entries if e["path"] == "docs/run.sh")["mode"] == "100755"


def test_a_tree_too_big_to_walk_is_an_error_not_a_part(vendor: VendorAPI) -> None:
    """Past the walk's bound the read fails, saying so, rather than giving part of the repository as all of it."""
    serve_big_tree(vendor)
    with GitHub("acme/shop", api_url=vendor.url) as github, pytest.raises(HttpError, match="not read whole"):
        github.tree("main", max_trees=1)

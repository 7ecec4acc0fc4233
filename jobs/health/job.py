"""`health`: probe HTTP endpoints such as the backend's /api/health, alerting once per outage.

Each endpoint moves between UNKNOWN, UP, DEGRADED and DOWN. It goes DOWN only after
`failure_threshold` failed checks in a row, and back UP only after `success_threshold` good
ones. Its state lives in the ledger, so a restart mid-outage neither re-alerts nor forgets.
FAIL means an endpoint is DOWN; WARN means one is degraded (slow, passed only on retry, its
certificate expiring), rate limited, or failing below the threshold.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

if TYPE_CHECKING:
    import httpx
from pydantic import Field, field_validator, model_validator

from worker import http
from worker.job import CheckRecord, JobContext, JobOptions, Notice, Outcome, Status
from worker.schedule import Duration
from worker.timespec import format_duration

_MAX_BODY = 1 << 20  # read at most 1 MiB of a health response
_EXCERPT = 300
_COMPARISON = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
_STATUS_CLASS = re.compile(r"^[1-5]xx$")

UNKNOWN, UP, DEGRADED, DOWN = "UNKNOWN", "UP", "DEGRADED", "DOWN"


# --- options -----------------------------------------------------------------------


class Expect(JobOptions):
    """What a healthy answer looks like."""

    status: int | str | tuple[int | str, ...] = "2xx"
    json_: dict[str, Any] | None = Field(None, alias="json")
    body_contains: str | None = None
    max_latency: Duration | None = None
    cert_min_days: Annotated[int, Field(ge=0)] | None = None

    @field_validator("status")
    @classmethod
    def _statuses(cls, value: int | str | tuple[int | str, ...]) -> int | str | tuple[int | str, ...]:
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, int) and not 100 <= item <= 599:
                raise ValueError(f"{item} is not an HTTP status (100-599)")
            if isinstance(item, str) and not _STATUS_CLASS.match(item.lower()):
                raise ValueError(f"{item!r} is not a status or a class like 2xx")
        return value

    @field_validator("json_")
    @classmethod
    def _comparisons(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for path, expected in (value or {}).items():
            if isinstance(expected, str) and expected.strip()[:1] in "<>=!" and not _COMPARISON.match(expected):
                raise ValueError(f"{path}: {expected!r} is not a comparison like '> 0' or '<= 5'")
        return value

    def status_ok(self, code: int) -> bool:
        """Whether an HTTP status is one this endpoint expects."""
        wanted = self.status if isinstance(self.status, tuple) else (self.status,)
        return any(code == w if isinstance(w, int) else str(code)[0] == w[0] for w in wanted)


class Endpoint(JobOptions):
    """One URL to probe."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | dict[str, Any] | None = None
    timeout: Duration = timedelta(seconds=10)
    follow_redirects: bool = False
    verify: bool = True
    ca_file: str | None = None
    expect: Expect = Expect()

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        import httpx

        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value


class HealthOptions(JobOptions):
    """The endpoints of one health job and how patient to be with them."""

    endpoints: Annotated[tuple[Endpoint, ...], Field(min_length=1)]
    failure_threshold: Annotated[int, Field(ge=1)] = 3
    success_threshold: Annotated[int, Field(ge=1)] = 2
    retry: bool = False
    retry_delay: Duration = timedelta(seconds=1)
    remind_every: Duration | None = None
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 100

    @model_validator(mode="after")
    def _unique_names(self) -> HealthOptions:
        names = [e.name for e in self.endpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint names must be unique; repeated: {', '.join(duplicates)}")
        return self


# --- one check ---------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """The result of probing one endpoint once."""

    verdict: Literal["ok", "degraded", "fail", "rate_limited"]
    reason: str = ""
    status_code: int | None = None
    latency_ms: float | None = None
    excerpt: str = ""
    cert_days: float | None = None
    retry_after_s: float | None = None
    """What a 429's Retry-After asked for: the endpoint is not probed again before then."""

    @property
    def good(self) -> bool:
        """Whether this check counts towards UP."""
        return self.verdict in ("ok", "degraded")


def evaluate(
    expect: Expect, status: int, headers: Mapping[str, str], body: bytes, latency_ms: float,
    *, cert_days: float | None = None, now: datetime | None = None,
) -> Check:  # fmt: skip
    """Judge a response against the expectations. Pure: every verdict rule is here."""
    excerpt = body[:_EXCERPT].decode("utf-8", errors="replace")
    base = {"status_code": status, "latency_ms": round(latency_ms, 1), "excerpt": excerpt, "cert_days": cert_days}
    if status == 429 and not expect.status_ok(429):
        retry_after = headers.get("retry-after")
        reason = "rate limited (HTTP 429" + (f", Retry-After: {retry_after})" if retry_after else ")")
        wait = http.retry_after(retry_after, now or datetime.now(UTC))
        return Check("rate_limited", reason, retry_after_s=wait, **base)  # type: ignore[arg-type]
    if not expect.status_ok(status):
        return Check("fail", f"HTTP {status}", **base)  # type: ignore[arg-type]
    if expect.body_contains is not None and expect.body_contains.encode() not in body:
        return Check("fail", f"body does not contain {expect.body_contains!r}", **base)  # type: ignore[arg-type]
    if expect.json_:
        try:
            document = json.loads(body)
        except ValueError:
            return Check("fail", f"body is not JSON: {excerpt[:80]!r}", **base)  # type: ignore[arg-type]
        for path, expected in expect.json_.items():
            problem = _json_mismatch(document, path, expected)
            if problem:
                return Check("fail", problem, **base)  # type: ignore[arg-type]
    slow = expect.max_latency is not None and latency_ms > expect.max_latency.total_seconds() * 1000
    if slow:
        limit = expect.max_latency.total_seconds() * 1000  # type: ignore[union-attr]
        return Check("degraded", f"slow: {latency_ms:.0f} ms > {limit:.0f} ms", **base)  # type: ignore[arg-type]
    if expect.cert_min_days is not None and cert_days is not None and cert_days < expect.cert_min_days:
        reason = f"certificate expires in {cert_days:.0f} days (< {expect.cert_min_days})"
        return Check("degraded", reason, **base)  # type: ignore[arg-type]
    return Check("ok", "", **base)  # type: ignore[arg-type]


def _json_mismatch(document: Any, path: str, expected: Any) -> str | None:
    value: Any = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return f"json {path}: missing (expected {expected!r})"
    comparison = _COMPARISON.match(expected) if isinstance(expected, str) else None
    if comparison:
        op, number = comparison.group(1), float(comparison.group(2))
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"json {path}: expected a number {op} {comparison.group(2)}, got {value!r}"
        holds = {">": value > number, ">=": value >= number, "<": value < number, "<=": value <= number,
                 "==": value == number, "!=": value != number}[op]  # fmt: skip
        return None if holds else f"json {path}: expected {op} {comparison.group(2)}, got {value!r}"
    if value != expected or (type(value) is not type(expected) and not _both_numbers(value, expected)):
        return f"json {path}: expected {expected!r}, got {value!r}"
    return None


def _both_numbers(a: Any, b: Any) -> bool:
    return all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))


# --- state -------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointState:
    """What the job remembers about an endpoint between runs (and restarts)."""

    state: str = UNKNOWN
    fails: int = 0
    oks: int = 0
    first_fail_at: str | None = None
    down_since: str | None = None
    last_alert_at: str | None = None
    reason: str = ""
    not_before: str | None = None
    """Set by a 429's Retry-After: no probe before this time."""


def transition(
    prev: EndpointState, check: Check, now: datetime, options: HealthOptions, name: str
) -> tuple[EndpointState, list[Notice]]:
    """The endpoint's next state after a check, and the notices the change calls for. Pure."""
    stamp = now.isoformat()
    if check.verdict == "rate_limited":
        # Neither up nor down: the server told us to come back later, so we do (at most an hour on).
        if check.retry_after_s is None:
            return prev, []
        return replace(prev, not_before=(now + timedelta(seconds=min(check.retry_after_s, 3600))).isoformat()), []
    prev = replace(prev, not_before=None)
    if not check.good:
        fails = prev.fails + 1
        first_fail_at = prev.first_fail_at or stamp
        nxt = replace(prev, fails=fails, oks=0, first_fail_at=first_fail_at, reason=check.reason)
        if prev.state != DOWN and fails >= options.failure_threshold:
            nxt = replace(nxt, state=DOWN, down_since=first_fail_at, last_alert_at=stamp)
            return nxt, [_down_notice(name, check, f"{name} is DOWN: {check.reason}")]
        reminder_due = (
            prev.state == DOWN
            and options.remind_every is not None
            and prev.last_alert_at is not None
            and now - datetime.fromisoformat(prev.last_alert_at) >= options.remind_every
        )
        if reminder_due:
            since = format_duration(now - datetime.fromisoformat(prev.down_since or stamp))
            nxt = replace(nxt, last_alert_at=stamp)
            return nxt, [_down_notice(name, check, f"{name} is still DOWN after {since}: {check.reason}")]
        return nxt, []
    oks = prev.oks + 1
    settled = DEGRADED if check.verdict == "degraded" else UP
    if prev.state == DOWN:
        if oks < options.success_threshold:
            return replace(prev, oks=oks, fails=0), []
        outage = now - datetime.fromisoformat(prev.down_since or stamp)
        context = {"endpoint": name, "down_since": prev.down_since, "outage_s": outage.total_seconds()}
        message = f"{name} recovered after {format_duration(outage)}"
        notice = Notice("info", message, ("health", name, "recovered"), context, resolves=("health", name, "down"))
        return EndpointState(state=settled, oks=oks), [notice]
    return EndpointState(state=settled, oks=oks, reason=check.reason), []


def _down_notice(name: str, check: Check, message: str) -> Notice:
    context = {"endpoint": name, "reason": check.reason, "status_code": check.status_code,
               "latency_ms": check.latency_ms, "excerpt": check.excerpt}  # fmt: skip
    return Notice("error", message, ("health", name, "down"), context)


# --- the job -----------------------------------------------------------------------


class HealthJob:
    """Probe every endpoint concurrently; FAIL while any is DOWN, WARN while any is degraded."""

    def __init__(self, options: HealthOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        remembered: dict[str, Any] = ctx.state.get("endpoints", {}) or {}
        started = datetime.now(UTC)
        waiting = {name: until for name, s in remembered.items()
                   if (until := s.get("not_before")) and datetime.fromisoformat(until) > started}  # fmt: skip
        checks = asyncio.run(self.probe_all(waiting))
        now = datetime.now(UTC)
        states: dict[str, EndpointState] = {}
        records: list[CheckRecord] = []
        for endpoint, check in zip(self.options.endpoints, checks, strict=True):
            prev = EndpointState(**remembered[endpoint.name]) if endpoint.name in remembered else EndpointState()
            states[endpoint.name], notices = transition(prev, check, now, self.options, endpoint.name)
            for notice in notices:
                ctx.notify(notice)
            records.append(CheckRecord(
                job_id=ctx.job_id, endpoint=endpoint.name, at=now, verdict=check.verdict,
                state=states[endpoint.name].state, status_code=check.status_code, latency_ms=check.latency_ms,
                reason=check.reason,
            ))  # fmt: skip
        # Remember only the endpoints still configured, so a removed one leaves no trace.
        ctx.state.set("endpoints", {name: s.__dict__ for name, s in states.items()})
        if ctx.checks is not None:
            ctx.checks.record(records)
        return self._outcome(checks, states, now)

    async def probe_all(self, waiting: Mapping[str, str] = {}) -> list[Check]:
        """Probe every endpoint, at most `concurrency` at a time; one slow endpoint delays no other.

        An endpoint in `waiting` (its Retry-After has not passed) is not asked at all.
        """
        import httpx

        gate = asyncio.Semaphore(self.options.concurrency)
        clients: dict[tuple[bool, str | None], httpx.AsyncClient] = {}
        limits = httpx.Limits(max_connections=self.options.concurrency, max_keepalive_connections=0)
        for endpoint in self.options.endpoints:
            key = (endpoint.verify, endpoint.ca_file)
            if key not in clients:
                clients[key] = http.async_client(verify=endpoint.verify, ca_file=endpoint.ca_file, limits=limits)

        async def paused(until: str) -> Check:
            return Check("rate_limited", f"rate limited: not probed before {until} (its Retry-After)")

        try:
            return await asyncio.gather(*(paused(waiting[e.name]) if e.name in waiting
                                          else self._probe(clients[(e.verify, e.ca_file)], e, gate)
                                          for e in self.options.endpoints))  # fmt: skip
        finally:
            for client in clients.values():
                await client.aclose()

    async def _probe(self, client: httpx.AsyncClient, endpoint: Endpoint, gate: asyncio.Semaphore) -> Check:
        async with gate:
            check = await probe(client, endpoint)
            if check.verdict == "fail" and self.options.retry:
                await asyncio.sleep(self.options.retry_delay.total_seconds())
                again = await probe(client, endpoint)
                if again.good:
                    return replace(again, verdict="degraded", reason=f"passed on retry (first: {check.reason})")
                return again
            return check

    def _outcome(self, checks: list[Check], states: dict[str, EndpointState], now: datetime) -> Outcome:
        threshold = self.options.failure_threshold
        parts, status = [], Status.OK
        for endpoint, check in zip(self.options.endpoints, checks, strict=True):
            st = states[endpoint.name]
            if st.state == DOWN:
                since = format_duration(now - datetime.fromisoformat(st.down_since or now.isoformat()))
                parts.append(f"{endpoint.name} DOWN for {since} ({st.reason})")
                status = Status.FAIL
            elif check.verdict == "fail":
                parts.append(f"{endpoint.name} failing {st.fails}/{threshold} ({check.reason})")
            elif check.verdict in ("degraded", "rate_limited"):
                parts.append(f"{endpoint.name} {check.verdict.replace('_', ' ')} ({check.reason})")
        if parts and status is Status.OK:
            status = Status.WARN
        up = sum(1 for s in states.values() if s.state in (UP, DEGRADED))
        summary = f"{up}/{len(states)} up" + (": " + "; ".join(parts) if parts else "")
        details = {
            e.name: {"state": states[e.name].state, "verdict": c.verdict, "status_code": c.status_code,
                     "latency_ms": c.latency_ms, "reason": c.reason, "consecutive_failures": states[e.name].fails}
            for e, c in zip(self.options.endpoints, checks, strict=True)
        }  # fmt: skip
        fingerprint = ",".join(sorted(e for e, s in states.items() if s.state == DOWN)) or None
        return Outcome(status, summary, details, fingerprint=fingerprint, alerted=True)


async def probe(client: httpx.AsyncClient, endpoint: Endpoint) -> Check:
    """One request to one endpoint, judged; never raises."""
    import httpx

    content, json_body = (None, endpoint.body) if isinstance(endpoint.body, dict) else (endpoint.body, None)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(endpoint.timeout.total_seconds()):
            headers = {"Accept-Encoding": http.DECODED_ENCODINGS, **endpoint.headers}
            request = client.build_request(endpoint.method, endpoint.url, headers=headers, content=content,
                                           json=json_body, timeout=endpoint.timeout.total_seconds())  # fmt: skip
            response = await client.send(request, stream=True, follow_redirects=endpoint.follow_redirects)
            # Latency is time to the response headers: the server's answer, not how long its body
            # takes to arrive (nor how busy this process is decoding another endpoint's).
            latency = (time.perf_counter() - started) * 1000
            try:
                cert_days = _cert_days(response)
                body, _more = await http.read_bounded(response, _MAX_BODY)
            finally:
                await response.aclose()
    except (httpx.HTTPError, TimeoutError, OSError, ssl.SSLError) as exc:
        latency = (time.perf_counter() - started) * 1000
        trust = http.Trust.resolve(endpoint.ca_file, os.environ) if endpoint.verify else None
        return Check("fail", http.describe(exc, endpoint.timeout, trust), latency_ms=round(latency, 1))
    return evaluate(endpoint.expect, response.status_code, response.headers, body, latency, cert_days=cert_days)


def _cert_days(response: httpx.Response) -> float | None:
    """Days until the server certificate expires, for https with verification on."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert or "notAfter" not in cert:
        return None
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC)
    return (expires - datetime.now(UTC)).total_seconds() / 86400


# --- uptime ------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def uptime_report(checks: list[CheckRecord], window: str, now: datetime) -> list[dict[str, Any]]:
    """Per endpoint: uptime %, counts, latency percentiles and outages, from recorded checks. Pure.

    `checks` are one window's checks, oldest first. Uptime counts checks: degraded and rate
    limited ones count as up. An outage runs from the first failed check of the streak that
    took the endpoint DOWN to the first check after which it was no longer DOWN (or is open).
    """
    by_endpoint: dict[tuple[str, str], list[CheckRecord]] = {}
    for check in checks:
        by_endpoint.setdefault((check.job_id, check.endpoint), []).append(check)
    report = []
    for (job_id, endpoint), rows in sorted(by_endpoint.items()):
        failures = sum(1 for r in rows if r.verdict == "fail")
        latencies = [r.latency_ms for r in rows if r.latency_ms is not None and r.verdict != "fail"]
        report.append({
            "job_id": job_id,
            "endpoint": endpoint,
            "window": window,
            "uptime_pct": round(100 * (len(rows) - failures) / len(rows), 3),
            "checks": len(rows),
            "failures": failures,
            "degraded": sum(1 for r in rows if r.verdict == "degraded"),
            "latency_ms": {f"p{p}": percentile(latencies, p) for p in (50, 95, 99)},
            "outages": _outages(rows, now),
        })  # fmt: skip
    return report


def _outages(rows: list[CheckRecord], now: datetime) -> list[dict[str, Any]]:
    outages: list[dict[str, Any]] = []
    streak_start: datetime | None = None  # first failed check of the current failing streak
    open_since: datetime | None = None
    for row in rows:
        if row.verdict == "fail":
            streak_start = streak_start or row.at
        elif row.verdict != "rate_limited" and row.state != DOWN:
            streak_start = None
        if row.state == DOWN and open_since is None:
            open_since = streak_start or row.at
        elif row.state != DOWN and open_since is not None:
            outages.append(_outage(open_since, row.at))
            open_since = None
    if open_since is not None:
        outages.append({**_outage(open_since, now), "end": None})
    return outages


def _outage(start: datetime, end: datetime) -> dict[str, Any]:
    return {"start": start.isoformat(), "end": end.isoformat(), "duration_s": round((end - start).total_seconds(), 3)}

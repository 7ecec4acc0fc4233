"""The HTTP layer: the only place opskeeper builds an httpx client.

It is one piece on purpose, past 500 lines: every outbound call, from a health probe to a
vendor's API, is made under the same proxy, CA, timeout and retry decisions, and a second
module that builds a client would be a second set of them.

Proxies, private CAs, timeouts, retries and the user agent are one decision for every
vendor, so an operator behind a TLS-intercepting proxy sets them once, in the environment,
as for curl, pip and npm:

- `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`: either case; the lower-case one wins, as in
  urllib (and so pip).
- `NO_PROXY`: `*`, host names (the host and its subdomains; a leading dot changes nothing),
  IP addresses and CIDR ranges, matched as curl matches them; and `host:port`, that port
  only, as pip matches it (curl ignores such entries, which surprises whoever wrote one).
- `SSL_CERT_FILE` and `SSL_CERT_DIR` replace the trusted CAs, as with OpenSSL. A per-endpoint
  or per-job `ca_file` overrides both. With neither, the operating system's store is used
  (truststore), so a CA the machine trusts works without any setting.

`Api` and `AsyncApi` are a vendor's web API: one retry policy (stamina) for what is safe to
retry, `Retry-After` in seconds or as an HTTP date, and errors that name the vendor, the
request and the cause. Health probes use `async_client` directly: a probe never retries
unless its job says so.

Clients are built with `trust_env=False` on purpose: httpx would otherwise also read
`~/.netrc` and send its passwords, which curl does not do by default.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import os
import re
import socket
import ssl
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import certifi
import orjson
import truststore

from worker.job import TransientError
from worker.reporting.log import get_logger
from worker.timespec import format_duration
from worker.version import version

if TYPE_CHECKING:
    from types import ModuleType

    import httpx
    from stamina.instrumentation import RetryDetails

# httpx's package imports its command-line client (click, rich and pygments: 45 ms) wherever click is installed,
# as in a development environment; opskeeper never runs it. A None in sys.modules makes that import fail, which
# httpx's __init__ expects and answers with a `main` saying the client is not installed.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

DEFAULT_TIMEOUT = timedelta(seconds=30)
#: Statuses that say "try again later"; 500 is left out: a server bug rarely fixes itself in seconds.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Methods a retry cannot apply twice. A POST or PATCH is retried only when the server said it
#: did nothing (429, 503) or the connection never opened.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_NOT_PROCESSED = frozenset({429, 503})


def user_agent() -> str:
    """What every request says it is."""
    return f"opskeeper/{version()}"


class HttpConfigError(ValueError):
    """A proxy or CA setting cannot be used; the message names the setting and why."""


# --- proxies -----------------------------------------------------------------------


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(name as set, value) of a proxy variable; the lower-case spelling wins, and set empty, unsets."""
    for key in (name.lower(), name.upper()):
        if key in environ:
            value = environ[key].strip()
            return (key, value) if value else None
    return None


def display_url(url: str | httpx.URL) -> str:
    """A URL for messages: no user name or password, no query."""
    import httpx

    parsed = httpx.URL(str(url))
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


@dataclass(frozen=True)
class Proxies:
    """The proxy settings of an environment, and which proxy a URL goes through."""

    http: tuple[str, str] | None = None
    https: tuple[str, str] | None = None
    all: tuple[str, str] | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Proxies:
        """Read HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY (either case)."""
        no_proxy = _variable(environ, "no_proxy")
        entries = tuple(e for e in re.split(r"[,\s]+", no_proxy[1]) if e) if no_proxy else ()
        found = {n: _variable(environ, f"{n}_proxy") for n in ("http", "https", "all")}
        # `proxy:3128` means http://proxy:3128, as for curl and pip.
        named = {n: (v[0], v[1] if "://" in v[1] else f"http://{v[1]}") if v else None for n, v in found.items()}
        return cls(named["http"], named["https"], named["all"], entries)

    def configured(self) -> list[tuple[str, str]]:
        """Every (variable, proxy URL) set."""
        return [p for p in (self.http, self.https, self.all) if p is not None]

    def for_url(self, url: httpx.URL) -> tuple[str, str] | None:
        """(variable, proxy URL) that a request to `url` goes through; None: straight to the server."""
        chosen = (self.https if url.scheme == "https" else self.http if url.scheme == "http" else None) or self.all
        if chosen is None or bypasses(url.host, url.port or (443 if url.scheme == "https" else 80), self.no_proxy):
            return None
        return chosen


_HOST_PORT = re.compile(r"^\[?(?P<host>[^\[\]]+?)\]?(?::(?P<port>\d+))?$")


def bypasses(host: str, port: int, no_proxy: Iterable[str]) -> bool:
    """Whether NO_PROXY sends a request to host:port straight to it. Pure.

    As curl: `*` is every host; `example.com` and `.example.com` are that host and its
    subdomains; an IP address or CIDR range matches addresses in it (not names that resolve
    there). As pip: `host:port` matches that port only.
    """
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy:
        entry = raw.strip().lower()
        if entry == "*":
            return True
        if entry.count(":") > 1 and not entry.startswith("["):
            name, wanted = entry, None  # a bare IPv6 address or range: its colons are not a port
        else:
            match = _HOST_PORT.match(entry)
            if match is None:
                continue
            name, wanted = match["host"], int(match["port"]) if match["port"] else None
        if wanted is not None and wanted != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


# --- trust -------------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """Which CAs verify servers, and how to say so in a message."""

    ca_file: str | None
    ca_dir: str | None
    source: str

    @classmethod
    def resolve(cls, ca_file: str | None, environ: Mapping[str, str]) -> Trust:
        """A per-endpoint or per-job `ca_file`, else SSL_CERT_FILE / SSL_CERT_DIR, else the system store."""
        if ca_file:
            return cls(ca_file, None, f"ca_file {ca_file}")
        env_file, env_dir = environ.get("SSL_CERT_FILE") or None, environ.get("SSL_CERT_DIR") or None
        if env_file or env_dir:
            named = [f"{k}={v}" for k, v in (("SSL_CERT_FILE", env_file), ("SSL_CERT_DIR", env_dir)) if v]
            return cls(env_file, env_dir, " and ".join(named))
        if not _system_store():
            return cls(certifi.where(), None, f"certifi's bundle {certifi.where()} (this machine has no CA store)")
        return cls(None, None, "the operating system's store")

    def context(self) -> ssl.SSLContext:
        """A verifying SSL context, shared while the files behind it are unchanged."""
        try:
            stamp = tuple(Path(p).stat().st_mtime_ns for p in (self.ca_file, self.ca_dir) if p)
        except OSError as exc:
            raise HttpConfigError(f"{self.source}: cannot read it ({exc.strerror})") from None
        try:
            return _context(self.ca_file, self.ca_dir, stamp)
        except (OSError, ssl.SSLError) as exc:
            raise HttpConfigError(f"{self.source}: not usable as a CA bundle ({exc})") from None

    def hint(self) -> str:
        """What to say after a certificate failure."""
        return f"CA bundle used: {self.source}; set SSL_CERT_FILE or ca_file to trust another CA"


#: Where Linux distributions keep their CA bundle (the list truststore searches too).
_LINUX_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem",
                  "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "/etc/ssl/ca-bundle.pem")  # fmt: skip


@lru_cache(maxsize=1)
def _system_store() -> bool:
    """Whether the OS has CAs to trust: a slim image without ca-certificates has none, and then certifi's serve."""
    if not sys.platform.startswith("linux"):
        return True  # macOS and Windows keep theirs in the system, where truststore asks
    paths = ssl.get_default_verify_paths()
    return any(Path(p).is_file() for p in (paths.cafile, *_LINUX_BUNDLES) if p)


@lru_cache(maxsize=16)
def _context(ca_file: str | None, ca_dir: str | None, _stamp: tuple[int, ...]) -> ssl.SSLContext:
    if ca_file is None and ca_dir is None:
        return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return ssl.create_default_context(cafile=ca_file, capath=ca_dir)


# --- transports: each request goes straight or through its proxy ------------------------


def _proxy(variable: str, url: str) -> httpx.Proxy:
    import httpx

    try:
        return httpx.Proxy(url)
    except ValueError:
        # httpx's own message repeats the URL with its user name: say it without.
        raise HttpConfigError(f"{variable}={display_url(url)}: not a proxy URL; use http://, https://, "
                              "socks5:// or socks5h://") from None  # fmt: skip


def _note_proxy(exc: Exception, chosen: tuple[str, str]) -> None:
    exc.add_note(f"via proxy {display_url(chosen[1])} (from {chosen[0]})")


@cache
def _routers() -> tuple[Callable[[Proxies, Callable[[httpx.Proxy | None], httpx.HTTPTransport]], httpx.BaseTransport],
                       Callable[[Proxies, Callable[[httpx.Proxy | None], httpx.AsyncHTTPTransport]],
                                httpx.AsyncBaseTransport]]:  # fmt: skip
    """The transports that route each request: classes of httpx's, defined when the first client is built so that
    importing this module does not import httpx (every command imports it; few make a request)."""
    import httpx

    class _Router(httpx.BaseTransport):
        """Sends each request straight to its server or through the proxy the environment names for it."""

        def __init__(self, proxies: Proxies, make: Callable[[httpx.Proxy | None], httpx.HTTPTransport]) -> None:
            self._proxies = proxies
            self._direct = make(None)
            self._via = {url: make(_proxy(name, url)) for name, url in proxies.configured()}

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            chosen = self._proxies.for_url(request.url)
            if chosen is None:
                return self._direct.handle_request(request)
            try:
                return self._via[chosen[1]].handle_request(request)
            except httpx.TransportError as exc:
                _note_proxy(exc, chosen)
                raise

        def close(self) -> None:
            for transport in (self._direct, *self._via.values()):
                transport.close()

    class _AsyncRouter(httpx.AsyncBaseTransport):
        """`_Router` for async clients."""

        def __init__(self, proxies: Proxies, make: Callable[[httpx.Proxy | None], httpx.AsyncHTTPTransport]) -> None:
            self._proxies = proxies
            self._direct = make(None)
            self._via = {url: make(_proxy(name, url)) for name, url in proxies.configured()}

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            chosen = self._proxies.for_url(request.url)
            if chosen is None:
                return await self._direct.handle_async_request(request)
            try:
                return await self._via[chosen[1]].handle_async_request(request)
            except httpx.TransportError as exc:
                _note_proxy(exc, chosen)
                raise

        async def aclose(self) -> None:
            for transport in (self._direct, *self._via.values()):
                await transport.aclose()

    return _Router, _AsyncRouter


class ClientOptions(TypedDict, total=False):
    """What `client` and `async_client` take; the proxy and CA variables are read when the client is built."""

    base_url: str
    headers: Mapping[str, str] | None
    auth: httpx.Auth | None
    timeout: timedelta
    verify: bool
    ca_file: str | None
    limits: httpx.Limits | None


@dataclass(frozen=True)
class _Setup:
    """Everything a client is built from."""

    proxies: Proxies
    verify: ssl.SSLContext | bool
    limits: httpx.Limits
    options: dict[str, Any]

    @classmethod
    def of(cls, given: ClientOptions) -> _Setup:
        import httpx

        trust = Trust.resolve(given.get("ca_file"), os.environ)
        headers = {"User-Agent": user_agent(), **(given.get("headers") or {})}
        options = {"base_url": given.get("base_url", ""), "headers": headers, "auth": given.get("auth"),
                   "timeout": given.get("timeout", DEFAULT_TIMEOUT).total_seconds(), "trust_env": False}  # fmt: skip
        verify = trust.context() if given.get("verify", True) else False
        return cls(Proxies.from_environ(os.environ), verify, given.get("limits") or httpx.Limits(), options)


def client(**given: Unpack[ClientOptions]) -> httpx.Client:
    """A synchronous client that honours the proxy and CA environment."""
    import httpx

    setup = _Setup.of(given)

    def make(proxy: httpx.Proxy | None) -> httpx.HTTPTransport:
        return httpx.HTTPTransport(verify=setup.verify, proxy=proxy, limits=setup.limits)

    return httpx.Client(transport=_routers()[0](setup.proxies, make), **setup.options)


def async_client(**given: Unpack[ClientOptions]) -> httpx.AsyncClient:
    """An asynchronous client that honours the proxy and CA environment."""
    import httpx

    setup = _Setup.of(given)

    def make(proxy: httpx.Proxy | None) -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(verify=setup.verify, proxy=proxy, limits=setup.limits)

    return httpx.AsyncClient(transport=_routers()[1](setup.proxies, make), **setup.options)


# --- what went wrong, in words ----------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe(exc: BaseException, timeout: timedelta | None, trust: Trust | None = None) -> str:
    """A short, operator-readable reason for a failed request: timeout, refused, DNS, TLS, proxy.

    `timeout` is the client's, to say how long it waited; None where it is not known.
    """
    chain = _chain(exc)
    notes = "; ".join(note for e in chain for note in getattr(e, "__notes__", ()))
    reason = _reason(chain, timeout, trust)
    return f"{reason} ({notes})" if notes else reason


def _reason(chain: list[BaseException], timeout: timedelta | None, trust: Trust | None) -> str:
    import httpx

    for error in chain:
        if isinstance(error, ssl.SSLCertVerificationError):
            text = f"TLS: certificate verify failed: {error.verify_message or error.reason or error}"
            return f"{text} ({trust.hint()})" if trust else text
    if any(isinstance(e, httpx.TimeoutException | TimeoutError) for e in chain):
        return f"timed out after {format_duration(timeout)}" if timeout is not None else "timed out"
    for error in chain:
        if isinstance(error, ssl.SSLError):
            return f"TLS: {error.reason or error}"
        if isinstance(error, httpx.ProxyError):
            return f"proxy refused the connection: {error}"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, socket.gaierror):
            return "DNS: name not resolved"
    text = str(chain[0])
    return f"{type(chain[0]).__name__}: {text}"[:200] if text else type(chain[0]).__name__


DECODED_ENCODINGS = "gzip, deflate"
"""What read_bounded() can decode within its limit; ask servers for nothing else."""


class _Inflater:
    """A body collected up to `limit` decoded bytes, from raw chunks (gzip, zlib, raw deflate or none)."""

    def __init__(self, response: httpx.Response, limit: int) -> None:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        self.limit, self.body = limit, bytearray()
        self.decoder: Any = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            self.decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, whichever it has

    def feed(self, raw: bytes) -> bool:
        """Take one raw chunk; True once the body is full (or a decoding error ends it)."""
        if self.decoder is None:
            self.body += raw[: self.limit - len(self.body)]
        else:
            try:
                self.body += self.decoder.decompress(self.decoder.unconsumed_tail + raw, self.limit - len(self.body))
            except zlib.error:
                if not self.body:
                    self.decoder, self.body = None, bytearray(raw[: self.limit])  # raw deflate, or none at all
                    return len(self.body) >= self.limit
                return True
        return len(self.body) >= self.limit

    def result(self) -> tuple[bytes, bool]:
        return bytes(self.body[: self.limit]), len(self.body) >= self.limit


async def read_bounded(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` decoded bytes of a streamed body, and whether there was more.

    The raw stream is decoded here, with the output capped, instead of by httpx: a 1 MB gzip
    bomb would otherwise inflate to gigabytes (and hold the event loop) before any cap applied.
    Encodings other than gzip and deflate are returned as they came.
    """
    inflater = _Inflater(response, limit)
    async for raw in response.aiter_raw():
        if inflater.feed(raw):
            break
    return inflater.result()


def read_bounded_sync(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """`read_bounded` for a synchronous client's streamed response."""
    inflater = _Inflater(response, limit)
    for raw in response.iter_raw():
        if inflater.feed(raw):
            break
    return inflater.result()


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def rate_limit_wait(status: int, headers: Mapping[str, str], body: str, now: datetime) -> float | None:
    """Seconds a rate-limited answer asks to wait, -1.0 for a rate limit that names no time (back off), or None
    when the answer is not a rate limit. Pure.

    As GitHub documents its primary and secondary limits: a 403 or a 429, with `retry-after`, or with
    `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (epoch seconds); a 403 without either is a rate limit only
    when its message says so ("API rate limit exceeded", "secondary rate limit"), otherwise a refusal.
    """
    if status not in (403, 429):
        return None
    asked = retry_after(headers.get("retry-after"), now)
    if asked is not None:
        return asked
    reset = headers.get("x-ratelimit-reset", "").strip()
    if headers.get("x-ratelimit-remaining", "").strip() == "0":
        return max(0.0, float(reset) - now.timestamp()) if reset.isdigit() else -1.0
    return -1.0 if status == 429 or "rate limit" in body[:500].lower() else None


class HttpError(Exception):
    """A web API gave no usable answer; the message names the vendor, the request and the cause."""

    def __init__(self, vendor: str, method: str, url: str | httpx.URL, cause: str) -> None:
        super().__init__(f"{vendor}: {method} {display_url(url)}: {cause}")
        self.vendor, self.method, self.url, self.cause = vendor, method, url, cause


class RejectedError(HttpError):
    """401 or 403: the credentials were refused (`status` says which)."""

    def __init__(self, vendor: str, method: str, url: str | httpx.URL, cause: str, status: int) -> None:
        super().__init__(vendor, method, url, cause)
        self.status = status


class UnavailableError(HttpError, TransientError):
    """No answer, or a 'come back later' that outlasted the retries: worth trying again next run."""


# --- a vendor's web API -----------------------------------------------------------------


def _log_retry(details: RetryDetails) -> None:
    """One `http.retry` log line per retry, naming the request: stamina's own names only '<context block>'."""
    import httpx

    cause = details.caused_by
    request = cause.response.request if isinstance(cause, _RetryableStatusError) else None
    if request is None and isinstance(cause, httpx.TransportError):
        with contextlib.suppress(RuntimeError):  # httpx raises when the error carries no request
            request = cause.request
    # The hook sees only the exception, not the client: better no duration than a wrong one.
    reason = str(cause) if isinstance(cause, _RetryableStatusError) else describe(cause, None)
    get_logger().warning("http.retry", method=request.method if request else None,
                         url=display_url(request.url) if request else None, attempt=details.retry_num,
                         wait_s=round(details.wait_for, 3), reason=reason)  # fmt: skip


@lru_cache(maxsize=1)
def _stamina() -> ModuleType:
    """stamina, imported on the first API call (it and tenacity cost `opskeeper validate` 18 ms otherwise),
    with our retry log line as its only hook: process-wide, since this module is its only user."""
    import stamina

    stamina.instrumentation.set_on_retry_hooks([_log_retry])
    return stamina


@dataclass(frozen=True)
class RetryPolicy:
    """How patient an API client is: attempts, the jittered backoff, and the longest Retry-After it accepts."""

    attempts: int = 4
    wait_initial: timedelta = timedelta(milliseconds=500)
    wait_max: timedelta = timedelta(seconds=10)
    wait_jitter: timedelta = timedelta(seconds=1)
    max_retry_after: timedelta = timedelta(seconds=60)
    max_rate_limit_wait: timedelta = timedelta(seconds=60)
    """The longest wait for a rate limit's reset (a vendor's hourly limit may be worth waiting for in a job)."""
    deadline: float | None = None
    """A time.monotonic() past which no wait is begun (a job's deadline): a longer wait ends the retries."""


#: The policy of every API client that does not choose its own.
DEFAULT_RETRY = RetryPolicy()


def _text(response: httpx.Response) -> str:
    """The answer's text, or "" for a streamed one not read yet (its headers still say what they say)."""
    import httpx

    try:
        return response.text
    except httpx.ResponseNotRead:
        return ""


class _RetryableStatusError(Exception):
    """A retryable status, raised inside the retry loop so stamina sees it."""

    def __init__(self, response: httpx.Response, attempt: int, limited: float | None) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response, self.attempt = response, attempt
        self.asked: float | None = None  # a wait past the cap or the deadline, when that ended the retries
        self.past_deadline = False
        self.limited = limited  # rate_limit_wait() of the answer: None when it is not a rate limit


class _ApiBase:
    """What `Api` and `AsyncApi` share: the retry decision and the words for each failure."""

    def __init__(self, vendor: str, base_url: str, *, credential: str | None, timeout: timedelta,
                 retry: RetryPolicy, ca_file: str | None) -> None:  # fmt: skip
        self.vendor, self.base_url, self.credential = vendor, base_url.rstrip("/"), credential
        self.timeout, self.retry = timeout, retry
        self.trust = Trust.resolve(ca_file, os.environ)

    def _hook(self, method: str) -> Callable[[Exception], bool | float]:
        import httpx

        cap = self.retry.max_retry_after.total_seconds()
        limit_cap = self.retry.max_rate_limit_wait.total_seconds()

        def should_retry(exc: Exception) -> bool | float:
            if isinstance(exc, _RetryableStatusError):
                # A rate-limited request was refused before anything was done: safe to send again, even a POST.
                if method not in IDEMPOTENT and exc.response.status_code not in _NOT_PROCESSED and exc.limited is None:
                    return False
                if exc.limited is not None:  # retry-after, else x-ratelimit-reset; -1: no time named
                    asked = exc.limited if exc.limited >= 0 else None
                else:
                    asked = retry_after(exc.response.headers.get("Retry-After"), datetime.now(UTC))
                most = limit_cap if exc.limited is not None else cap
                left = None if self.retry.deadline is None else self.retry.deadline - time.monotonic()
                if asked is not None and (asked > most or (left is not None and asked > left)):
                    exc.asked, exc.past_deadline = asked, asked <= most
                    return False
                return True if asked is None else asked
            certificate = any(isinstance(e, ssl.SSLError) for e in _chain(exc))
            return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and not certificate

        return should_retry

    def _loop(self, method: str) -> Any:
        policy = self.retry
        return _stamina().retry_context(
            on=self._hook(method), attempts=policy.attempts, timeout=None, wait_initial=policy.wait_initial,
            wait_max=policy.wait_max, wait_jitter=policy.wait_jitter,
        )  # fmt: skip

    @staticmethod
    def _screen(response: httpx.Response, allow: tuple[int, ...], attempt: int) -> httpx.Response:
        """The response, unless its status asks for a retry: then raised, for the retry loop to judge."""
        status = response.status_code
        if status in allow or (status not in RETRY_STATUSES and status != 403):
            return response  # the common case decodes nothing: a registry document may be 20 MB
        limited = rate_limit_wait(status, response.headers, _text(response), datetime.now(UTC))
        if status in RETRY_STATUSES or limited is not None:
            raise _RetryableStatusError(response, attempt, limited)
        return response

    @contextlib.contextmanager
    def _failures(self, method: str, path: str) -> Iterator[None]:
        """Turn what the retries could not mend into an HttpError naming the vendor, the request and the cause."""
        import httpx

        try:
            yield
        except _RetryableStatusError as again:
            raise self._exhausted(method, path, again) from None
        except httpx.TransportError as exc:
            raise self._failed(method, path, exc) from None

    def _url(self, path: str) -> str:
        return path if "://" in path else self.base_url + path

    def _check(self, method: str, response: httpx.Response, allow: tuple[int, ...]) -> httpx.Response:
        status = response.status_code
        if status < 400 or status in allow:
            return response
        url = response.request.url
        if status in (401, 403):
            who = self.credential or "the credentials"
            raise RejectedError(self.vendor, method, url, f"{who} rejected (HTTP {status})", status)
        detail = response.text[:200].strip().replace("\n", " ") if 400 <= status < 500 else ""
        raise HttpError(self.vendor, method, url, f"HTTP {status}" + (f": {detail}" if detail else ""))

    def _exhausted(self, method: str, path: str, again: _RetryableStatusError) -> UnavailableError:
        status = again.response.status_code
        cause = f"HTTP {status}" + (f" after {again.attempt} attempts" if again.attempt > 1 else "")
        if again.limited is not None:
            cause = "rate limited: " + cause
        if again.asked is not None:
            asked = "Retry-After" if again.response.headers.get("Retry-After") else "the rate limit's reset"
            most = self.retry.max_rate_limit_wait if again.limited is not None else self.retry.max_retry_after
            until = "the job's deadline" if again.past_deadline else f"the {format_duration(most)} cap"
            cause += f" ({asked} {again.asked:.0f}s is past {until})"
        return UnavailableError(self.vendor, method, self._url(path), cause)

    def _failed(self, method: str, path: str, exc: httpx.TransportError) -> HttpError:
        cause = describe(exc, self.timeout, self.trust)
        kind = HttpError if any(isinstance(e, ssl.SSLError) for e in _chain(exc)) else UnavailableError
        return kind(self.vendor, method, self._url(path), cause)

    def parse(self, response: httpx.Response) -> Any:
        """The JSON of an answer; HttpError when it is not JSON.

        orjson parses several times faster than the standard library: a workspace check reads
        hundreds of registry documents of up to megabytes each, and parsing was most of its time.
        """
        try:
            return orjson.loads(response.content)
        except ValueError:
            request = response.request
            raise HttpError(self.vendor, request.method, request.url, "the answer is not JSON") from None


class Api(_ApiBase):
    """A vendor's web API over one synchronous client."""

    def __init__(self, vendor: str, base_url: str, *, credential: str | None = None,
                 headers: Mapping[str, str] | None = None, auth: httpx.Auth | None = None,
                 timeout: timedelta = DEFAULT_TIMEOUT, retry: RetryPolicy = DEFAULT_RETRY,
                 ca_file: str | None = None) -> None:  # fmt: skip
        super().__init__(vendor, base_url, credential=credential, timeout=timeout, retry=retry, ca_file=ca_file)
        self.client = client(base_url=self.base_url, headers=headers, auth=auth, timeout=timeout, ca_file=ca_file)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()

    def request(self, method: str, path: str, *, allow: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """Send, retrying what is safe to retry; an error status not in `allow` raises HttpError."""
        with self._failures(method, path):
            for attempt in self._loop(method):
                with attempt:
                    response = self._screen(self.client.request(method, path, **kwargs), allow, attempt.num)
        return self._check(method, response, allow)

    def get(self, path: str, *, allow: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """GET `path` (see `request`)."""
        return self.request("GET", path, allow=allow, **kwargs)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET `path` and parse the JSON answer."""
        return self.parse(self.get(path, **kwargs))

    def get_bounded(self, path: str, limit: int, **kwargs: Any) -> httpx.Response:
        """GET `path` reading at most `limit` decoded bytes of the answer: HttpError when it is longer.

        For documents from outside our control (a status page's feed): memory stays bounded however
        large or compressed the answer is.
        """
        import httpx

        headers = {"Accept-Encoding": DECODED_ENCODINGS, **kwargs.pop("headers", {})}
        with self._failures("GET", path):
            for attempt in self._loop("GET"):
                with attempt, self.client.stream("GET", path, headers=headers, **kwargs) as streamed:
                    self._screen(streamed, (), attempt.num)
                    body, more = read_bounded_sync(streamed, limit + 1)
        headers_out = {k: v for k, v in streamed.headers.items() if k.lower() not in ("content-encoding",
                                                                                       "content-length")}  # fmt: skip
        response = httpx.Response(streamed.status_code, headers=headers_out, content=body, request=streamed.request)
        self._check("GET", response, ())
        if more or len(body) > limit:
            raise HttpError(self.vendor, "GET", response.request.url, f"the answer is larger than {limit:,} bytes")
        return response


class AsyncApi(_ApiBase):
    """A vendor's web API over one asynchronous client, at most `concurrency` requests at a time."""

    def __init__(self, vendor: str, base_url: str, *, credential: str | None = None,
                 headers: Mapping[str, str] | None = None, auth: httpx.Auth | None = None,
                 timeout: timedelta = DEFAULT_TIMEOUT, retry: RetryPolicy = DEFAULT_RETRY,
                 ca_file: str | None = None, concurrency: int = 16) -> None:  # fmt: skip
        import httpx

        super().__init__(vendor, base_url, credential=credential, timeout=timeout, retry=retry, ca_file=ca_file)
        # As many kept alive as may be open: httpcore closes idle connections past max_keepalive_connections
        # (20 by default), and a pool of 32 would reconnect for every burst.
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = async_client(base_url=self.base_url, headers=headers, auth=auth, timeout=timeout,
                                   ca_file=ca_file, limits=limits)  # fmt: skip

    async def close(self) -> None:
        """Release the connection pool."""
        await self.client.aclose()

    async def request(self, method: str, path: str, *, allow: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """Send, retrying what is safe to retry; an error status not in `allow` raises HttpError."""
        with self._failures(method, path):
            async for attempt in self._loop(method):
                with attempt:
                    response = self._screen(await self.client.request(method, path, **kwargs), allow, attempt.num)
        return self._check(method, response, allow)

    async def get(self, path: str, *, allow: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """GET `path` (see `request`)."""
        return await self.request("GET", path, allow=allow, **kwargs)

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET `path` and parse the JSON answer."""
        return self.parse(await self.get(path, **kwargs))

"""Shared test helpers: the CLI in a process of its own, a Sentry envelope receiver, SecantusDB."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from pymongo import MongoClient

from jobs.backup.job import BackupJob
from jobs.backup.source import BackupOptions
from tests.forkserver import Forked, ForkServer
from worker.job import JobContext
from worker.ledger import JobChecks, JobState, SqliteLedger

ROOT = Path(__file__).resolve().parent.parent
#: Files real tools wrote (mongodump archives, lockfiles, recorded answers); tests/fixtures/README.md says whence.
FIXTURES = ROOT / "tests" / "fixtures"


#: Proxy and CA variables a developer's or CI's machine may have: no test may inherit them.
NETWORK_ENV = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ssl_cert_file", "ssl_cert_dir"})


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without opskeeper/Sentry settings or proxies, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPSKEEPER_", "SENTRY_", "RENDER_")) and k.lower() not in NETWORK_ENV}  # fmt: skip
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _no_network_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no proxy or CA variables; a test that wants one sets it."""
    for key in list(os.environ):
        if key.lower() in NETWORK_ENV:
            monkeypatch.delenv(key)


@dataclass
class Result:
    """What a finished opskeeper subprocess printed and returned."""

    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        """Every JSON log line on stdout."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


_FORKS: list[ForkServer] = []


def opskeeper(*args: str, env: dict[str, str], timeout: float = 60) -> Result:
    """Run `opskeeper ARGS` to completion in a process of its own, with exactly `env`.

    The process is forked from one that has imported the CLI already (tests/forkserver.py);
    with OPSKEEPER_TEST_SPAWN=1 it is a fresh `python -m worker`.
    """
    if spawn_each():
        proc = subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip
        return Result(proc.returncode, proc.stdout, proc.stderr)
    return Result(*forks().run(list(args), env, ROOT, timeout))


def forks() -> ForkServer:
    """This test process's fork server, started at its first use."""
    if not _FORKS:
        _FORKS.append(ForkServer())
    return _FORKS[0]


def spawn_each() -> bool:
    """OPSKEEPER_TEST_SPAWN=1: every opskeeper process is a fresh `python -m worker`, not a fork."""
    return os.environ.get("OPSKEEPER_TEST_SPAWN") == "1"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The fork server goes with the session."""
    while _FORKS:
        _FORKS.pop().close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment whose ledger is a fresh SQLite file and whose logs are JSON."""
    return clean_env(OPSKEEPER_LEDGER=str(tmp_path / "ledger.db"), OPSKEEPER_LOG_FORMAT="json")


def write(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (as editors save), so a watcher never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


# --- the daemon as a real process ----------------------------------------------------


class DaemonProcess:
    """`opskeeper run` in a process of its own (forked, as `opskeeper` is), its JSON log lines collected as they
    arrive."""

    def __init__(self, config: Path, env: dict[str, str], spawn: bool = False) -> None:
        """`spawn`: a fresh `python -m worker`, never a fork (its environment must act at exec: LD_PRELOAD)."""
        args = ["run", "--config", str(config)]
        self.proc: subprocess.Popen[str] | Forked = (
            subprocess.Popen([sys.executable, "-m", "worker", *args], cwd=ROOT, env={**env, "PYTHONFAULTHANDLER": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if spawn_each() or spawn else forks().start(args, env, ROOT)
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line) if line.startswith("{") else {"event": "(text)", "line": line}
            event["_raw"] = line
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        self.proc.stdout.close()
        with self._cond:
            self.events.append({"event": "(eof)"})
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line
        self.proc.stderr.close()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, after: int = 0, timeout: float = 30
    ) -> tuple[int, dict[str, Any]]:
        """The first event at index >= `after` that matches, and its index; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.events)):
                    if predicate(self.events[i]):
                        return i, self.events[i]
                    if self.events[i]["event"] == "(eof)":
                        pytest.fail(f"daemon exited while waiting; stderr:\n{self.stderr}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no matching event within {timeout}s; last events: {self.events[-5:]}")
                self._cond.wait(remaining)

    def finished(self, job_id: str, *, after: int = 0, timeout: float = 30) -> tuple[int, dict[str, Any]]:
        """The next `job.finished` event of a job."""
        return self.wait_for(lambda e: e["event"] == "job.finished" and e.get("job_id") == job_id, after=after,
                             timeout=timeout)  # fmt: skip

    def terminate(self, timeout: float = 40) -> int:
        """SIGTERM, then the exit code; a daemon that does not stop fails the test with its threads' stacks."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            self.proc.send_signal(signal.SIGABRT)  # faulthandler (enabled in both kinds of process) dumps the stacks
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # a process stuck past even SIGABRT: never leave it running
                self.proc.kill()
                self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        if code is None:
            last = [e["_raw"] for e in self.events[-15:] if "_raw" in e]
            pytest.fail(f"the daemon did not stop within {timeout}s of SIGTERM; its last events:\n{''.join(last)}"
                        f"stderr (the stacks at SIGABRT):\n{self.stderr[-20000:]}")  # fmt: skip
        return code


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons (`start(config, env, spawn=False)`); any still running at the end of the test are killed."""
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str], spawn: bool = False) -> DaemonProcess:
        daemon = DaemonProcess(config, env, spawn)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        daemon.terminate()


# --- a local Sentry: accepts envelopes over real HTTP ---------------------------------


@dataclass
class Envelope:
    """One received envelope: its raw (decompressed) bytes and its items."""

    raw: bytes
    header: dict[str, Any]
    items: list[tuple[dict[str, Any], Any]] = field(default_factory=list)


def parse_envelope(body: bytes) -> Envelope:
    """Split an envelope into header and (item header, payload) pairs, reading by `length`."""
    first, _, rest = body.partition(b"\n")
    envelope = Envelope(body, json.loads(first))
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        item_header = json.loads(line)
        length = item_header.get("length")
        if length is None:
            payload_bytes, _, rest = rest.partition(b"\n")
        else:
            payload_bytes, rest = rest[:length], rest[length + 1 :]
        try:
            payload: Any = json.loads(payload_bytes)
        except ValueError:
            payload = payload_bytes
        envelope.items.append((item_header, payload))
    return envelope


class SentryReceiver:
    """An HTTP server that speaks Sentry's ingest API: POST /api/<project>/envelope/."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.paths: list[str] = []
        cond = threading.Condition()
        self._cond = cond
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                envelope = parse_envelope(body)
                with cond:
                    receiver.paths.append(self.path)
                    receiver.envelopes.append(envelope)
                    cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        """A DSN whose key is long enough to look like a real one."""
        return f"http://0123456789abcdef0123456789abcdef@127.0.0.1:{self.server.server_address[1]}/42"

    def items(self, item_type: str) -> list[Any]:
        """Payloads of every received item of a type (event, transaction, check_in, ...)."""
        with self._cond:
            return [p for e in self.envelopes for h, p in e.items if h.get("type") == item_type]

    def wait_items(self, item_type: str, count: int, timeout: float = 20) -> list[Any]:
        """Block until at least `count` items of a type have arrived."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.items(item_type)) >= count, timeout)
        if not ok:
            pytest.fail(f"expected {count} {item_type} items, got {len(self.items(item_type))}")
        return self.items(item_type)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sentry() -> Iterator[SentryReceiver]:
    """A fresh local Sentry per test; at its end, every check-in it received is checked against Sentry's Crons
    rules (tests/contracts.py): one Sentry would refuse or silently drop fails the test."""
    from tests.contracts import checkin_problems

    receiver = SentryReceiver()
    yield receiver
    receiver.close()
    problems = sorted({p for item in receiver.items("check_in") for p in checkin_problems(item)})
    if problems:
        pytest.fail("check-ins Sentry would not take as sent:\n" + "\n".join(problems))


# --- MongoDB: SecantusDB in this process -------------------------------------------


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB wire-protocol server (SecantusDB) for the whole session."""
    from secantus import SecantusDBServer

    with SecantusDBServer(storage_path=str(tmp_path_factory.mktemp("secantus"))) as server:
        yield server.uri


def peak_rss_mb(code: str) -> tuple[float, str]:
    """Run `code` in a fresh interpreter; its peak RSS in MB (VmHWM: ru_maxrss may count the forking parent's)."""
    script = (
        code + "\nimport sys; print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=True)  # fmt: skip
    return int(done.stderr.strip().splitlines()[-1]) / 1024, done.stdout


def free_port_closed() -> int:
    """A local port with nothing listening on it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stuck_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a Sentry that hangs)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: queue.Queue[socket.socket] = queue.Queue()
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.put(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(2)
    listener.close()
    while not accepted.empty():
        accepted.get().close()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Tests that configure structlog (to capture it) leave no global set-up behind."""
    yield
    import logging

    import structlog

    from worker.reporting import log

    structlog.reset_defaults()
    log._pending.clear()  # a set-up asked for but never applied (no logger was asked for) goes too
    logging.getLogger().handlers.clear()


# --- a local app: programmable HTTP(S) endpoints ---------------------------------------


@dataclass
class Reply:
    """What the app answers to one request."""

    status: int = 200
    body: bytes | str | dict[str, Any] = b'{"status": "OK"}'
    headers: dict[str, str] = field(default_factory=dict)
    wait: threading.Event | None = None
    wait_timeout: float = 0.0
    body_delay: float = 0.0
    """Seconds between the headers and the body (a server slow to send what it has started)."""


def send_reply(handler: BaseHTTPRequestHandler, reply: Reply, headers: dict[str, str] | None = None) -> None:
    """Answer a request with `reply` (after its wait): a dict or list body goes as JSON."""
    if reply.wait is not None:
        reply.wait.wait(reply.wait_timeout)
    body = reply.body
    body = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    body = body.encode() if isinstance(body, str) else body
    handler.send_response(reply.status)
    for key, value in {**(headers or {}), **reply.headers}.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if reply.body_delay:
        handler.wfile.flush()
        threading.Event().wait(reply.body_delay)
    handler.wfile.write(body)


def serve_tls(server: ThreadingHTTPServer, context: Any) -> None:
    """Make `server` speak TLS. The handshake runs in the request's thread, so a client that
    rejects the certificate costs that connection only, and it is closed (not leaked by accept)."""
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]


class AppServer:
    """A real HTTP server whose routes are functions of how often they were called."""

    def __init__(self, ssl_context: Any = None) -> None:
        self.routes: dict[str, Callable[[int], Reply]] = {}
        self.calls: dict[str, int] = {}
        lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                with lock:
                    n = app.calls.get(self.path, 0)
                    app.calls[self.path] = n + 1
                route = app.routes.get(self.path)
                send_reply(self, route(n) if route else Reply(404, b"not found"))

            do_GET = do_POST = do_HEAD = _serve  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if ssl_context is not None:
            serve_tls(self.server, ssl_context)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The full URL of a path on this server."""
        return f"{self.scheme}://{host}:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app() -> Iterator[AppServer]:
    """A local HTTP app per test."""
    server = AppServer()
    yield server
    server.close()


# --- S3: moto's real HTTP server --------------------------------------------------------

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key-0000",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over real HTTP, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; AWS credentials for boto3 come from the environment, as in production."""
    import uuid

    import boto3

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    name = f"backups-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


# --- a realistic MongoDB dataset and the backup job run in-process ----------------------


@pytest.fixture
def source(mongo_uri: str) -> Iterator[tuple[str, dict[str, int]]]:
    """Two fresh databases with realistic shapes; yields their prefix and the expected counts."""
    client: Any = MongoClient(mongo_uri)
    prefix = f"t{uuid.uuid4().hex[:6]}"
    shop, crm = client[f"{prefix}_shop"], client[f"{prefix}_crm"]
    shop.users.create_index("email", unique=True)
    shop.users.insert_many([{"email": f"u{i}@example.com", "name": f"User {i}", "tags": ["a", "b"][: i % 3],
                             "profile": {"age": 20 + i, "city": "Berlin"}} for i in range(120)])  # fmt: skip
    # A TTL index; the dates lie far ahead so the server's TTL sweeper never removes them mid-test.
    shop.sessions.create_index("at", expireAfterSeconds=3600)
    shop.sessions.insert_many([{"at": dt.datetime(2100, 1, 1, tzinfo=dt.UTC), "user": i} for i in range(30)])
    shop.orders.create_index([("status", 1), ("total", -1)], partialFilterExpression={"total": {"$gt": 0}})
    shop.orders.insert_many([{"status": "paid", "total": i * 1.5, "items": [{"sku": f"s{i}", "qty": i}]}
                             for i in range(250)])  # fmt: skip
    shop.create_collection("empty")
    shop.create_collection("paid_orders", viewOn="orders", pipeline=[{"$match": {"status": "paid"}}])
    shop["audit.log"].insert_one({"event": "login"})
    shop["größe"].insert_one({"x": "ü"})
    crm.types.insert_one({
        "oid": ObjectId(), "int": 1, "long": Int64(2**40), "double": 1.5, "dec": Decimal128(Decimal("1.10")),
        "str": "text", "bool": True, "null": None, "date": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "ts": Timestamp(1700000000, 1), "bin": Binary(b"\x00\x01", 0), "uuid": Binary(uuid.uuid4().bytes, 4),
        "regex": Regex("^a.*z$", "i"), "code": Code("function() {}"), "min": MinKey(), "max": MaxKey(),
        "arr": [1, "two", {"three": 3}], "doc": {"nested": {"deep": [1, 2]}},
    })  # fmt: skip
    counts = {f"{prefix}_shop.users": 120, f"{prefix}_shop.sessions": 30, f"{prefix}_shop.orders": 250,
              f"{prefix}_shop.empty": 0, f"{prefix}_shop.paid_orders": 0, f"{prefix}_shop.audit.log": 1,
              f"{prefix}_shop.größe": 1, f"{prefix}_crm.types": 1}  # fmt: skip
    yield prefix, counts
    client.drop_database(shop.name)
    client.drop_database(crm.name)
    client.close()


class Harness:
    """Runs a backup job in-process the way the runner does."""

    def __init__(self, ledger: SqliteLedger, job_id: str = "nightly") -> None:
        self.ledger, self.job_id, self.logged = ledger, job_id, []  # type: ignore[var-annotated]
        self.on_log: Any = None

    def run(self, **options: Any) -> Any:
        def log(event: str, **fields: Any) -> None:
            self.logged.append((event, fields))
            if self.on_log:
                self.on_log(event, fields)

        ctx = JobContext(
            job_id=self.job_id, run_id="r", scheduled_at=dt.datetime.now(dt.UTC), deadline=time.monotonic() + 300,
            state=JobState(self.ledger, self.job_id), cancel=threading.Event(), log=log,
            checks=JobChecks(self.ledger, self.job_id),
        )  # fmt: skip
        return BackupJob(BackupOptions.model_validate(options)).run(ctx)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    yield Harness(ledger)
    ledger.close()


# --- vendor web APIs: a local server routing by path, answering from the query -------------


@dataclass(frozen=True)
class Request:
    """One request a VendorAPI received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""


class VendorAPI:
    """A real HTTP server for a vendor's web API (Sentry, Render, Atlas, GitHub): routes are
    functions of the request, keyed by path without the query; every request is recorded."""

    def __init__(self, ssl_context: Any = None) -> None:
        from urllib.parse import parse_qs, urlsplit

        self.routes: dict[str, Callable[[Request], Reply]] = {}
        self.requests: list[Request] = []
        self.answers: list[tuple[Request, Reply]] = []
        """Each request with the reply it got, for the check against the vendor's description."""
        self.token_scopes: dict[str, set[str]] | None = None
        """When set, a Sentry call whose token has none of the scopes the operation requires (by Sentry's
        description) is answered 403, as Sentry answers it."""
        self.release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                api.requests.append(request)
                route = api.routes.get(parts.path)
                reply = api.refusal(request) or (route(request) if route else Reply(404, {"detail": "not found"}))
                api.answers.append((request, reply))
                send_reply(self, reply, {"Content-Type": "application/json"})

            do_POST = do_PATCH = do_PUT = do_GET  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme, self.host = "http", "127.0.0.1"
        if ssl_context is not None:
            serve_tls(self.server, ssl_context)
            self.scheme, self.host = "https", "localhost"  # the name its certificate is for
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.server.server_address[1]}"

    def refusal(self, request: Request) -> Reply | None:
        """Sentry's 403 for a token without the scope the operation needs (None: the call may go on)."""
        from tests.contracts import find, vendor_of

        if self.token_scopes is None or vendor_of(request.path) != "sentry":
            return None
        op = find("sentry", request.method, request.path)
        needed = set(op.spec.get("scopes", [])) if op else set()
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if needed and not needed & self.token_scopes.get(token, set()):
            return Reply(403, {"detail": "You do not have permission to perform this action."})
        return None

    def hang(self) -> Reply:
        """A reply that comes only when the test ends: the client's timeout must fire first."""
        return Reply(200, b"", wait=self.release, wait_timeout=30)  # never read: the client gave up

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def digest_auth(
    route: Callable[[Request], Reply], username: str, password: str, realm: str
) -> Callable[[Request], Reply]:  # fmt: skip
    """Wrap a route in RFC 7616 Digest auth (MD5, qop=auth), as Atlas's API keys use: a request
    without a valid answer to a nonce this server gave gets 401 and a new challenge."""
    import hashlib
    import re
    import secrets

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - RFC 7616 Digest uses MD5

    nonces: set[str] = set()

    def guarded(request: Request) -> Reply:
        header = request.headers.get("authorization", "")
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header[len("Digest ") :]))
        uri = fields.get("uri", "")
        if header.startswith("Digest ") and fields.get("username") == username and fields.get("nonce") in nonces:
            ha1, ha2 = md5(f"{username}:{realm}:{password}"), md5(f"{request.method}:{uri}")
            want = md5(f"{ha1}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:{fields['qop']}:{ha2}")
            if fields.get("response") == want and uri.split("?")[0] == request.path:
                return route(request)
        nonce = secrets.token_hex(16)
        nonces.add(nonce)
        challenge = f'Digest realm="{realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'
        return Reply(401, b"", {"WWW-Authenticate": challenge})

    return guarded


def contract_problems(api: VendorAPI) -> list[str]:
    """What the exchanges of a stand-in broke of the vendor's published description (tests/contracts.py): a call
    the description does not have, or an answer it does not describe."""
    from tests.contracts import answer_problems, request_problems, vendor_of

    found: list[str] = []
    for request, reply in list(api.answers):
        vendor = vendor_of(request.path)
        if vendor is None:
            continue
        body = json.loads(request.body) if request.body.strip() else None
        found += request_problems(vendor, request.method, request.path, request.query, body, request.headers)
        answer = reply.body if isinstance(reply.body, dict | list) else None
        if answer is not None:
            found += answer_problems(vendor, request.method, request.path, reply.status, answer)
    return sorted(set(found))


@pytest.fixture
def vendor() -> Iterator[VendorAPI]:
    """A local vendor API per test; at its end, every exchange is checked against the vendor's description."""
    server = VendorAPI()
    yield server
    server.close()
    problems = contract_problems(server)
    if problems:
        pytest.fail("the stand-in's exchanges break the vendor's published description:\n" + "\n".join(problems))


# --- an HTTP proxy: CONNECT tunnels and absolute-URI requests, as corporate proxies take them --


class Proxy:
    """A real forward proxy on loopback. It tunnels CONNECT and relays plain-HTTP requests,
    records every request line it was sent, and with `credentials` answers 407 to a request
    without that exact `Proxy-Authorization: Basic`, as Squid does. With `dial=False` it only
    records, and answers 502 without connecting anywhere."""

    def __init__(self, credentials: tuple[str, str] | None = None, *, dial: bool = True) -> None:
        import base64
        import socketserver

        self.seen: list[str] = []
        wanted = None
        if credentials is not None:
            wanted = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            rbufsize = 0  # unbuffered: a request body must stay in the socket for the relay, not in a buffer

            def handle(self) -> None:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    chunk = self.rfile.readline()
                    if not chunk:
                        return
                    head += chunk
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                fields = (line.partition(":") for line in lines[1:] if line)
                headers = {k.strip().lower(): v.strip() for k, _, v in fields}
                proxy.seen.append(f"{method} {target}")
                if wanted is not None and headers.get("proxy-authorization") != wanted:
                    self.wfile.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                     b'Proxy-Authenticate: Basic realm="corp"\r\n'
                                     b"Content-Length: 0\r\n\r\n")  # fmt: skip
                    return
                if not dial:
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                parts = urlsplit(target if method != "CONNECT" else f"//{target}")
                try:
                    upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
                except OSError:
                    # What Squid and its kind answer when the server cannot be reached.
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                upstream.settimeout(None)
                if method == "CONNECT":
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:  # GET http://host:port/path: forward in origin form
                    origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                    kept = [line for line in lines[1:] if line and not line.lower().startswith("proxy-")]
                    upstream.sendall(f"{method} {origin} HTTP/1.1\r\n".encode() + "\r\n".join(kept).encode()
                                     + b"\r\nConnection: close\r\n\r\n")  # fmt: skip
                pipe(self.connection, upstream)

        def pipe(client: socket.socket, upstream: socket.socket) -> None:
            def copy(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while data := src.recv(65536):
                        dst.sendall(data)
                except OSError:
                    pass
                finally:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)

            back = threading.Thread(target=copy, args=(upstream, client), daemon=True)
            back.start()
            copy(client, upstream)
            back.join(30)
            upstream.close()

        import contextlib
        import socket
        from urllib.parse import urlsplit

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    """A forward proxy per test."""
    server = Proxy()
    yield server
    server.close()

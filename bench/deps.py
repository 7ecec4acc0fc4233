"""Dependency check speed, printed as one JSON line.

Checks shared/fixtures/pnpm/mern-v9 (client and server) against a local registry that
serves the recorded package documents (tests/fixtures/registry) and npm's recorded bulk
advisory answer, adding 50 ms to every response. Reported: the cold wall time, the warm
wall time with the ETag cache kept from the cold run, and the cold time at concurrency 1
(the sequential baseline). Targets (issue 6): cold < 5 s; warm < 1 s.

Usage: python bench/deps.py [--delay 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.dependencies.job import DependenciesOptions, Project, check_projects  # noqa: E402

SHARED = ROOT.parent / "shared" / "fixtures"
RECORDED = ROOT / "tests" / "fixtures" / "registry"


def serve(delay: float) -> ThreadingHTTPServer:
    bulk = json.loads((SHARED / "npm-audit" / "audit-omit" / "bulk.json").read_text())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(delay)
            if self.path.startswith("/node/"):
                return self._send(200, (SHARED / "nodejs" / self.path.rsplit("/", 1)[1]).read_bytes(), "")
            path = RECORDED / f"{quote(unquote(self.path.lstrip('/')), safe='')}.json"
            if not path.is_file():
                return self._send(404, b"{}", "")
            body = json.dumps(json.loads(path.read_text())["doc"]).encode()
            etag = f'"{hashlib.sha1(body).hexdigest()}"'  # noqa: S324 - a cache key, not security
            if self.headers.get("If-None-Match") == etag:
                return self._send(304, b"", etag)
            return self._send(200, body, etag)

        def do_POST(self) -> None:
            time.sleep(delay)
            asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            return self._send(200, json.dumps({k: v for k, v in bulk.items() if k in asked}).encode(), "")

        def _send(self, status: int, body: bytes, etag: str) -> None:
            self.send_response(status)
            if etag:
                self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.request_queue_size = 128  # 16 connections at once overflow the default backlog of 5
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def timed(options: DependenciesOptions, cache: dict[str, Any]) -> float:
    started = time.perf_counter()
    asyncio.run(check_projects(options, ROOT, cache, datetime.now(UTC).date()))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    server = serve(args.delay)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    projects = tuple(Project(name=p, path=str(SHARED / "pnpm" / "mern-v9" / p)) for p in ("client", "server"))

    def options(concurrency: int) -> DependenciesOptions:
        return DependenciesOptions(projects=projects, registry=url, node_index=f"{url}/node/index.tab",
                                   node_schedule=f"{url}/node/schedule.json", concurrency=concurrency)  # fmt: skip

    cache: dict[str, Any] = {}
    cold = timed(options(16), cache)
    warm = timed(options(16), cache)
    sequential = timed(options(1), {})
    print(json.dumps({
        "bench": "deps", "delay_ms": args.delay * 1000, "packages_cached": len(cache),
        "cold_s": round(cold, 3), "warm_s": round(warm, 3), "sequential_cold_s": round(sequential, 3),
        "speedup_vs_sequential": round(sequential / cold, 1),
    }))  # fmt: skip
    server.shutdown()


if __name__ == "__main__":
    main()

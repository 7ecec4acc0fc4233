"""`make demo`: a local app whose /api/health goes down and comes back, watched by the daemon.

Runs the daemon on config/demo.yaml for a few seconds against that app and an embedded
MongoDB-compatible server, then shows `opskeeper history`, `uptime`, `backups list` and the
weekly report (written to var/reports/weekly.md), so
a newcomer sees an outage detected, alerted once and recovered, and backups made and
verified, without any outside service.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from worker import cli


def start_app(down_after: float, down_for: float) -> tuple[ThreadingHTTPServer, str]:
    """An Express-like /api/health that answers 503 from `down_after` s for `down_for` s."""
    started = time.monotonic()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            elapsed = time.monotonic() - started
            if self.path != "/api/health":
                self._send(404, {"error": "not found"})
            elif down_after <= elapsed < down_after + down_for:
                self._send(503, {"status": "DOWN", "db": {"connected": False}})
            else:
                self._send(200, {"status": "OK", "uptime": round(elapsed, 1), "db": {"connected": True}})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/api/health"


def main() -> int:
    """Run the demo; the exit code is the daemon's."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=16)
    parser.add_argument("--config", default="config/demo.yaml")
    args = parser.parse_args()
    server, url = start_app(down_after=args.seconds * 0.25, down_for=args.seconds * 0.4)
    os.environ["DEMO_APP_URL"] = url
    with demo_mongodb() as mongo_uri, offline_registry() as registry:
        os.environ["DEMO_MONGODB_URI"] = mongo_uri
        os.environ["DEMO_REGISTRY"] = registry
        os.environ["DEMO_NODE_INDEX"] = f"{registry}/-/node/index.tab"
        os.environ["DEMO_NODE_SCHEDULE"] = f"{registry}/-/node/schedule.json"
        try:
            code = cli.main(["run", "--config", args.config, "--for", f"{args.seconds}s"])
        finally:
            server.shutdown()
        print("\n--- opskeeper history --limit 15 ---", flush=True)
        cli.main(["history", "--limit", "15"])
        print("\n--- opskeeper uptime --window 1h ---", flush=True)
        cli.main(["uptime", "--window", "1h"])
        print("\n--- opskeeper backups list ---", flush=True)
        cli.main(["backups", "list", "--config", args.config])
        newest = _newest_backup(args.config)
        if newest:
            print(f"\n--- opskeeper backups verify {newest} ---", flush=True)
            cli.main(["backups", "verify", newest, "--config", args.config])
        # The restore drill: restore the newest backup into scratch databases and prove it whole.
        print("\n--- opskeeper run-now backup-drill ---", flush=True)
        cli.main(["run-now", "backup-drill", "--config", args.config, "--json"])
        print("\n--- opskeeper deps config/examples/shop-server ---", flush=True)
        node = ["--node-index", os.environ["DEMO_NODE_INDEX"], "--node-schedule", os.environ["DEMO_NODE_SCHEDULE"]]
        cli.main(["deps", "config/examples/shop-server", "--registry", registry, *node])
        # The same check as a scheduled job, so its findings are in the ledger for the review.
        print("\n--- opskeeper run-now app-deps ---", flush=True)
        cli.main(["run-now", "app-deps", "--config", args.config])
        print("\n--- opskeeper report weekly --out var/reports/weekly.md ---", flush=True)
        cli.main(["report", "weekly", "--config", args.config, "--out", "var/reports/weekly.md"])
        _print_head("var/reports/weekly.md")
        print("\n--- opskeeper status --html var/status/index.html ---", flush=True)
        cli.main(["status", "--config", args.config])
        cli.main(["status", "--config", args.config, "--html", "var/status/index.html"])
        print(f"open {Path('var/status/index.html').resolve().as_uri()} in a browser, or run `opskeeper serve`")
    return code


@contextlib.contextmanager
def offline_registry() -> Iterator[str]:
    """An npm registry stand-in serving recorded package documents, so `deps` runs without network."""
    recorded = Path("tests/fixtures/registry")
    nodejs = Path("config/examples/nodejs")

    class Registry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/-/node/"):
                path = nodejs / self.path.rsplit("/", 1)[1]
                self._send(200, path.read_bytes() if path.is_file() else b"")
                return
            path = recorded / f"{quote(unquote(self.path.lstrip('/')), safe='')}.json"
            if path.is_file():
                self._send(200, json.dumps(json.loads(path.read_text())["doc"]).encode())
            else:
                self._send(404, b"{}")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(200, b"{}")  # no recorded advisories for the example project

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.request_queue_size = 64
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _print_head(path: str) -> None:
    """The report's first section (what needs attention), as an operator would read it first."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    end = next((i for i, line in enumerate(lines) if i > 2 and line.startswith("## Uptime")), len(lines))
    print("\n".join(f"    {line}" for line in lines[:end] if not line.startswith("<svg")).rstrip())
    print(f"    ... the whole report, with its charts, is in {Path(path).resolve()}", flush=True)


def _newest_backup(config: str) -> str | None:
    from jobs.backup.catalog import list_backups
    from worker.registry import OPTIONS
    from worker.schedule import load_config

    for job in load_config(config, OPTIONS).jobs:
        if job.kind == "backup":
            entries = list_backups(job.options.open_storage(), job.id)
            return entries[0].key if entries else None
    return None


@contextlib.contextmanager
def demo_mongodb() -> Iterator[str]:
    """An embedded MongoDB-compatible server (SecantusDB, a dev dependency) with a small shop in it."""
    from pymongo import MongoClient
    from secantus import SecantusDBServer

    with tempfile.TemporaryDirectory(prefix="opskeeper-demo-db-") as path, \
            SecantusDBServer(storage_path=path) as mongo:  # fmt: skip
        client: Any = MongoClient(mongo.uri)
        shop = client.shop
        shop.products.insert_many([{"sku": f"SKU-{i:04d}", "name": f"Product {i}", "price": round(4.99 + i, 2),
                                    "tags": ["demo", "shop"][: 1 + i % 2]} for i in range(50)])  # fmt: skip
        shop.users.create_index("email", unique=True)
        shop.users.insert_many(
            [
                {
                    "email": f"user{i}@example.com",
                    "name": f"User {i}",
                    "address": {"city": ["Berlin", "Lyon", "Porto"][i % 3]},
                }
                for i in range(200)
            ]
        )
        shop.orders.create_index([("user", 1), ("created", -1)])
        shop.orders.insert_many(
            [
                {
                    "user": i % 200,
                    "items": [{"sku": f"SKU-{(i * 7) % 50:04d}", "qty": 1 + i % 3}],
                    "total": round(9.99 * (1 + i % 5), 2),
                    "status": "paid",
                }
                for i in range(1000)
            ]
        )
        client.close()
        yield mongo.uri


if __name__ == "__main__":
    raise SystemExit(main())

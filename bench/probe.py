"""Health probe figures, printed as one JSON line.

200 endpoints on 4 local HTTP servers (in another process), each answering after 100 ms. One `health` run is
timed as the job runs it (state and checks recorded in a SQLite ledger), first with the
default concurrency, then with concurrency 1 as the baseline. The bare cost of the same 200
requests, made one after another with a plain httpx client, gives the per-check overhead.
Targets (issue 3): one run < 1 s; per-check overhead < 2 ms.

Usage: python bench/probe.py [--endpoints 200] [--delay 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from jobs.health.job import HealthJob, HealthOptions
from worker.job import JobContext, Status
from worker.ledger import JobChecks, JobState, SqliteLedger

SERVERS = 4


def start_server(delay: float) -> ThreadingHTTPServer:
    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(delay)
            body = b'{"status": "OK"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.request_queue_size = 512
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve(delay: float, count: int, ports: Any) -> None:
    """The app side, in its own process so its threads do not share the probe's GIL."""
    servers = [start_server(delay) for _ in range(count)]
    ports.put([s.server_address[1] for s in servers])
    threading.Event().wait()


def timed_run(options: HealthOptions, ledger: SqliteLedger) -> tuple[float, Status]:
    ctx = JobContext(
        job_id="bench", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 600,
        state=JobState(ledger, "bench"), cancel=threading.Event(), log=lambda *a, **k: None,
        checks=JobChecks(ledger, "bench"),
    )  # fmt: skip
    started = time.perf_counter()
    outcome = HealthJob(options).run(ctx)
    return time.perf_counter() - started, outcome.status


async def bare_requests(urls: list[str]) -> float:
    """The same requests, one after another, new connection each (as the probe does)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        started = time.perf_counter()
        for url in urls:
            (await client.get(url)).raise_for_status()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()
    ports: multiprocessing.Queue[list[int]] = multiprocessing.Queue()
    app = multiprocessing.Process(target=serve, args=(args.delay, SERVERS, ports), daemon=True)
    app.start()
    port_list = ports.get(timeout=30)
    urls = [f"http://127.0.0.1:{port_list[i % SERVERS]}/api/health/{i}" for i in range(args.endpoints)]
    endpoints = [{"name": f"ep{i}", "url": url, "expect": {"json": {"status": "OK"}}} for i, url in enumerate(urls)]
    ledger = SqliteLedger(Path(tempfile.mkdtemp(prefix="opskeeper-probe-")) / "ledger.db")
    concurrent = HealthOptions.model_validate({"endpoints": endpoints})
    sequential = HealthOptions.model_validate({"endpoints": endpoints, "concurrency": 1})

    timed_run(concurrent, ledger)  # warm-up: imports, first SSL context, SQLite pages
    wall, status = timed_run(concurrent, ledger)
    wall_seq, status_seq = timed_run(sequential, ledger)
    bare = asyncio.run(bare_requests(urls))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "bench": "probe",
        "endpoints": args.endpoints,
        "server_delay_ms": args.delay * 1000,
        "concurrency": concurrent.concurrency,
        "run_wall_s": round(wall, 3),
        "run_status": status.value,
        "baseline_concurrency_1_wall_s": round(wall_seq, 3),
        "baseline_status": status_seq.value,
        "speedup_vs_concurrency_1": round(wall_seq / wall, 1),
        "bare_sequential_requests_s": round(bare, 3),
        "per_check_overhead_ms": round((wall_seq - bare) / args.endpoints * 1000, 3),
        "peak_rss_mb": round(peak_kib / 1024, 1),
    }))  # fmt: skip
    app.terminate()
    ledger.close()


if __name__ == "__main__":
    main()

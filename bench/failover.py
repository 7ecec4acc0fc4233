"""Fail-over figures, printed as one JSON line.

Each trial starts two `opskeeper run` daemons on one ledger with an `every 1s` job, waits
until one leads and the other stands by, then stops the leader: by kill -9 (a crash) or by
SIGTERM (a Render deploy). It measures the time from the signal to the standby's
`lease.acquired`, then reads the ledger: double runs (a scheduled time run twice, target 0)
and missed seconds (slots of the `every 1s` job with no run, between the last run of the
old leader and the first of the new one).

Then one daemon idles for `--idle` seconds with the lease being renewed: its CPU share and
its RSS growth over the window are the lease's cost (targets: CPU < 1 %, growth < 5 MB).

Then the faults (`bench/faults.py`), each once, on a MongoDB ledger (a SecantusDB server in
a process of its own) with a 3 s lease renewed every second: a paused leader, a ledger
outage, a standby whose clock is 30 s ahead and one 30 s behind, a job longer than the
lease with a pause of its whole machine, and SIGTERM in the middle of that job. For each:
double runs, effects with no start record, seconds of schedule with no record at all,
missed runs recorded, overlap of two runs of one job, and take-over time (targets: 0
doubles, 0 unrecorded effects, 0 seconds unrecorded, 0 overlap but for the pause, see
there).

Usage: python bench/failover.py [--trials 10] [--ttl 15s] [--renew 5s] [--idle 60] [--ledger sqlite|mongodb]
                                [--faults-only] [--outage 25]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from faults import Daemon, run_faults  # noqa: E402

from worker.job import Status  # noqa: E402
from worker.ledger import open_ledger  # noqa: E402

SCHEDULE = """\
jobs:
  - id: tick
    kind: command
    schedule: every 1s
    options: {argv: ["true"]}
"""


def trial(how: str, config: Path, env: dict[str, str], ledger: str) -> dict[str, Any]:
    first = Daemon(config, env)
    first.event("lease.acquired")
    second = Daemon(config, env)
    second.event("lease.standby")
    first.event("job.finished")
    mark = len(second.events)
    signalled = time.monotonic()
    if how == "kill":
        first.proc.kill()
    else:
        first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(60)
    index, took_over = second.event("lease.acquired", after=mark)
    for _ in range(3):
        index, _ = second.event("job.finished", after=index + 1)
    second.stop()
    opened = open_ledger(ledger)
    try:
        now = datetime.now(UTC)
        runs = [r for r in opened.runs(now - timedelta(hours=1), now + timedelta(minutes=1)) if r.job_id == "tick"
                and r.status is not Status.MISSED and r.scheduled_at is not None]  # fmt: skip
    finally:
        opened.close()
    times = sorted({r.scheduled_at for r in runs if r.scheduled_at is not None})
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    return {
        "takeover_s": took_over - signalled,
        "double_runs": sum(n - 1 for n in Counter(r.scheduled_at for r in runs).values()),
        "missed_s": sum(round(g) - 1 for g in gaps if g > 1.5),
    }


def idle_cost(config: Path, env: dict[str, str], seconds: float) -> dict[str, float]:
    daemon = Daemon(config, env)
    daemon.event("lease.acquired")
    process = psutil.Process(daemon.proc.pid)
    time.sleep(2)  # let start-up settle before the window opens
    rss_start, cpu_start, opened = process.memory_info().rss, process.cpu_times(), time.monotonic()
    time.sleep(seconds)
    rss_end, cpu_end = process.memory_info().rss, process.cpu_times()
    window = time.monotonic() - opened
    daemon.stop()
    used = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    return {"idle_cpu_percent": round(100 * used / window, 3), "idle_rss_mb": round(rss_end / 2**20, 1),
            "idle_rss_growth_mb": round((rss_end - rss_start) / 2**20, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ttl", default="15s")
    parser.add_argument("--renew", default="5s")
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--ledger", choices=["sqlite", "mongodb"], default="sqlite")
    parser.add_argument("--faults-only", action="store_true", help="skip the kill/SIGTERM trials and the idle cost")
    parser.add_argument("--outage", type=float, default=25, help="seconds the ledger's server is down")
    args = parser.parse_args()
    if args.faults_only:
        print(json.dumps({"bench": "failover", "faults": run_faults(args.outage)}))
        return
    with tempfile.TemporaryDirectory(prefix="opskeeper-failover-") as scratch:
        config = Path(scratch) / "jobs.yaml"
        config.write_text(SCHEDULE, encoding="utf-8")
        server = None
        if args.ledger == "mongodb":
            port = 27000 + os.getpid() % 1000
            server = subprocess.Popen([str(Path(sys.executable).parent / "secantusd-py"), "--port", str(port),
                                       "--storage-path", ":memory:"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(3)
        results: dict[str, list[dict[str, Any]]] = {"kill": [], "sigterm": []}
        try:
            for n in range(args.trials):
                for how, done in results.items():
                    ledger = (str(Path(scratch) / f"{how}-{n}.db") if server is None
                              else f"mongodb://127.0.0.1:{port}/failover_{how}_{n}")  # fmt: skip
                    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSKEEPER_", "SENTRY_"))}
                    env.update(OPSKEEPER_LEDGER=ledger, OPSKEEPER_LOG_FORMAT="json", OPSKEEPER_LEASE_TTL=args.ttl,
                               OPSKEEPER_LEASE_RENEW=args.renew, OPSKEEPER_SHUTDOWN_GRACE="1s")  # fmt: skip
                    done.append(trial(how, config, env, ledger))
            idle_ledger = str(Path(scratch) / "idle.db") if server is None else f"mongodb://127.0.0.1:{port}/idle"
            idle_env = {**env, "OPSKEEPER_LEDGER": idle_ledger}
            idle = idle_cost(config, idle_env, args.idle)
        finally:
            if server is not None:
                server.terminate()
                server.wait(20)

    def figures(how: str) -> dict[str, Any]:
        takeovers = [r["takeover_s"] for r in results[how]]
        return {f"{how}_takeover_p50_s": round(statistics.median(takeovers), 3),
                f"{how}_takeover_max_s": round(max(takeovers), 3),
                f"{how}_double_runs": sum(r["double_runs"] for r in results[how]),
                f"{how}_missed_s_max": max(r["missed_s"] for r in results[how])}  # fmt: skip

    faults = run_faults(args.outage)
    print(json.dumps({"bench": "failover", "ledger": args.ledger, "trials": args.trials, "lease_ttl": args.ttl,
                      "lease_renew": args.renew, **figures("kill"), **figures("sigterm"), **idle,
                      "faults": faults}))  # fmt: skip


if __name__ == "__main__":
    main()

"""Idle daemon figures, printed as one JSON line.

Starts `opskeeper run` twice, side by side, each for WINDOW_S seconds:
- on the demo schedule (config/demo.yaml, with its `every 1s` heartbeat): time from process
  start to the first run, RSS, CPU and the lateness of the `every 1s` runs;
- on a quiet schedule (only weekly jobs, nothing due): the daemon's CPU and RSS at idle.

The baseline is a bare `python -c 'sleep'` interpreter measured the same way, in the same run:
`rss_vs_bare_python` says how much opskeeper adds to Python itself.
Targets (issue 2): idle RSS < 80 MB, idle CPU < 1 %, p95 lateness of `every 1s` < 50 ms.

Usage: python bench/idle.py [--window 60]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
QUIET = """\
jobs:
  - id: weekly-a
    kind: command
    schedule: "0 3 * * 0"
    options: {argv: ["true"]}
  - id: weekly-b
    kind: command
    schedule: "0 4 * * 0"
    options: {argv: ["true"]}
"""


class Watched:
    """A daemon subprocess whose JSON log lines are timestamped on arrival."""

    def __init__(self, config: Path, ledger: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSKEEPER_", "SENTRY_"))}
        env.update(OPSKEEPER_LEDGER=str(ledger), OPSKEEPER_LOG_FORMAT="json")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                self.events.append((time.monotonic(), event))
                if event["event"] == "daemon.started":
                    self.ready.set()

    def first(self, name: str) -> float:
        return next(t for t, e in self.events if e["event"] == name) - self.started

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(40)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=60.0, help="seconds to observe (default 60)")
    window = parser.parse_args().window
    tmp = Path(tempfile.mkdtemp(prefix="opskeeper-bench-"))
    quiet_config = tmp / "quiet.yaml"
    quiet_config.write_text(QUIET)

    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    demo = Watched(ROOT / "config" / "demo.yaml", tmp / "demo.db")
    quiet = Watched(quiet_config, tmp / "quiet.db")
    for daemon in (demo, quiet):
        if not daemon.ready.wait(30):
            raise SystemExit("daemon did not start")
    handles = {name: psutil.Process(d.proc.pid) for name, d in (("demo", demo), ("quiet", quiet))}
    handles["bare"] = psutil.Process(bare.pid)
    cpu_before = {name: cpu_seconds(p) for name, p in handles.items()}
    t0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    cpu = {name: (cpu_seconds(p) - cpu_before[name]) / elapsed * 100 for name, p in handles.items()}
    rss = {name: p.memory_info().rss / 2**20 for name, p in handles.items()}
    peaks = {name: peak_rss_mb(p.pid) for name, p in handles.items()}
    demo.stop()
    quiet.stop()
    bare.kill()
    bare.wait()

    lateness_ms = sorted(
        e["lateness_s"] * 1000
        for _, e in demo.events
        if e["event"] == "job.started" and e["job_id"] == "heartbeat" and e.get("lateness_s") is not None
    )
    p95 = lateness_ms[max(0, round(0.95 * len(lateness_ms)) - 1)] if lateness_ms else None
    figures = {
        "bench": "idle",
        "window_s": round(elapsed, 1),
        "startup_s": round(demo.first("daemon.started"), 3),
        "first_run_s": round(demo.first("job.started"), 3),
        "idle_rss_mb": round(rss["quiet"], 1),
        "idle_peak_rss_mb": round(peaks["quiet"], 1),
        "idle_cpu_percent": round(cpu["quiet"], 3),
        "demo_rss_mb": round(rss["demo"], 1),
        "demo_peak_rss_mb": round(peaks["demo"], 1),
        "demo_cpu_percent": round(cpu["demo"], 3),
        "every_1s_runs": len(lateness_ms),
        "every_1s_lateness_p50_ms": round(statistics.median(lateness_ms), 2) if lateness_ms else None,
        "every_1s_lateness_p95_ms": round(p95, 2) if p95 is not None else None,
        "every_1s_lateness_max_ms": round(lateness_ms[-1], 2) if lateness_ms else None,
        "bare_python_rss_mb": round(rss["bare"], 1),
        "rss_vs_bare_python": round(rss["quiet"] / rss["bare"], 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

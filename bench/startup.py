"""Command-line start-up, printed as one JSON line.

Each command runs `--runs` times in a fresh process (the installed console script, bytecode
compiled as `make` and the Docker image compile it); reported: the median and the fastest wall
time, and the peak RSS, of `opskeeper --version`, `opskeeper validate` of the shipped
config/jobs.yaml and `opskeeper deps --help`. The baseline is the bare interpreter
(`python -c pass`), in the same run: the part no change to opskeeper can remove. Targets
(issue 31): `--version` <= 0.15 s, `validate` <= 0.5 s on a 2-core machine.

Usage: python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPSKEEPER = Path(sys.executable).with_name("opskeeper")


def timed(command: list[str], runs: int) -> dict[str, float]:
    """Median and fastest wall seconds, and the largest peak RSS in MB, over `runs` fresh processes."""
    walls, peaks = [], []
    env = {**os.environ, "OPSKEEPER_LEDGER": os.devnull}
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
        proc.stderr.close()
        peaks.append(usage.ru_maxrss / 1024)
    return {"median_s": round(statistics.median(walls), 3), "fastest_s": round(min(walls), 3),
            "peak_rss_mb": round(max(peaks), 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if not OPSKEEPER.exists():
        raise SystemExit(f"{OPSKEEPER}: no opskeeper console script beside this Python (run it with .venv/bin/python)")
    floor = timed([sys.executable, "-c", "pass"], args.runs)
    figures = {
        "version": timed([str(OPSKEEPER), "--version"], args.runs),
        "validate": timed([str(OPSKEEPER), "validate", "--config", str(ROOT / "config" / "jobs.yaml")], args.runs),
        "deps_help": timed([str(OPSKEEPER), "deps", "--help"], args.runs),
    }
    for figure in figures.values():
        figure["x_interpreter"] = round(figure["median_s"] / max(floor["median_s"], 1e-3), 1)
    met = figures["version"]["median_s"] <= 0.15 and figures["validate"]["median_s"] <= 0.5
    print(json.dumps({"bench": "startup", "runs": args.runs, "cores": os.cpu_count(), "interpreter": floor,
                      **figures, "targets": {"version_s": 0.15, "validate_s": 0.5}, "met": met}))  # fmt: skip


if __name__ == "__main__":
    main()

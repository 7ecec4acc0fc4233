"""How soon the deploy guard asks Render to roll back once the health job has called the app DOWN.

A real daemon (`opskeeper run`) against the tests' local Render API and a local app that
answers 503: the health job runs every second with the shipped `failure_threshold` (3), the
deploys job only hourly, so any rollback within seconds comes from the daemon running the
guard as soon as its health job turns FAIL. Measured per trial: from the health run that took
the endpoint DOWN (its `job.notice` log line) to the POST /rollback arriving at Render.
The baseline is the deploys job's own schedule in the shipped example (every 5m): a DOWN
waits for it 150 s on average. Prints one JSON line with the figures for the shipped defaults
(health every 1m, threshold 3) computed from them, and the daemon's peak RSS.

Usage: python bench/rollback.py [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHIPPED_HEALTH_S, SHIPPED_DEPLOYS_S = 60, 300


def trial(tmp: Path) -> tuple[float, float]:
    """(seconds from DOWN to the rollback request, the daemon's peak RSS in MB) for one bad deploy."""
    import psutil

    from tests.conftest import AppServer, DaemonProcess, Reply, clean_env, opskeeper, write
    from tests.test_deploys import KEY, RenderServer, deploy

    render, app = RenderServer().start(), AppServer()
    arrived: list[float] = []
    made = render.new_deploy

    def stamped(*args: Any) -> dict[str, Any]:
        arrived.append(time.time())
        return made(*args)

    render.new_deploy = stamped  # type: ignore[method-assign]
    env = clean_env(OPSKEEPER_LEDGER=str(tmp / "ledger.db"), OPSKEEPER_LOG_FORMAT="json", RENDER_API_KEY=KEY)
    config = write(tmp / "jobs.yaml", f"""\
jobs:
  - id: api-health
    kind: health
    schedule: every 1s
    options:
      endpoints: [{{name: backend, url: "{app.url("/api/health")}"}}]
  - id: render-deploys
    kind: deploys
    schedule: every 1h
    options:
      api_url: {render.url}
      services: [{{name: api, service_id: srv-api123, health: api-health, auto_rollback: true}}]
""")  # fmt: skip
    try:
        app.routes["/api/health"] = lambda n: Reply(200)
        render.deploys["srv-api123"] = [deploy(1, "live", 60)]
        opskeeper("run-now", "api-health", "--config", str(config), env=env)
        opskeeper("run-now", "render-deploys", "--config", str(config), env=env)  # dep-001 proven good
        render.deploys["srv-api123"] = [deploy(2, "live", 1, "bad change"), deploy(1, "deactivated", 60)]
        app.routes["/api/health"] = lambda n: Reply(503)
        daemon = DaemonProcess(config, env)
        _, down = daemon.wait_for(lambda e: e["event"] == "job.notice" and "is DOWN" in e.get("notice", ""))
        daemon.wait_for(lambda e: e["event"] == "deploy.rollback", timeout=60)
        rss = psutil.Process(daemon.proc.pid).memory_info().rss / 1e6
        daemon.terminate()
        at_down = datetime.fromisoformat(down["timestamp"].replace("Z", "+00:00")).timestamp()
        return arrived[0] - at_down, rss
    finally:
        app.close()
        render.server.shutdown()
        render.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    waits, peaks = [], []
    for _ in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            wait, rss = trial(Path(tmp))
        waits.append(wait)
        peaks.append(rss)
    from jobs.health.job import HealthOptions

    threshold = HealthOptions.model_fields["failure_threshold"].default
    median = statistics.median(waits)
    print(json.dumps({
        "bench": "rollback", "trials": args.trials, "failure_threshold": threshold,
        "down_to_request_s": {"median": round(median, 3), "max": round(max(waits), 3)},
        "baseline_down_to_request_s": {"mean": SHIPPED_DEPLOYS_S / 2, "max": SHIPPED_DEPLOYS_S,
                                       "what": "the deploys job's own every-5m schedule"},
        "ratio_to_baseline_mean": round(median / (SHIPPED_DEPLOYS_S / 2), 5),
        "shipped": {
            "health_every_s": SHIPPED_HEALTH_S, "checks_to_down": threshold,
            "outage_to_down_s": [(threshold - 1) * SHIPPED_HEALTH_S, threshold * SHIPPED_HEALTH_S],
            "outage_to_request_s": [round((threshold - 1) * SHIPPED_HEALTH_S + median, 1),
                                    round(threshold * SHIPPED_HEALTH_S + max(waits), 1)],
        },
        "daemon_rss_mb": round(max(peaks), 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

"""The fault scenarios of `bench/failover.py`: two real daemons on one MongoDB ledger, one fault each.

Every job appends what it does to an effects file, stamped with its run id and fencing token
(`OPSKEEPER_RUN_ID`, `OPSKEEPER_FENCING_TOKEN`), so the figures compare what happened with what
the ledger says:

- `doubles`: scheduled times run twice (ledger);
- `unrecorded_effects`: effects whose run has no start record (effects file against ledger);
- `unrecorded_s`: seconds of the `every 1s` job's schedule with no record at all, run or missed;
- `missed_recorded`: runs recorded as missed, with their reasons counted;
- `overlap_s`: time two runs of one job were both alive (effects file: start to stop), and
  `overlap_recorded_s` the same by the ledger's start and end times;
- `takeover_s`: from the fault to the other daemon's `lease.acquired`.

Run alone: python bench/faults.py [--outage 25]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.job import Status  # noqa: E402
from worker.ledger import RunRecord, open_ledger  # noqa: E402

TTL, RENEW = 3.0, 1.0
#: libfaketime (Debian's faketime): preloaded, it moves a daemon's wall clock and leaves its monotonic one.
FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)

STAMP = "$OPSKEEPER_RUN_ID $OPSKEEPER_FENCING_TOKEN $(date +%s.%N)"
TICK = f"""\
  - id: tick
    kind: command
    schedule: every 1s
    alert_on: []
    options:
      shell: true
      argv: ["echo start {STAMP} >> {{effects}}; echo stop {STAMP} >> {{effects}}"]
"""
# A job twice as long as the lease; a stop (SIGTERM from its daemon) is written when it happens.
LONG = f"""\
  - id: long
    kind: command
    schedule: every 1s
    alert_on: []
    options:
      shell: true
      argv: ["trap 'echo stop {STAMP} >> {{effects}}; exit 143' TERM; echo start {STAMP} >> {{effects}};
              sleep {2 * TTL:g} & wait $!; echo stop {STAMP} >> {{effects}}"]
"""


class Daemon:
    """`opskeeper run`, its JSON log lines kept with their arrival on this process's monotonic clock."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--config", str(config)], cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                with self._cond:
                    self.events.append((time.monotonic(), json.loads(line)))
                    self._cond.notify_all()

    def wait(self, match: Callable[[dict[str, Any]], bool], after: int = 0, timeout: float = 120) -> tuple[int, float]:
        """(index, arrival) of the first matching event at or after `after`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.events)):
                    if match(self.events[i][1]):
                        return i, self.events[i][0]
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise SystemExit(f"no matching event within {timeout}s; last: {self.events[-3:]}")

    def event(self, name: str, after: int = 0, job: str | None = None, timeout: float = 120) -> tuple[int, float]:
        return self.wait(lambda e: e["event"] == name and (job is None or e.get("job_id") == job), after, timeout)

    def count(self, name: str, after: int = 0) -> int:
        with self._cond:
            return sum(1 for _, e in self.events[after:] if e["event"] == name)

    def freeze(self, sig: signal.Signals) -> None:
        """SIGSTOP or SIGCONT the daemon and every process under it: a paused machine, not a paused process."""
        for process in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]:
            with suppress(psutil.NoSuchProcess):
                process.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(90)


class Server:
    """A SecantusDB server in a process of its own, on a fixed port and folder, so it can be stopped and started."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        with __import__("socket").socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        from pymongo import MongoClient

        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "secantusd-py"), "--port", str(self.port),
                                      "--storage-path", str(self.storage)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        client: Any = MongoClient(f"mongodb://127.0.0.1:{self.port}", serverSelectionTimeoutMS=30_000)
        client.admin.command("ping")
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def uri(self, name: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{name}?serverSelectionTimeoutMS=1000&socketTimeoutMS=1000"


class Trial:
    """One scenario's folder, schedule, ledger and daemons."""

    def __init__(self, scratch: Path, server: Server, name: str, jobs: str, **env: str) -> None:
        self.folder = scratch / name
        self.folder.mkdir()
        self.effects = self.folder / "effects"
        self.effects.touch()
        self.config = self.folder / "jobs.yaml"
        self.config.write_text("jobs:\n" + jobs.format(effects=self.effects), encoding="utf-8")
        self.ledger = server.uri(name)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSKEEPER_", "SENTRY_", "RENDER"))}
        self.env.update({"OPSKEEPER_LEDGER": self.ledger, "OPSKEEPER_LOG_FORMAT": "json",
                         "OPSKEEPER_LEASE_TTL": f"{TTL:g}s", "OPSKEEPER_LEASE_RENEW": f"{RENEW:g}s",
                         "OPSKEEPER_SHUTDOWN_GRACE": "1s", **env})  # fmt: skip
        self.daemons: list[Daemon] = []

    def daemon(self, **env: str) -> Daemon:
        started = Daemon(self.config, {**self.env, **env})
        self.daemons.append(started)
        return started

    def pair(self) -> tuple[Daemon, Daemon]:
        """A leader, then a standby."""
        leader = self.daemon()
        leader.event("lease.acquired")
        standby = self.daemon()
        standby.event("lease.standby")
        return leader, standby

    def figures(self) -> dict[str, Any]:
        """What the ledger says against what the effects file says, once every daemon has stopped."""
        # The last started first: a leader stopped before its standby hands over to it, and a skewed standby
        # that then leads would add figures of its own.
        for daemon in reversed(self.daemons):
            daemon.stop()
        opened = open_ledger(self.ledger)
        try:
            now = datetime.now(UTC)
            runs = opened.runs(now - timedelta(hours=1), now + timedelta(minutes=2))
        finally:
            opened.close()
        return measure(runs, self.effects.read_text().splitlines())


def measure(runs: list[RunRecord], effects: list[str]) -> dict[str, Any]:
    """The figures of one trial. Pure."""
    ran = [r for r in runs if r.status is not Status.MISSED]
    started = {r.run_id for r in ran}
    spans: dict[str, list[float]] = {}
    for line in effects:
        _what, run_id, *_, at = line.split()
        spans.setdefault(run_id, []).append(float(at))
    by_job: dict[str, list[tuple[float, float]]] = {}
    jobs = {r.run_id: r.job_id for r in ran}
    for run_id, times in spans.items():
        by_job.setdefault(jobs.get(run_id, "?"), []).append((min(times), max(times)))
    overlap = 0.0
    for intervals in by_job.values():
        for (a0, a1), (b0, b1) in itertools.combinations(sorted(intervals), 2):
            overlap += max(0.0, min(a1, b1) - max(a0, b0))
    ticks = sorted(r.scheduled_at.timestamp() for r in runs if r.job_id == "tick" and r.scheduled_at is not None)
    missed = [r for r in runs if r.status is Status.MISSED]
    return {
        "runs": len(ran),
        "doubles": sum(n - 1 for n in Counter((r.job_id, r.scheduled_at) for r in ran).values()),
        "unrecorded_effects": sum(1 for run_id in spans if run_id not in started),
        "unrecorded_s": sum(round(b - a) - 1 for a, b in itertools.pairwise(ticks) if b - a > 1.5),
        "missed_recorded": len(missed),
        "missed_reasons": dict(Counter(r.summary.split(":")[0] for r in missed)),
        "overlap_s": round(overlap, 3),
        "overlap_recorded_s": round(recorded_overlap(ran), 3),
    }


def recorded_overlap(ran: list[RunRecord]) -> float:
    """Seconds two runs of one job were both open, by the ledger's own start and end times. Pure."""
    total = 0.0
    jobs = sorted({r.job_id for r in ran})
    for job in jobs:
        spans = sorted((r.started_at, r.finished_at or r.started_at) for r in ran if r.job_id == job)
        for (a0, a1), (b0, b1) in itertools.combinations(spans, 2):
            total += max(0.0, (min(a1, b1) - max(a0, b0)).total_seconds())
    return total


def paused_leader(trial: Trial) -> dict[str, Any]:
    """The leader's machine freezes (SIGSTOP of it and its children) for two TTLs, then resumes."""
    leader, standby = trial.pair()
    index, _ = leader.event("job.finished", job="tick")
    leader.event("job.finished", after=index + 1, job="tick")
    mark = len(standby.events)
    paused = time.monotonic()
    leader.freeze(signal.SIGSTOP)
    _, took = standby.event("lease.acquired", after=mark, timeout=30)
    time.sleep(max(0.0, paused + 2 * TTL - time.monotonic()))  # the pause itself: a fixed span, nothing to await
    resumed_at = len(leader.events)
    leader.freeze(signal.SIGCONT)
    leader.event("lease.lost", after=resumed_at, timeout=30)
    index, _ = standby.event("job.finished", after=mark, job="tick")
    standby.event("job.finished", after=index + 1, job="tick")
    resumed_runs = leader.count("job.started", after=resumed_at)
    return {**trial.figures(), "takeover_s": round(took - paused, 3), "resumed_leader_runs": resumed_runs}


def ledger_outage(trial: Trial, server: Server, seconds: float) -> dict[str, Any]:
    """The ledger's server stops for `seconds` under a lone leader, then starts again on the same files."""
    leader = trial.daemon()
    leader.event("lease.acquired")
    index, _ = leader.event("job.finished", job="tick")
    leader.event("job.finished", after=index + 1, job="tick")
    mark = len(leader.events)
    server.stop()
    stopped = time.monotonic()
    leader.event("lease.lost", after=mark, timeout=30)
    time.sleep(max(0.0, stopped + seconds - time.monotonic()))  # the outage itself: a fixed span
    server.start()
    again, _ = leader.event("lease.acquired", after=mark, timeout=60)
    index, _ = leader.event("job.finished", after=again, job="tick")
    leader.event("job.finished", after=index + 1, job="tick")
    return {**trial.figures(), "outage_s": seconds}


def skewed_standby(trial: Trial, skew: str) -> dict[str, Any]:
    """A standby whose wall clock is `skew` off the leader's and the ledger's, for three TTLs."""
    if FAKETIME is None:
        return {"skipped": "libfaketime is not installed: apt-get install faketime (as root)"}
    leader = trial.daemon()
    leader.event("lease.acquired")
    skewed = trial.daemon(LD_PRELOAD=str(FAKETIME), FAKETIME=skew, FAKETIME_DONT_FAKE_MONOTONIC="1")
    skewed.wait(lambda e: e["event"] in ("lease.acquired", "lease.standby"))
    # Three TTLs of ticks, by whichever daemon runs them: a skewed standby that takes the lease runs them.
    marks = [len(leader.events), len(skewed.events)]
    deadline = time.monotonic() + 120
    while sum(d.count("job.finished", after=m) for d, m in zip((leader, skewed), marks, strict=True)) < 3 * TTL:
        if time.monotonic() > deadline:
            raise SystemExit("the ticks stopped")
        time.sleep(0.1)  # two daemons' logs: polled, a bench's loop
    takeovers = skewed.count("lease.acquired")
    return {**trial.figures(), "skewed_takeovers": takeovers}


def long_job_pause(trial: Trial) -> dict[str, Any]:
    """The leader's machine freezes in the middle of a job twice as long as the lease, for two TTLs."""
    leader, standby = trial.pair()
    leader.event("job.started", job="long")
    mark = len(standby.events)
    paused = time.monotonic()
    leader.freeze(signal.SIGSTOP)
    _, took = standby.event("lease.acquired", after=mark, timeout=30)
    standby.event("job.started", after=mark, job="long", timeout=30)
    time.sleep(max(0.0, paused + 2 * TTL - time.monotonic()))  # the pause itself: a fixed span
    resumed_at, resumed_wall = len(leader.events), time.time()
    leader.freeze(signal.SIGCONT)
    leader.event("job.finished", after=resumed_at, job="long", timeout=30)
    standby.event("job.finished", after=mark, job="long", timeout=30)
    old_token = next(e["token"] for _, e in leader.events if e["event"] == "lease.acquired")
    figures = trial.figures()
    # Both runs were alive during the pause, the old one frozen: what counts is how long it went on after.
    stops = [float(line.split()[-1]) for line in trial.effects.read_text().splitlines()
             if line.startswith("stop") and line.split()[2] == str(old_token)]  # fmt: skip
    return {**figures, "takeover_s": round(took - paused, 3),
            "old_run_alive_after_resume_s": round(max(stops) - resumed_wall, 3) if stops else None,
            "resumed_leader_runs": leader.count("job.started", after=resumed_at)}  # fmt: skip


def sigterm_mid_run(trial: Trial) -> dict[str, Any]:
    """A deploy's SIGTERM while a job twice as long as the lease runs (grace 30 s)."""
    leader, standby = trial.pair()
    leader.event("job.started", job="long")
    mark = len(standby.events)
    signalled = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    leader.proc.wait(60)
    _, took = standby.event("lease.acquired", after=mark, timeout=30)
    standby.event("job.finished", after=mark, job="long", timeout=30)
    return {**trial.figures(), "takeover_s": round(took - signalled, 3)}


@contextmanager
def server_in(folder: Path) -> Iterator[Server]:
    server = Server(folder)
    try:
        yield server
    finally:
        server.stop()


def run_faults(outage: float) -> dict[str, Any]:
    """Every scenario once; its figures by name."""
    out: dict[str, Any] = {"lease_ttl_s": TTL, "lease_renew_s": RENEW}
    with tempfile.TemporaryDirectory(prefix="opskeeper-faults-") as folder:
        scratch = Path(folder)
        with server_in(scratch / "db") as server:
            out["paused_leader"] = paused_leader(Trial(scratch, server, "paused", TICK))
            out["skew_ahead_30s"] = skewed_standby(Trial(scratch, server, "ahead", TICK), "+30s")
            out["skew_behind_30s"] = skewed_standby(Trial(scratch, server, "behind", TICK), "-30s")
            out["long_job_pause"] = long_job_pause(Trial(scratch, server, "longpause", LONG))
            out["sigterm_mid_run"] = sigterm_mid_run(Trial(scratch, server, "sigterm", LONG,
                                                           OPSKEEPER_SHUTDOWN_GRACE="30s"))  # fmt: skip
            out["ledger_outage"] = ledger_outage(Trial(scratch, server, "outage", TICK), server, outage)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage", type=float, default=25, help="seconds the ledger's server is down")
    args = parser.parse_args()
    print(json.dumps({"bench": "faults", **run_faults(args.outage)}))


if __name__ == "__main__":
    main()

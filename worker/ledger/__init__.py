"""Run history and per-job state: SQLite by default (embedded, survives restarts), MongoDB optional.

Both backends behave the same; `tests/test_ledger.py` runs one suite against each.
A run is written twice: when it starts (`running`) and when it ends. The end is written
only while the row is still `running`, so whoever records a final status first wins: a
run the daemon already marked `interrupted` cannot be overwritten by its late thread.

The package: `model` (what every ledger promises), `lease` (the scheduler lease), `sqlite`
and `mongo` (the two stores); this module picks one for a target and re-exports the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.ledger.lease import Fenced, Lease, next_token
from worker.ledger.model import (
    CHECKS_KEPT,
    CLOCK_MARGIN,
    DAYS_KEPT,
    DayOfChecks,
    Instance,
    JobChecks,
    JobState,
    Ledger,
    LedgerError,
    RunRecord,
    to_ms,
    utc_now,
)
from worker.ledger.mongo import MongoLedger
from worker.ledger.sqlite import SqliteLedger

__all__ = [
    "CHECKS_KEPT", "CLOCK_MARGIN", "DAYS_KEPT", "DayOfChecks", "Fenced", "Instance", "JobChecks", "JobState",
    "Lease", "Ledger", "LedgerError", "MongoLedger", "RunRecord", "SqliteLedger", "describe_place",
    "lost_on_deploy", "next_token", "open_ledger", "to_ms", "utc_now",
]  # fmt: skip


def open_ledger(target: str) -> Ledger:
    """A MongoDB ledger for a mongodb:// or mongodb+srv:// URL, else SQLite at that path."""
    if target.startswith(("mongodb://", "mongodb+srv://")):
        return MongoLedger(target)
    return SqliteLedger(Path(target))


def describe_place(target: str, masks: Any) -> tuple[str, str]:
    """(kind, where) of a ledger target for the log: the SQLite file's full path, the URL without credentials."""
    if target.startswith(("mongodb://", "mongodb+srv://")):
        return "mongodb", str(masks.text(target))
    return "sqlite", str(Path(target).resolve())


def lost_on_deploy(target: str, environ: Mapping[str, str]) -> str | None:
    """Why this ledger will not survive a Render deploy, or None.

    On Render (`RENDER=true`) a service's file system is wiped on every deploy except under a
    persistent disk, which is a mount of its own: a SQLite file with no mount point above it
    (other than /) is lost, and with it the deploy history, health states and dedupe.
    """
    if environ.get("RENDER") != "true" or target.startswith(("mongodb://", "mongodb+srv://")):
        return None
    path = Path(target).resolve()
    if any(parent != Path("/") and parent.is_mount() for parent in path.parents):
        return None
    return (f"the SQLite ledger {path} is not on a persistent disk: Render wipes it on every deploy, and with it "
            "the last good deploy, health states and advisory dedupe; set OPSKEEPER_LEDGER to a mongodb+srv:// URL "
            "or mount a disk there (see render.yaml)")  # fmt: skip

"""One verdict and one list of what needs a person, for the status page, `opskeeper status` and the review.

`overall` is the worst of everything the status document covers: each endpoint, each enabled
job's newest run (and whether it ran when it was due), the scheduler's instances, the ledger's
own place and every dependency report's gaps. Nothing else decides a headline's word or
colour, so a page can never be green while a job fails. Pure: it reads the status document
`status.build_status` made.

Each state has one symbol, one word and one colour, used by the page, the weekly review and the
terminal alike (`STATES`); the colours are told apart by symbol and word too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Levels, best first; `status` exits with the index.
LEVELS = ("ok", "attention", "failing")
EXIT_CODES = {level: index for index, level in enumerate(LEVELS)}
GREEN, AMBER, RED, GREY = "#1a7f37", "#9a6700", "#cf222e", "#6e7781"
_ANSI = {GREEN: "32", AMBER: "33", RED: "31", GREY: "90"}


@dataclass(frozen=True)
class State:
    """How one state is shown, and what it means for the verdict."""

    symbol: str
    colour: str
    level: str


STATES: dict[str, State] = {
    # the verdict itself
    "OK": State("●", GREEN, "ok"), "ATTENTION": State("▲", AMBER, "attention"),
    "FAILING": State("✕", RED, "failing"),
    # endpoints
    "UP": State("●", GREEN, "ok"), "DEGRADED": State("▲", AMBER, "attention"), "DOWN": State("✕", RED, "failing"),
    "UNKNOWN": State("?", GREY, "attention"),
    # runs
    "ok": State("●", GREEN, "ok"), "warn": State("▲", AMBER, "attention"), "fail": State("✕", RED, "failing"),
    "error": State("✕", RED, "failing"), "timeout": State("✕", RED, "failing"),
    "missed": State("○", AMBER, "attention"), "interrupted": State("○", AMBER, "attention"),
    "running": State("…", GREY, "ok"), "never": State("–", GREY, "ok"),
}  # fmt: skip
VERDICT = {"ok": "OK", "attention": "ATTENTION", "failing": "FAILING"}


def state(name: str | None) -> State:
    """How a state is shown; one not in the table is unknown, never good."""
    return STATES.get(name or "never", STATES["UNKNOWN"])


def worst(levels: Sequence[str]) -> str:
    """The worst of these levels ("ok" for none)."""
    return max(levels, key=LEVELS.index, default="ok")


def needs_attention(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One item per thing a person must act on: its level, what, since when and what to do; newest first. Pure."""
    found: list[dict[str, Any]] = []

    def add(level: str, what: str, since: str | None, message: str) -> None:
        found.append({"level": level, "what": what, "since": since, "message": message})

    for row in status["endpoints"]:
        name, seen = f"{row['job_id']}/{row['endpoint']}", state(row["state"])
        if row["state"] == "UNKNOWN":
            add(
                "attention",
                f"endpoint {name}",
                row.get("last_check_at"),
                "no check recorded in the last 24 hours: is its health job enabled and the daemon running?",
            )
        elif seen.level != "ok":
            add(seen.level, f"endpoint {name}", row.get("since"),
                f"{row['state']}: {row['last_reason'] or 'no reason recorded'}")  # fmt: skip
    for job in status["jobs"]:
        if not job["enabled"]:
            continue
        seen = state(job["last_status"])
        if seen.level != "ok":
            add(seen.level, f"job {job['id']}", job.get("failing_since") or job["last_run_at"],
                f"{job['last_status'].upper()}: {job['summary'] or 'no summary recorded'} "
                f"(opskeeper history --job {job['id']})")  # fmt: skip
        if job.get("stale_since"):
            add(
                "attention",
                f"job {job['id']}",
                job["stale_since"],
                "due and not run: no run recorded since "
                f"{job['last_run_at'] or 'ever'}; is the daemon running and holding the lease?",
            )
    for line in (status.get("scheduler") or {}).get("attention", []):
        add("attention", "scheduler", None, line)
    for line in status.get("ledger_warnings") or []:
        add("attention", "ledger", None, line)
    for row in status["dependencies"]:
        for gap in row.get("not_checked") or []:
            add("attention", f"project {row['project']}", row["checked_at"], f"not checked: {gap}")
    # Newest first; items with no time (standing conditions) after those with one, in their order.
    dated = sorted((f for f in found if f["since"]), key=lambda f: str(f["since"]), reverse=True)
    return dated + [f for f in found if not f["since"]]


def overall(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The verdict over the needs-attention items: word, level and the exit code of `opskeeper status`."""
    level = worst([i["level"] for i in items])
    return {"state": VERDICT[level], "level": level, "exit_code": EXIT_CODES[level],
            "failing": sum(1 for i in items if i["level"] == "failing"),
            "attention": sum(1 for i in items if i["level"] == "attention")}  # fmt: skip


def paint(name: str | None, text: str, colour: bool) -> str:
    """`text` in the state's colour for a terminal (ANSI), or as it is (`worker.reporting.log.use_color` decides)."""
    return f"\x1b[{_ANSI[state(name).colour]}m{text}\x1b[0m" if colour else text

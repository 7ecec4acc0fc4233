"""What a job is: its options model, the context it runs in, and the Outcome it returns."""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict


class Status(enum.StrEnum):
    """How a run ended. The first four are a job's verdict; the rest are the daemon's."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"
    TIMEOUT = "timeout"
    MISSED = "missed"
    INTERRUPTED = "interrupted"
    RUNNING = "running"

    @property
    def exit_code(self) -> int:
        """Nagios plugin convention: 0 ok, 1 warn, 2 critical, 3 unknown."""
        return {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}.get(self, 3)

    @property
    def is_success(self) -> bool:
        """Whether Sentry Crons should see this run as healthy (a warning is not a failure)."""
        return self in (Status.OK, Status.WARN)


#: Statuses an operator may list in a job's `alert_on`.
ALERTABLE = (
    Status.OK,
    Status.WARN,
    Status.FAIL,
    Status.ERROR,
    Status.TIMEOUT,
    Status.MISSED,
    Status.INTERRUPTED,
)

_NUMBERS = re.compile(r"\d+(?:\.\d+)?")
#: A run's summary is one line of at most this many characters (the ledger, Sentry, the page and `status`).
SUMMARY_LIMIT = 500


def counted(count: int, noun: str) -> str:
    """`1 collection`, `3 collections`, `1,250 documents`. Pure."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_size(size: float | None) -> str:
    """Bytes in the unit that suits them: 14.2 kB, 3.2 MB, 1.4 GB (never "0.0 MB" for a small backup). Pure."""
    if size is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size:.0f} B"


def cut(text: str, limit: int) -> str:
    """`text` in at most `limit` characters: cut at a word, ending with "…" when anything was left out. Pure."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space >= limit * 0.6:  # a word boundary not too far back; else one long token is cut where it must be
        head = head[:space]
    return head.rstrip(" ,;:-–") + "…"


@dataclass(frozen=True)
class Outcome:
    """A job's verdict: status, a one-line summary and structured details."""

    status: Status
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Groups repeats of the same problem into one Sentry issue; by default the summary
    #: with its numbers blanked, so "3 of 5 down" and "4 of 5 down" are one problem.
    fingerprint: str | None = None
    #: The job already reported this outcome's problem itself, through notices on state
    #: changes (a health probe alerts once per outage, not once per run). The runner then
    #: raises no `alert_on` event, and a FAIL checks in to Sentry Crons as a run that worked.
    alerted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "summary", cut(self.summary, SUMMARY_LIMIT))

    def problem_key(self) -> str:
        """The part of the Sentry fingerprint that names the problem."""
        return self.fingerprint or _NUMBERS.sub("#", self.summary)


@dataclass(frozen=True)
class Notice:
    """Something a job tells the operator mid-run: an outage began, a service recovered."""

    level: Literal["info", "warning", "error"]
    message: str
    #: Groups repeats into one Sentry issue; the runner prefixes it with the job id.
    fingerprint: tuple[str, ...]
    context: Mapping[str, Any] = field(default_factory=dict)
    resolves: tuple[str, ...] | None = None
    """The fingerprint of an earlier notice this one ends (a recovery ends its outage): that issue is resolved."""


@dataclass(frozen=True)
class CheckRecord:
    """One probe of one endpoint, kept so uptime can be computed over a window."""

    job_id: str
    endpoint: str
    at: datetime
    verdict: str
    """ok | degraded | fail | rate_limited"""
    state: str
    """the endpoint's state after this check: UNKNOWN | UP | DEGRADED | DOWN"""
    status_code: int | None = None
    latency_ms: float | None = None
    reason: str = ""


class CheckLog(Protocol):
    """Where a job records its probe checks, and reads any job's (a deploy reads its health job's)."""

    def record(self, checks: list[CheckRecord]) -> None: ...

    def read(self, job_id: str, since: datetime) -> list[CheckRecord]: ...


class History(Protocol):
    """What a review may read of the ledger: every job's runs, state and checks."""

    def runs(self, since: datetime, until: datetime, kinds: Sequence[str] = (),
             statuses: Sequence[str] = ()) -> list[Any]: ...  # fmt: skip

    def get_state(self, job_id: str, key: str, default: Any = None) -> Any: ...

    def checks(self, since: datetime, job_id: str | None = None, endpoint: str | None = None) -> list[CheckRecord]: ...

    def endpoints(self, since: datetime) -> list[tuple[str, str]]: ...

    def lease_holder(self, now: datetime) -> Any: ...

    def instances(self, alive: timedelta) -> list[Any]: ...


class TransientError(Exception):
    """A failure worth retrying (a dropped connection, a 503): the runner retries these only."""


class JobOptions(BaseModel):
    """Base of every kind's options: unknown keys are errors, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def follows(self) -> frozenset[str]:
        """Ids of jobs whose turn between FAIL and not-FAIL makes this job run at once, off its schedule
        (a deploys job that rolls back follows its health jobs, so it acts on the DOWN within a second)."""
        return frozenset()

    def missing(self) -> list[str]:
        """What this machine lacks for the job to run (a tool not on PATH), each as one sentence; `validate`
        prints them, so a deploy without the tool says so before the first run fails."""
        return []


class StateStore(Protocol):
    """Per-job memory that survives runs and restarts (key -> JSON value)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


@dataclass
class JobContext:
    """Everything a running job may use; it holds no global state."""

    job_id: str
    run_id: str
    scheduled_at: datetime
    deadline: float
    """time.monotonic() value after which the run counts as timed out."""
    state: StateStore
    cancel: threading.Event
    """Set when the run timed out or the daemon is stopping: stop work and return soon."""
    log: Callable[..., None]
    """log(event, **fields): a structured log line bound to this run (redacted)."""
    notify: Callable[[Notice], None] = field(default=lambda notice: None)
    """Send a notice to the log and to Sentry (redacted), now, not at the end of the run."""
    checks: CheckLog | None = None
    jobs: Mapping[str, Any] = field(default_factory=dict)
    """The schedule's jobs by id (their specs): a restore drill finds its backup job here."""
    history: History | None = None
    """The whole ledger, read-only by convention: the reviews summarise what other jobs recorded."""
    record: Callable[[str, Status, str, Mapping[str, Any]], str] = field(default=lambda *entry: "")
    """record(kind, status, summary, details): keep an action this run took (an automatic rollback) in
    the history as an entry of its own, beside the run; returns the entry's id."""
    progress: Callable[..., None] | None = None
    """progress(task, done, total, unit=, label=): set in the foreground (run-now), where someone watches."""
    token: int | None = None
    """The lease's fencing token of the term that started this run (None outside the daemon): a side effect
    that can carry it does (a manifest, a child's environment), so a deposed leader's work can be told apart."""
    instance: str = ""
    """The instance that runs it."""
    fence: Callable[[], None] = field(default=lambda: None)
    """Raise `Fenced` if this run's term no longer holds the lease, by the ledger's clock. Called right before a
    side effect another instance could repeat (a rollback, a pull request); a no-op outside the daemon."""


class Job(Protocol):
    """A kind of work. `run` returns an Outcome for findings and raises only on errors."""

    def __init__(self, options: Any) -> None: ...

    def run(self, ctx: JobContext) -> Outcome: ...

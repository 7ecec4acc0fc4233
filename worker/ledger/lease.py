"""The scheduler lease: one per ledger, so that one daemon schedules, with a fencing token per term."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

LEASE = "scheduler"
#: A released lease expires at the epoch: the next daemon to ask takes it at once.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Lease:
    """The scheduler lease: one per ledger, so only one daemon schedules."""

    owner: str
    token: int
    expires_at: datetime


def next_token(held: Lease | None, owner: str, now: datetime) -> int | None:
    """The fencing token `owner` gets by asking for the lease at `now`, or None while another holds it. Pure.

    Renewing keeps the token; every new term (a take-over, or the same owner after expiry)
    gets a larger one, so a run records which term started it.
    """
    if held is None:
        return 1
    if held.expires_at > now:
        return held.token if held.owner == owner else None
    return held.token + 1


def holds(held: Lease | None, owner: str, token: int, now: datetime) -> bool:
    """Whether `owner` still holds the lease with `token` at `now` (the ledger's clock). Pure."""
    return held is not None and held.owner == owner and held.token == token and held.expires_at > now


class Fenced(Exception):  # noqa: N818 - a state, as the log event names it (`ledger.fenced`)
    """A write stamped with a term that no longer holds the lease: refused, so a deposed leader changes nothing."""

    def __init__(self, owner: str, token: int, held: Lease | None) -> None:
        self.owner, self.token, self.held = owner, token, held
        now = "nobody holds it now" if held is None else f"{held.owner} holds it with token {held.token}"
        super().__init__(f"fenced: {owner} wrote with lease token {token}, which no longer holds the lease ({now})")

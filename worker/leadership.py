"""Exactly one active daemon per ledger: a lease with a fencing token, and a heartbeat per instance.

Render starts a deploy's new instance before it stops the old one, and a worker may run as
several instances for high availability: every daemon shares one ledger, and only the
holder of its lease schedules. The others are standbys that ask again every second and
take over when the lease is released (a clean SIGTERM) or expires (a crash).

The rules, in the order they protect you:
- The lease is judged by the ledger's clock (MongoDB's `$$NOW`; SQLite is one machine), so an
  instance whose clock is off can neither take a live lease nor keep an expired one.
- The holder starts a run only while its lease is still valid by its own monotonic clock,
  counted from *before* its last successful renewal, minus a safety margin, and its runs
  stop when that validity ends (`Runner`). A holder cut off from the ledger, or paused,
  therefore stops before anyone else may take over.
- Every take-over gets a larger fencing token, recorded on each run it starts; the ledger
  refuses a write stamped with a term that no longer holds the lease (`Fenced`).
- Every instance (leader, standby or `run-now`) heartbeats; a `running` run is closed as an
  orphan only when its own instance has gone quiet, never because of its host name.

What it assumes: a renewal that the ledger acknowledged is durable (MongoDB: majority
writes), and the monotonic clocks of the instances run at the same rate to well within the
margin (true of any two machines over 15 s).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

from worker.ledger import Ledger
from worker.reporting.log import get_logger


def instance_id() -> str:
    """This process's name among the ledger's instances: Render's instance id (or the host), pid, a nonce."""
    where = os.environ.get("RENDER_INSTANCE_ID") or socket.gethostname()
    return f"{where}:{os.getpid()}:{secrets.token_hex(3)}"


class Presence:
    """A heartbeat thread: while it runs, this instance's runs are not orphans."""

    def __init__(self, ledger: Ledger, instance: str, every: timedelta) -> None:
        self.ledger, self.instance, self.every = ledger, instance, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """One heartbeat now; a ledger error is logged, not raised."""
        try:
            self.ledger.heartbeat(self.instance, datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - the ledger being down must not stop the daemon
            get_logger().warning("instance.heartbeat_failed", instance=self.instance, error=type(exc).__name__)

    def start(self) -> None:
        """Beat now and then every `every` until stopped."""
        self.beat()

        def loop() -> None:
            while not self._stop.wait(self.every.total_seconds()):
                self.beat()

        self._thread = threading.Thread(target=loop, name="opskeeper-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the instance is about to exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class Leadership:
    """This instance's view of the lease: ask, renew, know until when it may start runs."""

    def __init__(self, ledger: Ledger, instance: str, ttl: timedelta) -> None:
        self.ledger, self.instance, self.ttl = ledger, instance, ttl
        self.token: int | None = None
        self._valid_until = 0.0  # time.monotonic() after which no run may start
        # Clocks of two instances may differ a little: stop a tenth of the TTL (at least 1 s) early.
        self.margin = max(ttl.total_seconds() / 10, 1.0)

    def ask(self) -> int | None:
        """Take or renew the lease; the token while held, None when another instance holds it.

        Raises what the ledger raises; the caller decides (a holder keeps its validity until it runs out).
        """
        asked_at = time.monotonic()
        token = self.ledger.acquire_lease(self.instance, self.ttl, datetime.now(UTC))
        if token is None:
            self.token, self._valid_until = None, 0.0
            return None
        self.token = token
        self._valid_until = asked_at + self.ttl.total_seconds() - self.margin
        return token

    def valid(self) -> bool:
        """Whether this instance may start a run now."""
        return self.token is not None and time.monotonic() < self._valid_until

    def release(self) -> None:
        """Give the lease up now (a clean shutdown), so a standby takes over at its next ask."""
        token, self.token, self._valid_until = self.token, None, 0.0
        if token is not None:
            self.ledger.release_lease(self.instance, token)

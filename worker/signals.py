"""A flag a signal handler may set: the daemon's stop and reload requests.

Python runs a signal handler in the main thread, between two bytecodes of whatever the main thread was doing. The
daemon's main thread spends its life in the wait for the next step, so that is where SIGTERM lands. A
`threading.Event` cannot be set there: `Event.set` takes the lock `Event.wait` holds while it checks the flag and
re-arms, so a signal landing in that window deadlocks the process, which then ignores every later SIGTERM until
Render kills it (seen once in CI: the main thread's stack ended in `Event.set` under `Event.wait`). The signal
module's documentation says as much: synchronization primitives such as `threading.Lock` should not be used within
signal handlers. This flag takes no lock: setting it is an assignment and a write to a pipe, and the waiter waits on
the pipe with `poll`, which wakes on that write whichever thread (or handler) made it. (The standard library has no
waitable flag without a lock, hence these few lines.)
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import weakref


class SignalFlag:
    """Set from anywhere (a signal handler, another thread), waited on by one thread; never blocks the setter."""

    def __init__(self) -> None:
        self._set = False
        self._read, self._write = os.pipe()
        # The setter must never block (a full pipe would hang the handler as surely as a lock); the waiter drains.
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        # poll, not select: select refuses a descriptor numbered over 1023, which a busy process can reach.
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)
        weakref.finalize(self, _close, self._read, self._write)

    def set(self) -> None:
        """Raise the flag and wake the waiter; safe inside a signal handler."""
        self._set = True
        with contextlib.suppress(BlockingIOError):  # a pipe full of earlier wake-ups: the waiter wakes anyway
            os.write(self._write, b"\0")

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        """Lower the flag and forget pending wake-ups (a request that arrives after this raises it again)."""
        self._set = False
        self._drain()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the flag; whether it is set."""
        if not self._set:
            # A set() between the check and poll() has written to the pipe already: poll returns at once.
            self._poll.poll(max(0, math.ceil(timeout * 1000)))  # rounded up: no early wake to spin on
            if not self._set:
                self._drain()  # wake-ups left by a set() that clear() has since undone
        return self._set

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):  # empty: every wake-up read
            while os.read(self._read, 4096):
                pass


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)

"""The daemon's stop flag: settable from a signal handler wherever the main thread was, and a real SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from worker import signals
from worker.signals import SignalFlag


def interrupted_at(line: int, waiting: Callable[[SignalFlag], Any], flag: SignalFlag) -> tuple[bool, int, Any]:
    """Run `waiting(flag)` in a thread, calling `flag.set()` at its `line`-th line event inside worker/signals.py,
    as a signal handler would run between two of the main thread's bytecodes there; (finished, lines, result)."""
    seen = 0
    result: list[Any] = []

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal seen
        if event == "line":
            seen += 1
            if seen == line:
                flag.set()
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        # Only the waiter's lines: set() itself (the handler's) is not traced.
        mine = frame.f_code.co_filename == signals.__file__ and frame.f_code is not SignalFlag.set.__code__
        return local if mine else None

    def run() -> None:
        sys.settrace(tracer)
        try:
            result.append(waiting(flag))
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=10)  # the deadlock this guards against never ends; 10 s is ample for a few lines
    return not thread.is_alive(), seen, result[0] if result else None


@pytest.mark.parametrize(
    "waiting",
    [pytest.param(lambda flag: flag.wait(0.05), id="wait"), pytest.param(lambda flag: flag.clear(), id="clear")],
)
def test_the_flag_can_be_set_at_any_line_of_wait_and_clear(waiting: Callable[[SignalFlag], Any]) -> None:
    """A set() landing at each line of wait and clear, in turn, never blocks, and a wait it lands in returns set."""
    line, lines = 1, 1
    while line <= lines:
        flag = SignalFlag()
        finished, seen, result = interrupted_at(line, waiting, flag)
        assert finished, f"set() at line event {line} blocked"
        if seen >= line and result is not None:  # a wait (clear returns nothing)
            assert result is True, f"a wait that set() landed in at line event {line} returned unset"
        lines = max(lines, seen)
        line += 1
    assert lines > 1, "the tracer saw none of the flag's lines"


def test_a_wait_returns_as_soon_as_another_thread_sets_the_flag() -> None:
    """wait() wakes on set() from another thread, long before its timeout, and reports the flag set."""
    flag = SignalFlag()
    waiting = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        waiting.set()
        result.append(flag.wait(600))

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    waiting.wait()
    flag.set()
    thread.join(timeout=30)
    assert result == [True]


def test_a_cleared_flag_waits_again_and_reports_unset() -> None:
    """clear() forgets earlier wake-ups: the next wait runs to its timeout and says the flag is not set."""
    flag = SignalFlag()
    for _ in range(10_000):  # more wake-ups than the pipe holds: set() never blocks on a full pipe
        flag.set()
    assert flag.wait(0) is True
    flag.clear()
    assert flag.is_set() is False
    assert flag.wait(0.01) is False


def test_sigterm_from_the_handler_wakes_a_waiting_main_thread() -> None:
    """A real SIGTERM whose handler sets the flag ends a long wait in the main thread (where Python runs handlers)."""
    flag = SignalFlag()
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
    try:
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM), daemon=True)
        sender.start()
        assert flag.wait(600) is True
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, previous)

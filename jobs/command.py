"""`command`: run a program (or a shell script) and judge it by its exit code.

FAIL means the program exited with a code that is neither 0 nor one of `warn_codes`,
or was killed by a signal. Operators use it for `pnpm audit --json` and their own scripts.

The program gets a minimal environment (worker/children.py), not the daemon's secrets:
whatever else it needs goes in `env`, or `inherit_env: true` passes everything.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Annotated

from pydantic import Field, model_validator

from worker import children
from worker.job import JobContext, JobOptions, Outcome, Status, cut

_TAIL_BYTES = 4096
# Once asked to stop, a program gets this long to exit after SIGTERM before SIGKILL.
_KILL_GRACE_S = 5.0
_POLL_S = 0.1


class CommandOptions(JobOptions):
    """What to run, where, and which exit codes are only a warning."""

    argv: Annotated[tuple[str, ...], Field(min_length=1)]
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    inherit_env: bool = False
    """Pass the daemon's whole environment (its secrets included); default: PATH, HOME, LANG, TZ and `env`."""
    shell: bool = False
    warn_codes: tuple[Annotated[int, Field(ge=1, le=255)], ...] = ()

    @model_validator(mode="after")
    def _one_script_with_shell(self) -> CommandOptions:
        if self.shell and len(self.argv) != 1:
            raise ValueError("with shell: true, argv must be a single string: the script /bin/sh runs")
        return self


def run_env(ctx: JobContext) -> dict[str, str]:
    """What a program learns of its run: its job, run id, scheduled time, and the term that started it.

    OPSKEEPER_FENCING_TOKEN grows with every new lease holder: a program that writes somewhere shared can
    refuse a write carrying a smaller token than one it has seen, so a deposed leader's late run changes nothing.
    """
    env = {"OPSKEEPER_JOB_ID": ctx.job_id, "OPSKEEPER_RUN_ID": ctx.run_id,
           "OPSKEEPER_SCHEDULED_AT": ctx.scheduled_at.isoformat()}  # fmt: skip
    if ctx.token is not None:
        env["OPSKEEPER_FENCING_TOKEN"] = str(ctx.token)
    if ctx.instance:
        env["OPSKEEPER_INSTANCE"] = ctx.instance
    return env


class CommandJob:
    """Run `argv` under the job's timeout; the tails of stdout and stderr go into details."""

    def __init__(self, options: CommandOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        opts = self.options
        argv = ["/bin/sh", "-c", opts.argv[0]] if opts.shell else list(opts.argv)
        if opts.cwd is not None and not Path(opts.cwd).is_dir():
            return Outcome(Status.FAIL, f"working directory does not exist: {opts.cwd}", {"cwd": opts.cwd})
        started = time.monotonic()
        proc = children.spawn(argv, children.child_env({**run_env(ctx), **opts.env}, inherit=opts.inherit_env),
                              cwd=opts.cwd,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        tails = [_Tail(proc.stdout), _Tail(proc.stderr)]  # type: ignore[arg-type] # both are PIPE
        try:
            stopped = self._wait(proc, ctx)
        finally:
            # What it left running in its group (`cmd &` in a script) goes with it.
            children.kill_group(proc)
            children.reap(proc)
        for tail in tails:
            tail.join()
        code = proc.returncode
        details = {
            "argv": list(opts.argv),
            "exit_code": code,
            "duration_s": round(time.monotonic() - started, 3),
            "stdout_tail": tails[0].text(),
            "stderr_tail": tails[1].text(),
        }
        name = Path(argv[0]).name if not opts.shell else "shell script"
        if stopped:
            return Outcome(Status.FAIL, f"{name} was stopped before it finished", details)
        if code == 0:
            return Outcome(Status.OK, f"{name} exited 0", details)
        if code < 0:
            return Outcome(Status.FAIL, f"{name} was killed by {signal.Signals(-code).name}", details)
        last = tails[1].last_line() or tails[0].last_line()
        status = Status.WARN if code in opts.warn_codes else Status.FAIL
        summary = f"{name} exited {code}" + (f": {last}" if last else "")
        return Outcome(status, cut(summary, 300), details, fingerprint=f"{name} exited {code}")

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], ctx: JobContext) -> bool:
        """Wait for the program; kill its process group if the run is cancelled."""
        while True:
            try:
                proc.wait(timeout=_POLL_S)
                return False
            except subprocess.TimeoutExpired:
                if ctx.cancel.is_set() or time.monotonic() > ctx.deadline:
                    break
        children.kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            children.kill_group(proc, signal.SIGKILL)
            proc.wait()
        return True


class _Tail:
    """Drains a pipe in a thread, keeping only its last few KiB (memory stays bounded)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._stream = stream
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for chunk in iter(lambda: self._stream.read1(65536), b""):  # type: ignore[attr-defined]
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size - len(self._chunks[0]) >= _TAIL_BYTES:
                self._size -= len(self._chunks.popleft())
        self._stream.close()

    def join(self) -> None:
        # A grandchild that keeps the pipe open must not hang the job.
        self._thread.join(timeout=_KILL_GRACE_S)

    def text(self) -> str:
        data = b"".join(self._chunks)[-_TAIL_BYTES:]
        return data.decode("utf-8", errors="replace")

    def last_line(self) -> str:
        lines = [line.strip() for line in self.text().splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""

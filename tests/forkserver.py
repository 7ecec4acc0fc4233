"""Run the `opskeeper` command line in a fresh process without paying its imports every time.

Most of a test's `python -m worker ...` is the interpreter importing pydantic, pymongo,
structlog and sentry_sdk (about 0.7 s of CPU a call, hundreds of calls a suite). A fork
server pays that once: one process per test worker imports `worker.cli` and waits; for each
call it forks a process that takes the call's argv, environment and working directory,
writes its output to the caller's files and exits through the interpreter's own shutdown
(atexit, Sentry's flush, buffered stdout), exactly as `python -m worker` ends. Each call is
still its own process with its own pid, environment and exit code.

The request goes over a Unix socket; the server forks a handler per connection, which forks
the command and reports its pid and then its exit status. `OPSKEEPER_TEST_SPAWN=1` runs every
call as a fresh `python -m worker` instead; the daemons the tests start, and the console script
test, always are.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def serve(path: str) -> None:
    """The server's loop: import the CLI once, then one forked command per connection."""
    sys.path.insert(0, str(ROOT))
    import worker.cli  # noqa: F401 - the point: imported before any fork
    from worker import registry  # noqa: F401 - every kind's options built once, too

    assert threading.active_count() == 1, "a fork copies no thread: the imports must start none"
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _handle(conn)
        conn.close()


def _handle(conn: socket.socket) -> None:
    """In the handler: fork the command, say its pid, wait for it, say how it ended.

    Nothing here catches: the command's SystemExit (or an uncaught error) rises through these
    frames to the top, so the command ends through the interpreter's own shutdown.
    """
    with conn.makefile("rb") as incoming:
        request = json.loads(incoming.readline())
    pid = os.fork()
    if pid == 0:
        conn.close()
        _command(request)
    conn.sendall(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    conn.close()
    os._exit(0)


def _command(request: dict[str, Any]) -> None:
    """In the command's process: become `python -m worker ARGS` with the caller's environment, then end as it does."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(request[name], os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [str(ROOT / "worker" / "__main__.py"), *request["args"]]
    from worker.cli import main

    code = 1
    try:
        code = main(request["args"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


class ForkServer:
    """The client: start the server once, then `run` as subprocess.run would (capture, timeout, exit code)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="opskeeper-fork-")
        self._path = str(Path(self._dir) / "server.sock")
        self._proc = subprocess.Popen([sys.executable, __file__, self._path], stdout=subprocess.PIPE, cwd=ROOT,
                                      stdin=subprocess.DEVNULL)  # fmt: skip
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the opskeeper fork server did not start")

    def run(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str, str]:
        """Run `opskeeper ARGS` to completion: (exit code, stdout, stderr); TimeoutExpired after `timeout`, killed."""
        with tempfile.TemporaryDirectory(dir=self._dir) as scratch:
            out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
            out.touch()
            err.touch()
            request = {"args": args, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(self._path)
                conn.sendall(json.dumps(request).encode() + b"\n")
                conn.settimeout(timeout)
                with conn.makefile("rb") as answers:
                    pid = int(answers.readline())
                    try:
                        code = int(answers.readline())
                    except TimeoutError:
                        os.kill(pid, signal.SIGKILL)
                        raise subprocess.TimeoutExpired([sys.executable, "-m", "worker", *args], timeout) from None
            return code, out.read_text(), err.read_text()  # decoded as subprocess.run(text=True) does

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        for leftover in Path(self._dir).iterdir():
            leftover.unlink()
        Path(self._dir).rmdir()


if __name__ == "__main__":
    serve(sys.argv[1])

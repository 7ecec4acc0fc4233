"""Run the `opskeeper` command line in a fresh process without paying its imports every time.

Most of a test's `python -m worker ...` is the interpreter importing pydantic, pymongo,
structlog and sentry_sdk (about 0.7 s of CPU a call, hundreds of calls a suite). A fork
server pays that once: one process per test worker imports `worker.cli` and waits; for each
call it forks a process that takes the call's argv, environment and working directory,
writes its output to the caller's pipes and exits through the interpreter's own shutdown
(atexit, Sentry's flush, buffered stdout), exactly as `python -m worker` ends. Each call is
still its own process with its own pid, environment and exit code.

The request goes over a Unix socket with the caller's ends of two pipes (SCM_RIGHTS), which
become the command's stdout and stderr; the server forks a handler per connection, which forks
the command and reports its pid and then its exit status. `ForkServer.start` is a small Popen
(pid, poll, wait, send_signal, kill, stdout and stderr as text), `ForkServer.run` a
subprocess.run. `OPSKEEPER_TEST_SPAWN=1` makes the tests spawn a fresh `python -m worker`
instead; the console script test and the few that type at it (a terminal, stdin) or serve a
page always do.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
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
    _, fds, _, _ = socket.recv_fds(conn, 1, 2)
    with conn.makefile("rb") as incoming:
        request = json.loads(incoming.readline())
    pid = os.fork()
    if pid == 0:
        conn.close()
        _command(request, fds)
    for fd in fds:  # the command holds them now: the caller sees EOF when it (and its children) end
        os.close(fd)
    conn.sendall(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    conn.close()
    os._exit(0)


def _command(request: dict[str, Any], fds: list[int]) -> None:
    """In the command's process: become `python -m worker ARGS` with the caller's environment, then end as it does."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    for target, fd in zip((1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.enable()  # as PYTHONFAULTHANDLER=1: a command that hangs dumps its threads' stacks on SIGABRT
    sys.argv = [str(ROOT / "worker" / "__main__.py"), *request["args"]]
    from worker.cli import main

    code = 1
    try:
        code = main(request["args"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


class Forked:
    """A command the server forked, as much of subprocess.Popen as the tests use."""

    def __init__(self, args: list[str], conn: socket.socket, stdout: int, stderr: int) -> None:
        self.args, self._conn, self._buffer = args, conn, b""
        self.stdout = open(stdout, encoding="utf-8")  # noqa: SIM115 - the caller reads it to EOF, then it is closed
        self.stderr = open(stderr, encoding="utf-8")  # noqa: SIM115
        pid = self._line(30)  # the handler forks at once; a silent server is a broken one, not a slow command
        if pid is None:
            raise RuntimeError("the opskeeper fork server did not start the command within 30 s")
        self.pid = int(pid)
        self.returncode: int | None = None

    def _line(self, timeout: float | None) -> str | None:
        """The server's next line; None if none came within `timeout` (0: do not wait)."""
        self._conn.settimeout(timeout)
        while b"\n" not in self._buffer:
            try:
                chunk = self._conn.recv(64)
            except (TimeoutError, BlockingIOError):
                return None
            if not chunk:
                raise RuntimeError("the opskeeper fork server went away")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def poll(self) -> int | None:
        if self.returncode is None:
            line = self._line(0)
            if line is not None:
                self.returncode = int(line)
                self._conn.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            line = self._line(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.returncode = int(line)
            self._conn.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never signal a pid that may be someone else's by now
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The client: start the server once, then `start` (a Popen) or `run` (a subprocess.run) commands."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="opskeeper-fork-")
        self._path = str(Path(self._dir) / "server.sock")
        self._proc = subprocess.Popen([sys.executable, __file__, self._path], stdout=subprocess.PIPE, cwd=ROOT,
                                      stdin=subprocess.DEVNULL)  # fmt: skip
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the opskeeper fork server did not start")

    def start(self, args: list[str], env: dict[str, str], cwd: Path) -> Forked:
        """`opskeeper ARGS` running, its stdout and stderr as pipes to read."""
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self._path)
            socket.send_fds(conn, [b"\0"], [out_w, err_w])
            conn.sendall(json.dumps({"args": args, "env": env, "cwd": str(cwd)}).encode() + b"\n")
        finally:
            os.close(out_w)
            os.close(err_w)
        return Forked([sys.executable, "-m", "worker", *args], conn, out_r, err_r)

    def run(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str, str]:
        """Run `opskeeper ARGS` to completion: (exit code, stdout, stderr); TimeoutExpired after `timeout`, killed."""
        proc = self.start(args, env, cwd)
        texts: dict[str, str] = {}
        readers = [threading.Thread(target=_drain(stream, name, texts), daemon=True)
                   for name, stream in (("out", proc.stdout), ("err", proc.stderr))]  # fmt: skip
        for reader in readers:
            reader.start()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
        finally:
            for reader in readers:
                reader.join(10)
        if len(texts) < 2:  # subprocess.run would hang here for good: say why instead
            raise RuntimeError(f"opskeeper {' '.join(args)} exited {code}, but a process it left holds its output open")
        return code, texts["out"], texts["err"]

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        for leftover in Path(self._dir).iterdir():
            leftover.unlink()
        Path(self._dir).rmdir()


def _drain(stream: Any, name: str, into: dict[str, str]) -> Callable[[], None]:
    """A reader that keeps all of `stream` under `name`, then closes it (as communicate() does)."""

    def read() -> None:
        with stream:
            into[name] = stream.read()

    return read


if __name__ == "__main__":
    serve(sys.argv[1])

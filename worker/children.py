"""Child processes (command jobs, mongodump): a minimal environment, their own group, dying with us.

Every program opskeeper starts goes through `spawn()`:

- **Environment**: not the daemon's (which holds the DSN, AWS keys, the MongoDB URI) but
  `PATH`, `HOME`, `LANG`, `LC_ALL`, `LC_CTYPE`, `TZ` and `TMPDIR`; proxy and CA settings
  (`HTTPS_PROXY`, `NO_PROXY`, `SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`, …) when they carry no
  password, with SSL_CERT_FILE also as NODE_EXTRA_CA_CERTS (which Node.js reads) unless that is
  set; then what the job names itself. `inherit=True` passes everything (an explicit
  opt-in in the schedule file).
- **Process group**: each child leads its own, so a timeout's kill reaches its children too.
- **Death with the parent**: on Linux the kernel sends SIGKILL to the child when the thread
  that started it dies (`PR_SET_PDEATHSIG`), so a `kill -9` of the daemon takes mongodump
  with it. `kill_all()` (also run at exit) ends every group still alive, grandchildren included.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
_PROXIES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
NETWORK_ENV = (*_PROXIES, *(p.lower() for p in _PROXIES), "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
               "REQUESTS_CA_BUNDLE")  # fmt: skip
_PR_SET_PDEATHSIG = 1

_live: dict[int, subprocess.Popen[bytes]] = {}
_lock = threading.Lock()


def child_env(
    extra: Mapping[str, str] = {}, *, inherit: bool = False, environ: Mapping[str, str] | None = None,
    passed: Sequence[str] = (),
) -> dict[str, str]:  # fmt: skip
    """The environment a child gets: the minimal set, `passed` names from ours, then `extra`."""
    environ = os.environ if environ is None else environ
    if inherit:
        return {**environ, **extra}
    env = {name: environ[name] for name in (*BASE_ENV, *passed) if name in environ}
    for name in NETWORK_ENV:
        value = environ.get(name)
        if value and not _has_password(value):
            env[name] = value
    if "SSL_CERT_FILE" in env and "NODE_EXTRA_CA_CERTS" not in env:
        # Node.js (npm, pnpm, yarn, a command job's script) does not read SSL_CERT_FILE: the same bundle, for it.
        env["NODE_EXTRA_CA_CERTS"] = env["SSL_CERT_FILE"]
    env.setdefault("PATH", os.defpath)
    return {**env, **extra}


def _has_password(value: str) -> bool:
    """Whether a proxy URL carries credentials (user:password@): never passed on unasked."""
    if "@" not in value:
        return False
    with contextlib.suppress(ValueError):
        return urlsplit(value if "://" in value else f"http://{value}").password is not None
    return True


@functools.cache
def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function setting PR_SET_PDEATHSIG to SIGKILL; None where there is no prctl.

    Resolved at the first spawn, not at import: every command imports this module.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols include libc's: no find_library (which runs ldconfig).
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, kill, 0, 0, 0)

    return preexec


def spawn(argv: Sequence[str], env: Mapping[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group with exactly `env`; it dies with its parent."""
    # preexec_fn is unsafe when it takes locks another thread may hold at fork time; this one
    # only calls prctl through a pointer resolved before the fork.
    proc = subprocess.Popen(  # noqa: S603 - argv comes from the operator's schedule or our own code
        list(argv),
        env=dict(env),
        start_new_session=True,
        preexec_fn=_die_with_parent(),  # noqa: PLW1509
        **kwargs,
    )
    with _lock:
        _live[proc.pid] = proc
    return proc


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Forget a child that has been waited for."""
    with _lock:
        _live.pop(proc.pid, None)


def kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal the child's whole process group (it leads it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def kill_all() -> list[int]:
    """SIGKILL every process group still alive that we started (at exit, after a timeout); their pids."""
    with _lock:
        procs = list(_live.values())
        _live.clear()
    killed = []
    for proc in procs:
        kill_group(proc)
        killed.append(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
    return killed


atexit.register(kill_all)

"""Progress of backup, verify and restore: live bars ending at 100 % under a pseudo-terminal, plain lines without."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, opskeeper, write
from worker.reporting.progress import ProgressReport

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run `python -m worker ARGS` with a pseudo-terminal as stdin, stdout and stderr; its exit code and output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "worker", *args], cwd=ROOT, stdin=follower, stdout=follower,
                            stderr=follower, env={**env, "TERM": "xterm-256color", "COLUMNS": "160"})  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the other side closed: the process is done with its terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")


def backup_config(tmp_path: Path, databases: str) -> Path:
    return write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: nightly
    kind: backup
    schedule: "@daily"
    options:
      databases: ["{databases}"]
      storage: {tmp_path / "b"}
  - id: drill
    kind: restore_drill
    schedule: "@monthly"
    options: {{backup_job: nightly}}
""")  # fmt: skip


@pytest.mark.slow
def test_backup_and_verify_on_a_terminal_end_at_100_percent(tmp_path: Path, env: dict[str, str], mongo_uri: str,
                                                             source: tuple[str, dict[str, int]]) -> None:  # fmt: skip
    """A backup, `backups verify`, `restore` and a restore drill under a pty: every bar ends at 100 %."""
    prefix, counts = source
    config = backup_config(tmp_path, f"{prefix}_shop")
    code, out = on_a_terminal("run-now", "nightly", "--config", str(config), env={**env, "MONGODB_URI": mongo_uri})
    assert code == 0, out
    text = ANSI.sub("", out)
    shop = {ns: documents for ns, documents in counts.items() if ns.startswith(f"{prefix}_shop.")}
    for ns in (ns for ns, documents in shop.items() if documents):  # an empty collection shows no bar
        finals = re.findall(rf"{re.escape(ns)}\s.*?(\d+)%", text)
        assert finals, f"no progress line for {ns}"
        assert finals[-1] == "100"
    assert re.findall(r"backup \(all collections\).*?(\d+)%", text)[-1] == "100"
    [archive] = [p for p in (tmp_path / "b").rglob("*.archive*") if not p.name.endswith(".json")]
    code, out = on_a_terminal("backups", "verify", str(archive), "--config", str(config), env=env)
    assert code == 0, out
    text = ANSI.sub("", out)
    assert re.findall(r"verify: documents.*?(\d+)%", text)[-1] == "100"
    assert re.findall(r"verify: archive.*?(\d+)%", text)[-1] == "100"
    code, out = on_a_terminal("restore", str(archive), "--to", mongo_uri, "--ns-from", f"{prefix}_shop.*",
                              "--ns-to", f"{prefix}_again.*", "--yes", "--config", str(config), env=env)  # fmt: skip
    assert code == 0, out
    text = ANSI.sub("", out)
    assert re.findall(r"restore: documents.*?(\d+)%", text)[-1] == "100"
    code, out = on_a_terminal("run-now", "drill", "--config", str(config), env={**env, "MONGODB_URI": mongo_uri})
    assert code == 0, out
    text = ANSI.sub("", out)
    assert re.findall(r"drill: documents.*?(\d+)%", text)[-1] == "100"


def test_without_a_terminal_progress_is_plain_lines(tmp_path: Path, env: dict[str, str], mongo_uri: str,
                                                    source: tuple[str, dict[str, int]]) -> None:  # fmt: skip
    """Piped: `backups verify` prints plain percent lines ending at 100 %, with no control characters at all, and
    the documents line names its unit once ("documents: 100 % (1,250 of 1,250, …)")."""
    prefix, _ = source
    config = backup_config(tmp_path, f"{prefix}_*")
    assert opskeeper("run-now", "nightly", "--config", str(config), env={**env, "MONGODB_URI": mongo_uri}).code == 0
    [archive] = [p for p in (tmp_path / "b").rglob("*.archive*") if not p.name.endswith(".json")]
    result = opskeeper("backups", "verify", str(archive), "--config", str(config), env=env)
    assert result.code == 0, result.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.stdout + result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("verify: documents")]
    assert lines[-1].startswith("verify: documents: 100 % (")
    assert " docs" not in lines[-1]  # the label says what is counted, once


def test_a_task_over_its_estimate_still_ends_at_100_percent() -> None:
    """An estimate below the true count (a stale collection count) grows: the last line says 100 %, never 112 %."""
    lines: list[dict[str, Any]] = []
    report = ProgressReport(terminal=False, log=lambda event, **fields: lines.append(fields))
    report.update("shop.orders", 500, 1000)
    report.update("shop.orders", 1120, 1000)
    report.close()
    assert [line["summary"].split(" (")[0] for line in lines] == ["shop.orders: 50 %", "shop.orders: 100 %"]
    assert lines[-1]["total"] == 1120

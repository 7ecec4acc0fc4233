"""`opskeeper status`: exact figures from a ledger of known runs, and the status page in real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs.deploys.history import DeployRecord, ServiceHistory, state_key
from tests.conftest import ROOT, opskeeper, write
from worker.job import CheckRecord, Status
from worker.ledger import RunRecord, SqliteLedger

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OUTAGE_DAY = NOW - timedelta(days=40)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "var" / "test-screenshots"

CONFIG = """\
jobs:
  - id: api-health
    kind: health
    schedule: every 1m
    options: {endpoints: [{name: backend, url: "http://127.0.0.1:9/api/health"}]}
  - id: nightly
    kind: backup
    schedule: "30 2 * * *"
    options: {storage: "/tmp/opskeeper-status-test"}
  - id: drill
    kind: restore_drill
    schedule: "0 5 1 * *"
    options: {backup_job: nightly}
  - id: render
    kind: deploys
    schedule: every 5m
    options: {services: [{name: api, service_id: srv-api1}]}
  - id: deps
    kind: dependencies
    schedule: "0 6 * * mon"
    options: {projects: [{name: server, path: server}]}
"""


def run(job_id: str, kind: str, at: datetime, status: Status, summary: str = "", **details: object) -> RunRecord:
    return RunRecord(run_id=f"{job_id}-{at.isoformat()}", job_id=job_id, kind=kind, status=status, started_at=at,
                     finished_at=at + timedelta(minutes=1), summary=summary, details=details)  # fmt: skip


def fill(ledger: SqliteLedger, days: int) -> None:
    """Hourly checks for `days` days (one day with a 6-hour outage, the last day 3 failed checks); backups, drills."""
    checks = []
    for hour in range(days * 24):
        at = NOW - timedelta(hours=hour)
        failed = (OUTAGE_DAY - timedelta(hours=6) < at <= OUTAGE_DAY) or hour in (1, 2, 3)
        checks.append(CheckRecord(job_id="api-health", endpoint="backend", at=at, verdict="fail" if failed else "ok",
                                  state="DOWN" if failed else "UP", status_code=None if failed else 200,
                                  latency_ms=None if failed else 100.0 + hour % 7, reason="connection refused"
                                  if failed else "HTTP 200"))  # fmt: skip
    ledger.record_checks(sorted(checks, key=lambda c: c.at))
    for day in range(1, 8):
        at = NOW.replace(hour=2, minute=30) - timedelta(days=day)
        ledger.record(run("nightly", "backup", at, Status.OK, "backed up", key=f"nightly/{day}.archive.gz",
                          stored_bytes=1_000_000 - 10_000 * day, documents=5000))  # fmt: skip
    ledger.record(run("nightly", "backup", NOW - timedelta(hours=2), Status.FAIL, "dump failed: connection refused"))
    ledger.record(run("drill", "restore_drill", NOW - timedelta(days=30), Status.OK, "restored",
                      key="nightly/30.archive.gz", recovery_s=40.0))  # fmt: skip
    ledger.record(run("drill", "restore_drill", NOW - timedelta(days=3), Status.OK, "restored",
                      key="nightly/3.archive.gz", recovery_s=42.5))  # fmt: skip
    ledger.record(run("api-health", "health", NOW - timedelta(minutes=1), Status.FAIL, "backend DOWN"))
    history = ServiceHistory([
        DeployRecord("dep-3", "live", "c3" * 20, "fix", "new_commit", (NOW - timedelta(hours=1)).isoformat()),
        DeployRecord("dep-2", "deactivated", "c2" * 20, "ok", "new_commit", (NOW - timedelta(days=1)).isoformat(),
                     good=True, good_at=(NOW - timedelta(days=1) + timedelta(minutes=10)).isoformat()),
    ])  # fmt: skip
    ledger.set_state("render", state_key("api"), history.dump())
    ledger.record(run("deps", "dependencies", NOW - timedelta(days=1), Status.FAIL, "1 high", projects=[{
        "name": "server", "advisories": [{"severity": "high"}, {"severity": "low"}, {"severity": "high"}],
        "direct": [{"name": "express", "update": "major"}, {"name": "cors", "update": "patch"}],
        "node": {"status": "eol", "line": 18}}], gaps=[{"source": "advisories (registry)"}]))  # fmt: skip


@pytest.fixture
def filled(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    ledger = SqliteLedger(Path(env["OPSKEEPER_LEDGER"]))
    fill(ledger, 90)
    ledger.close()
    return write(tmp_path / "jobs.yaml", CONFIG), env


def test_status_json_has_exact_figures(filled: tuple[Path, dict[str, str]]) -> None:
    """Last status, last success, next run, 24 h and 30 d uptime, newest and verified backup: exact values; failing
    jobs make the verdict FAILING and the exit code 2."""
    config, env = filled
    result = opskeeper("status", "--config", str(config), "--json", "--now", NOW.isoformat(), env=env)
    assert result.code == 2, result.stderr
    status = json.loads(result.stdout)
    jobs = {j["id"]: j for j in status["jobs"]}
    assert jobs["nightly"] == {
        "id": "nightly", "kind": "backup", "enabled": True, "last_status": "fail",
        "last_run_at": (NOW - timedelta(hours=2)).isoformat(), "summary": "dump failed: connection refused",
        "last_success_at": (NOW.replace(hour=2, minute=30) - timedelta(days=1)).isoformat(),
        "next_run": NOW.replace(day=2, hour=2, minute=30).isoformat(), "monitor_slug": "nightly",
        "failing_since": (NOW - timedelta(hours=2)).isoformat(), "stale_since": None,
    }  # fmt: skip
    assert status["overall"] == {"state": "FAILING", "level": "failing", "exit_code": 2, "failing": 3,
                                 "attention": 2}  # fmt: skip
    # Newest first: the health job (1 min ago), the backup (2 h), the drill due at 05:00 with no run, the
    # dependency report (1 day) and the source it could not ask. The render job that never ran is not news.
    assert [(i["level"], i["what"], i["since"]) for i in status["needs_attention"]] == [
        ("failing", "job api-health", (NOW - timedelta(minutes=1)).isoformat()),
        ("failing", "job nightly", (NOW - timedelta(hours=2)).isoformat()),
        ("attention", "job drill", NOW.replace(hour=5).isoformat()),
        ("failing", "job deps", (NOW - timedelta(days=1)).isoformat()),
        ("attention", "project server", (NOW - timedelta(days=1)).isoformat()),
    ]
    assert status["needs_attention"][2]["message"].startswith("due and not run: no run recorded since ")
    assert jobs["drill"]["next_run"] == datetime(2027, 1, 1, 5, 0, tzinfo=UTC).isoformat()
    [endpoint] = status["endpoints"]
    # 24 h: checks at hours 0..23 back (24 of them, the one at exactly -24 h included: 25), 3 failed.
    assert endpoint["uptime_24h"] == round(100 * 22 / 25, 3)
    assert endpoint["state"] == "UP"
    month = [d for d in endpoint["days"] if d["day"] > (NOW - timedelta(days=30)).date().isoformat()]
    checked = sum(d["checks"] for d in month)
    assert endpoint["uptime_30d"] == round(100 * (checked - 3) / checked, 3)
    outage = next(d for d in endpoint["days"] if d["day"] == OUTAGE_DAY.date().isoformat())
    assert outage["failures"] >= 5
    [backup] = status["backups"]
    assert backup["newest"]["key"] == "nightly/1.archive.gz"
    assert backup["newest_verified"] == {"at": (NOW - timedelta(days=3)).isoformat(), "key": "nightly/3.archive.gz",
                                         "recovery_s": 42.5, "drill": "drill"}  # fmt: skip
    assert [s["stored_bytes"] for s in backup["sizes"]] == [1_000_000 - 10_000 * d for d in range(7, 0, -1)]
    good_at = (NOW - timedelta(days=1, minutes=-10)).isoformat()
    assert status["deploys"] == [{"job_id": "render", "service": "api",
                                  "newest": {"id": "dep-3", "commit": "c3c3c3c", "status": "live"},
                                  "last_good": {"id": "dep-2", "commit": "c2c2c2c", "good_at": good_at}}]  # fmt: skip
    assert status["dependencies"] == [{"job_id": "deps", "project": "server",
                                       "checked_at": (NOW - timedelta(days=1)).isoformat(), "status": "fail",
                                       "advisories": {"high": 2, "low": 1}, "advisories_checked": True,
                                       "majors": ["express"], "node": "eol", "node_line": 18,
                                       "gaps": ["advisories (registry)"],
                                       "not_checked": ["advisories (registry): no reason recorded ()"]}]  # fmt: skip


def test_status_on_a_terminal_has_header_rows(filled: tuple[Path, dict[str, str]]) -> None:
    """The plain view opens with the verdict and what needs attention, then each table with its header, every job
    named; into a pipe it has no colour codes, with FORCE_COLOR each state has its colour, NO_COLOR wins."""
    config, env = filled
    result = opskeeper("status", "--config", str(config), "--now", NOW.isoformat(), env=env)
    assert result.code == 2
    lines = result.stdout.splitlines()
    assert lines[0] == "OVERALL  ✕ FAILING"
    assert lines[2] == "NEEDS ATTENTION (5)"
    assert lines[3].startswith("  ✕ FAILING job api-health (since 2026-12-01 11:59): FAIL: backend DOWN")
    header = next(i for i, line in enumerate(lines) if line.startswith("JOB "))
    assert lines[header].split()[:4] == ["JOB", "KIND", "LAST", "WHEN"]
    assert any(line.startswith("ENDPOINT") for line in lines)
    assert {line.split()[0] for line in lines[header + 1 : header + 4]} == {"api-health", "nightly", "drill"}
    assert "\x1b[" not in result.stdout
    coloured = opskeeper("status", "--config", str(config), "--now", NOW.isoformat(), env={**env, "FORCE_COLOR": "1"})
    assert coloured.stdout.splitlines()[0] == "OVERALL  \x1b[31m✕ FAILING\x1b[0m"  # red, the page's colour
    assert "\x1b[32m● UP\x1b[0m" in coloured.stdout
    plain = opskeeper("status", "--config", str(config), "--now", NOW.isoformat(),
                      env={**env, "FORCE_COLOR": "1", "NO_COLOR": "1"})  # fmt: skip
    assert "\x1b[" not in plain.stdout


def test_status_summary_wraps_within_its_column(filled: tuple[Path, dict[str, str]]) -> None:
    """A long summary wraps at words inside the SUMMARY column (never past it), at most three lines, and ends with
    an ellipsis when cut."""
    config, env = filled
    ledger = SqliteLedger(Path(env["OPSKEEPER_LEDGER"]))
    words = " ".join(f"package-{n} 1.0.{n} → 1.0.{n + 1}," for n in range(40))
    ledger.record(run("render", "deploys", NOW - timedelta(minutes=3), Status.WARN, words))
    ledger.close()
    lines = opskeeper("status", "--config", str(config), "--now", NOW.isoformat(), env=env).stdout.splitlines()
    header = next(line for line in lines if line.startswith("JOB "))
    column = header.index("SUMMARY")
    start = next(i for i, line in enumerate(lines) if line.startswith("render "))
    block = [lines[start]] + [line for line in lines[start + 1 : start + 3] if line.startswith(" " * column)]
    assert len(block) == 3
    assert all(len(line) <= column + 60 for line in block)
    assert all(line[column - 1] == " " for line in block)
    assert block[0][column:].startswith("package-0 1.0.0")
    assert block[-1].endswith("…")


class PageServer:
    """Serves one folder over HTTP, as `opskeeper serve` would, and remembers every path asked for."""

    def __init__(self, folder: Path) -> None:
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        self.paths: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed: apt-get install chromium (as root; .ci/run does)"
)
def test_status_page_in_headless_chromium(filled: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """The 90-day page loads with no console errors and asks for nothing but itself; the outage day's cell is red."""
    config, env = filled
    site = tmp_path / "site"
    page = site / "status.html"
    result = opskeeper("status", "--config", str(config), "--html", str(page), "--now", NOW.isoformat(), env=env)
    assert result.code == 0, result.stderr
    assert page.stat().st_size < 1_000_000
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    server = PageServer(site)
    # Every other host is unresolvable: anything the page asked of the internet would be a console error.
    assert CHROMIUM is not None
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--enable-logging=stderr", "--v=0",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    try:
        dom = subprocess.run([*flags, "--dump-dom", f"{server.url}/status.html"], capture_output=True, text=True,
                             timeout=120, check=True)  # fmt: skip
        asked = list(server.paths)
        shot = subprocess.run([*flags, f"--screenshot={SCREENSHOTS / 'status.png'}", "--window-size=1200,1600",
                               f"{server.url}/status.html"],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    finally:
        server.close()
    assert (SCREENSHOTS / "status.png").stat().st_size > 10_000, shot.stderr
    assert asked == ["/status.html"]
    assert [line for line in dom.stderr.splitlines() if "CONSOLE" in line] == []
    day = OUTAGE_DAY.date().isoformat()
    before, after = dom.stdout.split(f'data-day="{day}"', 1)
    assert 'fill="#cf222e"' in before.rsplit("<rect", 1)[1]
    assert after.split("</rect>", 1)[0].startswith(f"><title>{day}: ")
    assert "api-health/backend" in dom.stdout
    assert "● UP" in dom.stdout  # the state in words and a symbol, not only a colour
    # The headline is the verdict over everything, not the endpoints': a failing backup and health job make it red.
    heading = dom.stdout.split("<h1>", 1)[1].split("</h1>", 1)[0]
    assert 'data-state="FAILING" style="color:#cf222e">✕ FAILING' in heading


def test_status_page_to_s3_is_private_with_a_presigned_link(filled: tuple[Path, dict[str, str]], bucket: str,
                                                             s3_endpoint: str) -> None:  # fmt: skip
    """`--html s3://…` writes a private HTML object (no public grant) and prints a presigned link that reads it."""
    import boto3
    import httpx

    from tests.conftest import AWS_ENV

    config, env = filled
    env = {**env, **AWS_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint, "OPSKEEPER_STATUS_PAGE_LINK": "1h"}
    result = opskeeper("status", "--config", str(config), "--html", f"s3://{bucket}/ops/status.html", "--now",
                       NOW.isoformat(), env=env)  # fmt: skip
    assert result.code == 0, result.stderr
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    head = client.head_object(Bucket=bucket, Key="ops/status.html")
    assert head["ContentType"] == "text/html; charset=utf-8"
    grants = client.get_object_acl(Bucket=bucket, Key="ops/status.html")["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]  # the owner only: nothing for AllUsers
    assert "AllUsers" not in json.dumps(grants)
    link = result.stdout.strip().split("; link: ", 1)[1]
    assert "Signature=" in link  # SigV4 or V2, as the endpoint takes
    assert "api-health/backend" in httpx.get(link, timeout=10).text
    assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr


@pytest.mark.slow
def test_daemon_regenerates_the_page_after_runs(tmp_path: Path, env: dict[str, str], daemon_factory: Any) -> None:
    """With OPSKEEPER_STATUS_PAGE the daemon writes the page after a run, and at most once a minute."""
    config = write(tmp_path / "jobs.yaml", """\
jobs:
  - {id: beat, kind: command, schedule: every 1s, options: {argv: ["true"]}}
""")  # fmt: skip
    page = tmp_path / "site" / "index.html"
    daemon = daemon_factory(config, {**env, "OPSKEEPER_STATUS_PAGE": str(page)})
    first, event = daemon.wait_for(lambda e: e.get("event") == "status_page.written")
    assert event["target"] == str(page)
    assert "beat" in page.read_text()
    daemon.wait_for(lambda e: e.get("event") == "job.finished", after=first + 1)
    daemon.wait_for(lambda e: e.get("event") == "job.finished", after=first + 2)
    written = [e for e in daemon.events if e.get("event") == "status_page.written"]
    assert len(written) == 1  # three runs within a minute, one page


def test_serve_answers_with_the_page(filled: tuple[Path, dict[str, str]]) -> None:
    """`opskeeper serve --port 0` serves the page fresh from the ledger, and 404s anything else."""
    import httpx

    config, env = filled
    process = subprocess.Popen([sys.executable, "-m", "worker", "serve", "--config", str(config), "--port", "0"],
                               env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "api-health/backend" in page.text
        assert httpx.get(url + "other", timeout=10).status_code == 404
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _chromium_dom(page: Path, tmp_path: Path) -> str:
    """The page as headless Chromium rendered it (the DOM after parsing and layout), served over HTTP."""
    assert CHROMIUM is not None
    server = PageServer(page.parent)
    try:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", f"{server.url}/{page.name}"],
                             capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    finally:
        server.close()
    return dom.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed: apt-get install chromium (as root; .ci/run does)"
)
def test_an_endpoint_up_and_a_job_failing_is_not_green_anywhere(app: Any, tmp_path: Path,
                                                               env: dict[str, str]) -> None:  # fmt: skip
    """A real probe of an UP app and a failing job: `status` text, `--json` and the page rendered in Chromium all
    say FAILING (red), with a needs-attention line for the job; `status` exits 2. Only a WARN: exit 1; all well: 0."""
    from tests.conftest import Reply

    app.routes["/api/health"] = lambda n: Reply(200, b'{"status":"ok"}', {"Content-Type": "application/json"})
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: api-health
    kind: health
    schedule: every 1m
    options: {{endpoints: [{{name: backend, url: "{app.url('/api/health')}"}}]}}
  - id: flaky-script
    kind: command
    schedule: "@daily"
    options: {{shell: true, argv: ["echo cannot reach the billing API >&2; exit 2"]}}
""")  # fmt: skip
    assert opskeeper("run-now", "api-health", "--config", str(config), env=env).code == 0
    assert opskeeper("run-now", "flaky-script", "--config", str(config), env=env).code == 2
    text = opskeeper("status", "--config", str(config), env=env)
    assert text.code == 2
    assert text.stdout.splitlines()[0] == "OVERALL  ✕ FAILING"
    assert "✕ FAILING job flaky-script (since " in text.stdout
    assert "FAIL: shell script exited 2: cannot reach the billing API" in text.stdout
    as_json = opskeeper("status", "--config", str(config), "--json", env=env)
    assert as_json.code == 2
    status = json.loads(as_json.stdout)
    assert status["overall"]["state"] == "FAILING"
    assert [e["state"] for e in status["endpoints"]] == ["UP"]
    assert [i["what"] for i in status["needs_attention"]] == ["job flaky-script"]
    page = tmp_path / "site" / "index.html"
    assert opskeeper("status", "--config", str(config), "--html", str(page), env=env).code == 0
    dom = _chromium_dom(page, tmp_path)
    heading = dom.split("<h1>", 1)[1].split("</h1>", 1)[0]
    assert "✕ FAILING" in heading
    assert "#cf222e" in heading
    assert "UP" not in heading
    attention = dom.split('id="attention"', 1)[1].split("<h2", 1)[0]
    assert "flaky-script" in attention
    assert "cannot reach the billing API" in attention
    jobs = dom.split('id="jobs"', 1)[1]
    cell = jobs.split("flaky-script", 1)[1].split('<span class="state"', 1)[1].split("</span>", 1)[0]
    assert 'style="color:#cf222e"' in cell
    assert "✕ FAIL" in cell
    # The same job, now only warning: attention, exit 1. Then fixed: all well, exit 0.
    config.write_text(config.read_text().replace('exit 2"]}', 'exit 1"], warn_codes: [1]}'))
    assert opskeeper("run-now", "flaky-script", "--config", str(config), env=env).code == 1
    warned = opskeeper("status", "--config", str(config), env=env)
    assert (warned.code, warned.stdout.splitlines()[0]) == (1, "OVERALL  ▲ ATTENTION")
    config.write_text(config.read_text().replace("exit 1", "exit 0"))
    assert opskeeper("run-now", "flaky-script", "--config", str(config), env=env).code == 0
    well = opskeeper("status", "--config", str(config), env=env)
    assert (well.code, well.stdout.splitlines()[:3]) == (0, ["OVERALL  ● OK", "", "Nothing needs attention."])


def test_a_ledger_render_will_wipe_needs_attention_until_fixed(tmp_path: Path, env: dict[str, str]) -> None:
    """On Render with the SQLite ledger outside a persistent disk, `status` names it in needs attention (not only the
    start-up log) and exits 1, though every job is fine."""
    config = write(tmp_path / "jobs.yaml", "jobs:\n  - id: beat\n    kind: command\n    schedule: '@daily'\n"
                                           "    options: {argv: ['true']}\n")  # fmt: skip
    on_render = {**env, "RENDER": "true"}
    assert opskeeper("run-now", "beat", "--config", str(config), env=on_render).code == 0
    result = opskeeper("status", "--config", str(config), "--json", env=on_render)
    assert result.code == 1
    [item] = json.loads(result.stdout)["needs_attention"]
    assert (item["level"], item["what"]) == ("attention", "ledger")
    assert "is not on a persistent disk: Render wipes it on every deploy" in item["message"]
    assert opskeeper("status", "--config", str(config), env=env).code == 0  # not on Render: nothing to fix

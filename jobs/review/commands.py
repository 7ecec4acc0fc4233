"""`opskeeper report weekly`: the weekly review's report on demand."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker import commands
from worker.commands import CliError, Commands

if TYPE_CHECKING:
    from worker.scheduler import Daemon
    from worker.settings import Settings


def register(cli: Commands) -> None:
    """Add `status`, `serve` and `report weekly`, and the daemon's status page publisher."""
    status = cli.add("status", "Every job, endpoint, backup, deploy and dependency report at a glance.", _status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--html",
        metavar="FILE",
        help="write the status page (one self-contained file) to a path or "
        "s3://bucket/key (private; AWS_ENDPOINT_URL_S3 for R2, GCS or MinIO)",
    )
    status.add_argument("--now", help="as of this ISO 8601 time instead of now")
    serve = cli.add("serve", "Serve the status page on this machine, fresh from the ledger at each request.", _serve)
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    report = cli.add("report", "Build a review report now, from the ledger and the configured sources.", _weekly)
    report.add_argument("which", choices=["weekly"], help="which report")
    report.add_argument("--job", help="take the options of this weekly_review job (default: the schedule's first)")
    report.add_argument("--now", help="end the week at this ISO 8601 time instead of now")
    report.add_argument("--json", action="store_true", help="print (or write) the JSON report instead of Markdown")
    report.add_argument("--out", type=Path, metavar="FILE", help="write the report to FILE and print where it is")
    cli.on_daemon(_publish_status)


def _publish_status(daemon: Daemon, settings: Settings) -> None:
    """The daemon regenerates the status page after runs when OPSKEEPER_STATUS_PAGE names a target."""
    if settings.status_page:
        from jobs.review.publish import StatusPublisher

        daemon.publisher = StatusPublisher(settings.status_page, public=settings.status_page_public,
                                           link_for=settings.status_page_link,
                                           warnings=_ledger_warnings(settings))  # fmt: skip


def _ledger_warnings(settings: Settings) -> list[str]:
    """What is wrong with where the ledger is kept: on the page and in `status` until it is fixed."""
    from worker.ledger import lost_on_deploy

    warning = lost_on_deploy(settings.ledger.get_secret_value(), os.environ)
    return [warning] if warning else []


def _status(args: argparse.Namespace, settings: Settings) -> int:
    """Exits with the verdict: 0 all is well, 1 something needs attention, 2 something is down or failing (text and
    `--json`). `--html` exits 0 once the page is written: its job is the page, whatever the page says."""
    from jobs.review.status import build_status
    from worker.reporting.log import use_color

    config = commands.schedule(args, settings)
    now = commands.parse_time(args.now, "--now") if args.now else datetime.now(UTC)
    masks = commands.redactor(settings, config)
    ledger = commands.ledger(settings, masks)
    try:
        status = masks(build_status(config, ledger, now, _ledger_warnings(settings)))
    finally:
        ledger.close()
    code: int = status["overall"]["exit_code"]
    if args.html is not None:
        from jobs.review.page import render
        from jobs.review.publish import write_page

        link = write_page(args.html, render(status), public=settings.status_page_public,
                          link_for=settings.status_page_link)  # fmt: skip
        print(f"status page written to {masks.text(args.html)}" + (f"; link: {link}" if link else ""))
        return 0
    if args.json:
        print(json.dumps(status, indent=2))
        return code
    _print_status(status, use_color(sys.stdout, os.environ))
    return code


def _pit_text(pit: dict[str, Any]) -> str:
    """`captured through …`, or `BROKEN since …: reason`."""
    if pit["broken_since"]:
        return f"BROKEN since {pit['broken_since']}: {pit['reason']}"
    return f"captured through {pit['through']}" if pit["through"] else "nothing captured yet"


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from jobs.review.page import render
    from jobs.review.status import build_status

    config = commands.schedule(args, settings)
    masks = commands.redactor(settings, config)
    warnings = _ledger_warnings(settings)

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/", "/index.html"):
                self._send(404, b"not found\n", "text/plain")
                return
            ledger = commands.ledger(settings, masks)
            try:
                body = render(masks(build_status(config, ledger, datetime.now(UTC), warnings))).encode()
            finally:
                ledger.close()
            self._send(200, body, "text/html; charset=utf-8")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Page)
    print(f"serving the status page at http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _when(moment: object) -> str:
    from jobs.review.page import short_time

    return short_time(moment, "-")


#: The summary column of the jobs table; longer summaries wrap within it (whole words, at most 3 lines).
SUMMARY_WIDTH = 60


def _cell(name: str | None, width: int, colour: bool) -> str:
    """A state as the terminal shows it: symbol and word, padded to `width`, in its colour when colour is on."""
    from jobs.review.verdict import paint, state

    text = f"{state(name).symbol} {(name or 'never').upper()}"
    return paint(name, text, colour) + " " * max(0, width - len(text))


def _print_status(status: dict[str, Any], colour: bool = False) -> None:
    """The terminal view: the verdict and what needs attention first, then one table per part; times in UTC."""
    from worker.job import format_size

    verdict = status["overall"]
    print(f"OVERALL  {_cell(verdict['state'], 0, colour)}".rstrip())
    items = status["needs_attention"]
    print(f"\nNEEDS ATTENTION ({len(items)})" if items else "\nNothing needs attention.")
    for item in items:
        since = f" (since {_when(item['since'])})" if item["since"] else ""
        head = f"  {_cell('FAILING' if item['level'] == 'failing' else 'ATTENTION', 0, colour)} "
        print(head + textwrap.fill(f"{item['what']}{since}: {item['message']}", 100,
                                   subsequent_indent=" " * 14).lstrip())  # fmt: skip
    header = f"{'JOB':<22} {'KIND':<16} {'LAST':<13} {'WHEN':<16} {'LAST SUCCESS':<16} {'NEXT RUN':<16} SUMMARY"
    print("\n" + header)
    indent = " " * header.index("SUMMARY")
    for job in status["jobs"]:
        summary = textwrap.wrap(job["summary"] or "", SUMMARY_WIDTH, max_lines=3, placeholder=" …") or [""]
        print(f"{job['id']:<22} {job['kind']:<16} {_cell(job['last_status'], 13, colour)} "
              f"{_when(job['last_run_at']):<16} {_when(job['last_success_at']):<16} {_when(job['next_run']):<16} "
              f"{summary[0]}")  # fmt: skip
        for line in summary[1:]:
            print(indent + line)
    if status["endpoints"]:
        print(f"\n{'ENDPOINT':<40} {'STATE':<11} {'UP 24H':>9} {'UP 30D':>9}  LAST CHECK")
        for row in status["endpoints"]:
            up24, up30 = row["uptime_24h"], row["uptime_30d"]
            name = f"{row['job_id']}/{row['endpoint']}"
            print(f"{name:<40} {_cell(row['state'], 11, colour)} {'-' if up24 is None else f'{up24:.3f}%':>9} "
                  f"{'-' if up30 is None else f'{up30:.3f}%':>9}  {_when(row['last_check_at'])}")  # fmt: skip
    if status["backups"]:
        print(f"\n{'BACKUP JOB':<22} {'NEWEST':<16} {'SIZE':>10} {'DOCUMENTS':>10}  LAST VERIFIED")
        for row in status["backups"]:
            newest, verified = row["newest"] or {}, row["newest_verified"] or {}
            size = format_size(newest["stored_bytes"]) if newest.get("stored_bytes") is not None else "-"
            proof = (f"{_when(verified['at'])} by {verified['drill']} ({verified['recovery_s']:.1f} s)"
                     if verified.get("at") else "never")  # fmt: skip
            print(f"{row['job_id']:<22} {_when(newest.get('at')):<16} {size:>10} {newest.get('documents') or '-':>10}"
                  f"  {proof}")  # fmt: skip
            for pit in row.get("point_in_time", []):
                print(f"    point in time ({pit['job_id']}): {_pit_text(pit)}")
    if status["deploys"]:
        print(f"\n{'SERVICE':<22} {'NEWEST DEPLOY':<24} LAST GOOD")
        for row in status["deploys"]:
            newest = f"{row['newest']['commit']} ({row['newest']['status']})" if row["newest"] else "-"
            good = row["last_good"] and f"{row['last_good']['commit']} at {_when(row['last_good']['good_at'])}"
            print(f"{row['service']:<22} {newest:<24} {good or 'none'}")
    lead = status["scheduler"]["lease"]
    print(f"\nSCHEDULER  {'led by ' + lead['holder'] + ' (token ' + str(lead['token']) + ')' if lead else 'no leader'}"
          f"; {len(status['scheduler']['instances'])} instance(s) heard from in the last 2 minutes")  # fmt: skip
    if status["dependencies"]:
        print(f"\n{'PROJECT':<22} {'ADVISORIES':<24} {'NODE.JS':<14} MAJORS BEHIND")
        for row in status["dependencies"]:
            advisories = ("not checked" if row["advisories"] is None else
                          ", ".join(f"{n} {s}" for s, n in sorted(row["advisories"].items())) or "none")  # fmt: skip
            node = f"{row['node_line'] or '?'} {row['node'] or ''}".strip()
            print(f"{row['project']:<22} {advisories:<24} {node:<14} {', '.join(row['majors']) or 'none'}")


def _weekly(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.review.markdown import to_markdown
    from jobs.review.weekly import WeeklyReviewOptions, build

    config = commands.schedule(args, settings)
    reviews = [j for j in config.jobs if j.kind == "weekly_review" and (args.job is None or j.id == args.job)]
    if args.job and not reviews:
        raise CliError(f"no weekly_review job {args.job!r} in {config.path}")
    options = reviews[0].options if reviews else WeeklyReviewOptions()
    now = commands.parse_time(args.now, "--now") if args.now else datetime.now(UTC)
    masks = commands.redactor(settings, config)
    ledger = commands.ledger(settings, masks)
    try:
        report = masks(build(options, ledger, {j.id: j for j in config.jobs}, now))
    finally:
        ledger.close()
    text = json.dumps(report, indent=2) + "\n" if args.json else to_markdown(report)
    if args.out is None:
        if not args.json and sys.stdout.isatty():
            # A chart is one long line of SVG: noise on a terminal, so only files get them.
            text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("<svg"))
            text += "\n(charts are left out on a terminal: use --out FILE for the report with its charts)\n"
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    need = len(report["needs_attention"])
    print(f"weekly report written to {args.out} ({need} item(s) need attention, {len(report['gaps'])} gap(s))")
    return 0

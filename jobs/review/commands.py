"""`opskeeper report weekly`: the weekly review's report on demand."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from worker import commands
from worker.commands import CliError, Commands
from worker.settings import Settings


def register(cli: Commands) -> None:
    """Add `report weekly`."""
    report = cli.add("report", "Build a review report now, from the ledger and the configured sources.", _weekly)
    report.add_argument("which", choices=["weekly"], help="which report")
    report.add_argument("--job", help="take the options of this weekly_review job (default: the schedule's first)")
    report.add_argument("--now", help="end the week at this ISO 8601 time instead of now")
    report.add_argument("--json", action="store_true", help="print (or write) the JSON report instead of Markdown")
    report.add_argument("--out", type=Path, metavar="FILE", help="write the report to FILE and print where it is")


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

"""`opskeeper deps`: check local projects now, as the dependencies kind does on its schedule."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker import commands
from worker.commands import EXIT_ERROR, CliError, Commands
from worker.settings import Settings


def register(cli: Commands) -> None:
    """Add `deps PATH...`."""
    deps = cli.add("deps", "Check local projects' dependencies, advisories and Node.js runtime now.", _check,
                   config=False)  # fmt: skip
    deps.add_argument("paths", nargs="+", metavar="PATH", help="project folders (with package.json and a lockfile)")
    deps.add_argument("--registry", default=None, help="npm registry URL (default: the public registry)")
    deps.add_argument("--fail-on", default="high", choices=["info", "low", "moderate", "high", "critical"])
    deps.add_argument("--node-index", default=None, help="Node.js release index URL (index.json or index.tab)")
    deps.add_argument("--node-schedule", default=None, help="Node.js release schedule URL (schedule.json)")
    deps.add_argument("--json", action="store_true", help="print JSON")


def _check(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from jobs.dependencies.job import DependenciesOptions, Project, check_projects, verdict
    from worker.http import HttpError
    from worker.vendors.nodejs import NODE_INDEX, NODE_SCHEDULE
    from worker.vendors.npm import NPM_REGISTRY

    options = DependenciesOptions(
        projects=tuple(Project(name=Path(p).resolve().name, path=str(Path(p).resolve())) for p in args.paths),
        registry=args.registry or NPM_REGISTRY, fail_on_severity=args.fail_on,
        node_index=args.node_index or NODE_INDEX, node_schedule=args.node_schedule or NODE_SCHEDULE,
    )  # fmt: skip
    masks = commands.redactor(settings)
    ledger = commands.ledger(settings, masks)
    today = datetime.now(UTC).date()
    try:
        # The ETag cache lives in the ledger, so the next check asks the registry only for what changed.
        cache = ledger.get_state("(deps)", "registry_cache", {}) or {}
        try:
            reports = asyncio.run(check_projects(options, Path.cwd(), cache, today, os.environ.get("NPM_TOKEN")))
        except HttpError as exc:
            raise CliError(masks.text(str(exc)), EXIT_ERROR) from None
        ledger.set_state("(deps)", "registry_cache", cache)
    finally:
        ledger.close()
    status, summary = verdict(reports, options, today)
    if args.json:
        print(json.dumps({"status": status.value, "projects": [r.public() for r in reports]}, indent=2, default=str))
        return status.exit_code
    _print(reports)
    print(f"{status.value.upper()}: {summary}")
    return status.exit_code


def _print(reports: list[Any]) -> None:
    """The readable table `opskeeper deps` prints on a terminal."""
    for report in reports:
        print(f"{report.name} ({report.path}), lockfile {report.lockfile_version}, {report.resolved_count} packages")
        for problem in report.problems:
            print(f"    problem: {problem}")
        for d in report.direct:
            if d["update"] != "none" or d["deprecated"]:
                note = f"  DEPRECATED: {d['deprecated']}" if d["deprecated"] else ""
                print(f"    {d['name']:<32} {d['locked']:>12} wanted {d['wanted'] or '-':>12} "
                      f"latest {d['latest'] or '-':>12}  {d['update']}{note}")  # fmt: skip
        for a in report.advisories:
            via = ", ".join(" > ".join(chain) for chain in a["via"][:2]) or a["package"]
            fix = f", fixed in {a['fixed_in']}" if a["fixed_in"] else ""
            head = f"    {a['severity'].upper():<9} {a['package']}@{a['version']}"
            print(f"{head}: {a['title']} ({a['url']}){fix}; via {via}")
        if report.node:
            n = report.node
            print(f"    Node.js {n['declared']}: {n['status']}, end of life {n['eol_date']}, "
                  f"latest LTS {n['latest_lts']}" + (f", security release {n['security_release']}"
                                                     if n["security_release"] else ""))  # fmt: skip

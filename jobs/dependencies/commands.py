"""`opskeeper deps`: check local projects now, as the dependencies kind does on its schedule."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker import commands
from worker.commands import EXIT_ERROR, CliError, Commands

if TYPE_CHECKING:
    from worker.settings import Settings


def register(cli: Commands) -> None:
    """Add `deps PATH...`."""
    deps = cli.add("deps", "Check local projects' dependencies, advisories and Node.js runtime now.", _check,
                   config=False)  # fmt: skip
    deps.add_argument("paths", nargs="+", metavar="PATH", help="project folders (with package.json and a lockfile)")
    deps.add_argument("--registry", default=None,
                      help="npm registry URL (default: the project's .npmrc one, else the public one)")  # fmt: skip
    deps.add_argument("--fail-on", default="high", choices=["info", "low", "moderate", "high", "critical"])
    deps.add_argument("--node-index", default=None, help="Node.js release index URL (index.json or index.tab)")
    deps.add_argument("--node-schedule", default=None, help="Node.js release schedule URL (schedule.json)")
    deps.add_argument(
        "--advisories",
        default="registry",
        help="advisory sources, comma-separated: registry, osv (default: registry, with OSV when it fails)",
    )
    deps.add_argument("--osv-url", default=None, help="OSV API URL (default: https://api.osv.dev)")
    deps.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="check every workspace member of the lockfile found at each PATH (as pnpm -r)",
    )
    deps.add_argument("--json", action="store_true", help="print JSON (always a document, also when sources fail)")


def _check(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from pydantic import ValidationError

    from jobs.dependencies.job import check_projects, verdict
    from jobs.dependencies.options import DependenciesOptions, Project
    from worker.job import Status
    from worker.vendors.nodejs import NODE_INDEX, NODE_SCHEDULE
    from worker.vendors.npm import implicit_token
    from worker.vendors.osv import OSV_API

    try:
        options = DependenciesOptions(
            projects=tuple(Project(name=Path(p).resolve().name, path=str(Path(p).resolve())) for p in args.paths),
            **({"registry": args.registry} if args.registry else {}), fail_on_severity=args.fail_on,
            node_index=args.node_index or NODE_INDEX, node_schedule=args.node_schedule or NODE_SCHEDULE,
            advisories=tuple(s.strip() for s in args.advisories.split(",") if s.strip()),
            osv_url=args.osv_url or OSV_API,
        )  # fmt: skip
    except ValidationError as exc:
        raise CliError(
            f"--advisories {args.advisories!r}: each source is registry or osv ({exc.error_count()} error(s))", 64
        ) from None
    masks = commands.redactor(settings)
    ledger = commands.ledger(settings, masks)
    today = datetime.now(UTC).date()
    try:
        # The ETag cache and the last Node.js release data live in the ledger between checks.
        cache = ledger.get_state("(deps)", "cache", {}) or {}
        token = implicit_token(options.registry, os.environ)
        checked = asyncio.run(check_projects(options, Path.cwd(), cache, today, token, recursive=args.recursive))
        ledger.set_state("(deps)", "cache", cache)
    finally:
        ledger.close()
    gaps = [{**g, "error": masks.text(g["error"])} for g in checked.gaps]
    status, summary = verdict(checked.reports, options, today, gaps)
    if checked.nothing_checked:
        status, summary = Status.ERROR, "nothing could be checked: " + "; ".join(g["error"] for g in gaps)
    if args.json:
        print(json.dumps({"status": status.value, **checked.public(), "gaps": gaps}, indent=2, default=str))
    else:
        _print(checked.reports)
        for gap in gaps:
            print(f"not checked: {gap['source']}: {gap['error']} ({gap['effect']})")
        print(f"{status.value.upper()}: {summary}")
    if checked.nothing_checked:
        print(f"opskeeper: {summary}", file=sys.stderr)
        return EXIT_ERROR
    return status.exit_code


def _print(reports: list[Any]) -> None:
    """The readable table `opskeeper deps` prints on a terminal."""
    for report in reports:
        lockfile = f"{report.manager} lockfile {report.lockfile_version}" if report.manager else "no lockfile"
        print(f"{report.name} ({report.path}), {lockfile}, {report.resolved_count} packages")
        if report.lockfile_why and not report.lockfile_why.startswith("the only lockfile"):
            print(f"    read {Path(report.lockfile).name}: {report.lockfile_why}")
        for problem in report.problems:
            print(f"    problem: {problem}")
        for line in report.drift:
            print(f"    out of step: {line}")
        for d in report.direct:
            if d["source"] != "registry":
                print(f"    {d['name']:<32} {d['source']}: {d['specifier']} (not looked up on the registry)")
            elif d.get("latest_needs_node"):
                print(f"    {d['name']:<32} latest {d['latest']} needs Node.js {d['latest_needs_node']}")
        for d in report.direct:
            if d["update"] != "none" or d["deprecated"]:
                note = f"  DEPRECATED: {d['deprecated']}" if d["deprecated"] else ""
                print(f"    {d['name']:<32} {d['locked']:>12} wanted {d['wanted'] or '-':>12} "
                      f"latest {d['latest'] or '-':>12}  {d['update']}{note}")  # fmt: skip
        if not report.advisories_checked:
            print('    advisories not checked: no advisory source answered (see "not checked" below)')
        for a in report.advisories:
            via = ", ".join(" > ".join(chain) for chain in a["via"][:2]) or a["package"]
            fix = f", fixed in {a['fixed_in']}" if a["fixed_in"] else ""
            head = f"    {a['severity'].upper():<9} {a['package']}@{a['version']}"
            print(f"{head}: {a['title']} ({a['url']}){fix}; via {via}")
        if report.node:
            n = report.node
            lines = f" (satisfied by {', '.join(map(str, n['lines']))})" if n.get("lines") else ""
            print(f"    Node.js {n['declared']}{lines}: {n['status']}, end of life {n['eol_date']}, "
                  f"latest LTS {n['latest_lts']}" + (f", security release {n['security_release']}"
                                                     if n["security_release"] else ""))  # fmt: skip
            if n.get("engines_mismatch"):
                print(f"    {n['engines_mismatch']}")

"""`opskeeper backups list|verify|prune` and `opskeeper restore`: the backup kind's commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from worker import commands
from worker.commands import EXIT_BAD, EXIT_ERROR, CliError, Commands

if TYPE_CHECKING:
    from worker.schedule import JobSpec, ScheduleConfig
    from worker.settings import Settings


def register(cli: Commands) -> None:
    """Add `backups ACTION` and `restore`."""
    backups = cli.group("backups", "List, verify and prune MongoDB backups.")
    listing = backups.add("list", "complete backups, newest first", _list)
    listing.add_argument("--job", help="only this backup job's")
    listing.add_argument("--json", action="store_true", help="print JSON")
    verify = backups.add("verify", "check every frame, CRC and count of an archive", _verify)
    verify.add_argument("target", metavar="KEY_OR_PATH", help="a key in a backup job's storage, or a file")
    verify.add_argument("--json", action="store_true", help="print JSON")
    prune = backups.add("prune", "apply each backup job's retention now", _prune)
    prune.add_argument("--job", help="only this backup job")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    restore = cli.add("restore", "Restore a backup (or any mongodump archive) into a server. "
                                 "Refuses to touch a database that holds data unless --drop.", _restore)  # fmt: skip
    restore.add_argument("target", metavar="KEY_OR_PATH", nargs="?",
                         help="a key in a backup job's storage, or a file (or --at with --job)")  # fmt: skip
    restore.add_argument("--at", metavar="TIME", help="a point in time (2026-12-03T09:15:00Z, or latest): the newest "
                         "archive before it, and the captured changes up to and including that second")  # fmt: skip
    restore.add_argument("--job", help="with --at: the backup job whose archives and captured changes to use")
    restore.add_argument("--to", required=True, metavar="URI", help="the server to restore into")
    restore.add_argument("--ns-from", metavar="PATTERN", help="rename namespaces: e.g. 'app.*'")
    restore.add_argument("--ns-to", metavar="PATTERN", help="... to e.g. 'app_restored.*'")
    restore.add_argument(
        "--drop",
        action="store_true",
        help="replace target databases that hold data (only after the whole archive has been read and checked)",
    )
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.add_argument("--dry-run", action="store_true", help="say what would be restored where; change nothing")
    restore.add_argument("--parallel", type=_workers, metavar="N",
                         help="batches inserted at once, as mongorestore's --numParallelCollections")  # fmt: skip


def _workers(text: str) -> int:
    """--parallel: a whole number from 1 to 64 (each worker holds up to two 8 MB batches)."""
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 64")
    return int(text)


def _backup_jobs(config: ScheduleConfig, only: str | None = None) -> list[JobSpec]:
    jobs = [j for j in config.jobs if j.kind == "backup" and only in (None, j.id)]
    if not jobs:
        raise CliError(f"no backup job {only!r} in {config.path}" if only else f"no backup job in {config.path}")
    return jobs


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.backup.catalog import scan

    config = commands.schedule(args, settings)
    jobs = _backup_jobs(config, args.job)
    listings = [scan(job.options.open_storage(), job.id) for job in jobs]
    entries = sorted((e for listing in listings for e in listing.entries), key=lambda e: e.created_at, reverse=True)
    for problem in (p for listing in listings for p in listing.problems):
        print(f"warning: {problem}", file=sys.stderr)
    reach = {key: spans for job in jobs for key, spans in _reach(config, job).items()}
    if args.json:
        print(json.dumps([{**e.public(), "point_in_time": reach.get(e.key, [])} for e in entries], indent=2))
        return 0
    if not entries:
        print("no complete backups yet")
    for e in entries:
        mark = "verified" if e.verified else ""
        print(f"{e.created_at:%Y-%m-%d %H:%M:%S}  {e.job_id:<16} {e.size_bytes / 1e6:9.2f} MB  {e.compression:<5} "
              f"{e.collections:3d} coll {e.documents:10d} docs  {mark:<8} {e.key}")  # fmt: skip
        for span in reach.get(e.key, []):
            broken = f"; BROKEN after that: {span['broken']}" if span["broken"] else ""
            print(f"    point in time ({span['capture_job']}): restorable from {span['from']} through "
                  f"{span['through']}{broken}")  # fmt: skip
    return 0


def _reach(config: ScheduleConfig, job: JobSpec) -> dict[str, list[dict[str, Any]]]:
    """Per archive key, what each capture job following `job` lets `restore --at` reach from it, and the gap that
    ends it, if one does."""
    from jobs.backup.catalog import scan
    from jobs.backup.changes import scan_changes, time_text
    from jobs.backup.pitr import reaches

    storage = job.options.open_storage()
    archives = scan(storage, job.id).entries
    found: dict[str, list[dict[str, Any]]] = {}
    for capture in (c for c in config.jobs if c.kind == "change_capture" and c.options.backup == job.id):
        changes = scan_changes(storage, capture.id)
        for problem in changes.problems:
            print(f"warning: {problem}", file=sys.stderr)
        for r in reaches(archives, changes):
            if r.through < r.consistent_at:
                continue
            gap = next((g for g in changes.gaps if g.since >= r.through), None)
            found.setdefault(r.archive.key, []).append({
                "capture_job": capture.id, "from": time_text(r.consistent_at), "through": time_text(r.through),
                "broken": f"{gap.reason} (since {time_text(gap.since)})" if gap else None,
            })  # fmt: skip
    return found


@contextlib.contextmanager
def _open_archive(args: argparse.Namespace, settings: Settings) -> Iterator[tuple[BinaryIO, dict[str, Any] | None]]:
    """An archive by local path or by key in a backup job's storage, with its manifest if any."""
    from jobs.backup.catalog import MANIFEST, base_of

    path = Path(args.target)
    if path.is_file():
        sibling = path.with_name(Path(base_of(path.name)).name + MANIFEST)
        manifest = json.loads(sibling.read_text(encoding="utf-8")) if sibling.is_file() else None
        with path.open("rb") as stream:
            yield stream, manifest
        return
    config = commands.schedule(args, settings)
    storage = next((s for s in (j.options.open_storage() for j in _backup_jobs(config)) if s.exists(args.target)),
                   None)  # fmt: skip
    if storage is None:
        raise CliError(f"{args.target}: no such file, nor a key in any backup job's storage")
    manifest_key = base_of(args.target) + MANIFEST
    manifest = None
    if storage.exists(manifest_key):
        with storage.open(manifest_key) as stream:
            manifest = json.loads(stream.read())
    with storage.open(args.target) as stream:
        yield stream, manifest


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.backup.restore import RestoreRefusedError, holds_data, may_replace, ns_mapper, occupied_text
    from worker.mongodb import check_uri, connect

    try:
        rename = ns_mapper(args.ns_from, args.ns_to)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        check_uri(args.to, "--to")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    masks = commands.redactor(settings)
    target_display = masks.text(args.to)
    point = _point_in_time(args, settings)
    plan = _plan(args, settings, rename, target_display)
    client: Any = connect(args.to, "opskeeper-restore")
    try:
        targets = sorted({db for _, db, _, _ in plan})
        occupied = [db for db in targets if holds_data(client, db)]
        if args.dry_run:
            note = f"; {occupied_text(occupied)} (needs --drop)" if occupied else ""
            print(f"dry run: nothing was restored{note}")
            return 0
        ask = (lambda prompt: input(prompt).strip()) if sys.stdin.isatty() else None
        try:
            allowed = may_replace(occupied, target_display, drop=args.drop, yes=args.yes, ask=ask)
        except RestoreRefusedError as exc:
            raise CliError(str(exc)) from None
        if not allowed:
            print("cancelled: nothing was changed")
            return 1
        started = datetime.now(UTC)
        report, replayed = _load(args, settings, point, client, rename=rename, replace=frozenset(occupied), masks=masks)
    finally:
        client.close()
    summary = f"restored {report.documents} documents into {len(targets)} database(s) from {args.target}"
    recovery: dict[str, Any] = {}
    if point is not None:
        text, recovery = _recovered(point[1], replayed, args.at)
        summary += text
    ledger = commands.ledger(settings, masks)
    try:
        commands.record(ledger, job_id="(restore)", kind="restore", started=started, summary=summary, details={
            "source": args.target, "target": target_display, "dropped": occupied,
            "namespaces": {n.source: n.documents for n in report.namespaces},
            "skipped": {n.source: n.skipped for n in report.namespaces if n.skipped}, **recovery,
        })  # fmt: skip
    finally:
        ledger.close()
    print(summary + "".join(f"\n    skipped {n.source}: {n.skipped}" for n in report.namespaces if n.skipped))
    return 0


def _load(args: argparse.Namespace, settings: Settings, point: tuple[Any, Any] | None, client: Any, *, rename: Any,
          replace: frozenset[str], masks: Any) -> tuple[Any, Any]:  # fmt: skip
    """Restore the archive, and replay its changes with --at, showing progress: (report, replayed or None)."""
    from jobs.backup.pitr import restore_at
    from jobs.backup.restore import RestoreError, restore
    from worker.reporting.progress import ProgressReport, archive_ticks

    progress = ProgressReport()
    replayed = None
    try:
        # Nothing is dropped before the archive has proven whole: see restore()'s staging.
        if point is not None:  # restore_at opens the plan's archive itself
            storage, chosen = point
            ticks = archive_ticks(progress.update, chosen.archive.manifest, "restore")
            report, replayed = restore_at(storage, chosen, client, rename, replace=replace, parallel=args.parallel,
                                          ticks=ticks)  # fmt: skip
        else:
            with _open_archive(args, settings) as (stream, manifest):
                report = restore(stream, client, rename, archive_ticks(progress.update, manifest, "restore"),
                                 manifest=manifest, replace=replace,
                                 **({"parallel": args.parallel} if args.parallel else {}))  # fmt: skip
    except RestoreError as exc:
        progress.close(finish=False)
        raise CliError(f"restore failed: {masks.text(str(exc))}", EXIT_ERROR) from None
    progress.close()
    return report, replayed


def _recovered(chosen: Any, replayed: Any, asked: str) -> tuple[str, dict[str, Any]]:
    """What a point-in-time restore reached: for the summary line, and for the ledger."""
    from jobs.backup.changes import END_OF_SECOND, time_json, time_text

    point = chosen.until
    reached = (f"{datetime.fromtimestamp(point[0], UTC):%Y-%m-%dT%H:%M:%SZ} (the end of that second)"
               if point[1] == END_OF_SECOND else time_text(point))  # fmt: skip
    last = f"; the last change replayed was at {time_text(replayed.last)}" if replayed.last else ""
    text = (f", then {replayed.events} captured change(s) replayed: recovery point {reached}{last}; the newest point "
            f"available is {time_text(chosen.newest)}")  # fmt: skip
    return text, {"at": asked, "events_replayed": replayed.events, "slices": [s.key for s in chosen.slices],
                  "recovery_point": time_json(point), "newest_available": time_json(chosen.newest)}  # fmt: skip


def _point_in_time(args: argparse.Namespace, settings: Settings) -> tuple[Any, Any] | None:
    """With --at: (storage, plan) for the job's archive and slices that reach it; sets args.target to the archive."""
    from jobs.backup.catalog import scan
    from jobs.backup.changes import scan_chains, time_text
    from jobs.backup.pitr import PointInTimeError, plan

    if args.at is None:
        if args.job is not None:
            raise CliError("--job goes with --at (a point in time); to restore one archive, name it")
        if args.target is None:
            raise CliError("name an archive to restore, or a point in time with --at and --job")
        return None
    if args.target is not None:
        raise CliError("--at picks the archive itself: name the backup job with --job, not an archive")
    at = None if args.at == "latest" else commands.parse_time(args.at, "--at").astimezone(UTC)
    config = commands.schedule(args, settings)
    [job] = _backup_jobs(config, args.job)[:1] if args.job or len(_backup_jobs(config)) == 1 else [None]
    if job is None:
        raise CliError(f"name the backup job with --job: {config.path} has several")
    captures = [j for j in config.jobs if j.kind == "change_capture" and j.options.backup == job.id]
    if not captures:
        raise CliError(f"no change_capture job follows {job.id!r} in {config.path}: it has no point-in-time history")
    storage = job.options.open_storage()
    changes = scan_chains(storage, [c.id for c in captures])
    for problem in changes.problems:
        print(f"warning: {problem}", file=sys.stderr)
    try:
        chosen = plan(scan(storage, job.id).entries, changes, at)
    except PointInTimeError as exc:
        raise CliError(f"cannot restore {job.id} to {args.at}: {exc}") from None
    args.target = chosen.archive.key
    print(f"Point in time {args.at}: {chosen.archive.key} (consistent at {time_text(chosen.reach.consistent_at)}), "
          f"then {len(chosen.slices)} slice(s) of captured changes up to {time_text(chosen.until)}")  # fmt: skip
    return storage, chosen


def _plan(args: argparse.Namespace, settings: Settings, rename: Any, target: str) -> list[tuple[str, str, str, str]]:
    """(source namespace, target db, target collection, type) for each namespace; printed for the operator."""
    from jobs.backup.archive import ArchiveReader
    from jobs.backup.catalog import HashingReader, decompressed

    with _open_archive(args, settings) as (stream, manifest):
        reader = ArchiveReader(decompressed(HashingReader(stream)))
        try:
            reader.read_prelude()
        except Exception as exc:  # noqa: BLE001 - any unreadable archive: one clear line
            raise CliError(f"{args.target}: {exc}", EXIT_BAD) from None
    plan = [(p.ns, *rename(p.db, p.collection), p.type or "collection") for p in reader.preludes if p.db]
    counts = {n["ns"]: n for n in (manifest or {}).get("namespaces", [])}
    print(f"Restore {args.target} into {target}:")
    for ns, db, coll, kind in plan:
        known = counts.get(ns)
        size = f"{known['documents']} documents, {known['bytes'] / 1e6:.1f} MB" if known else "size unknown"
        print(f"    {ns} -> {db}.{coll}  ({kind}; {size})")
    return plan


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.backup.catalog import verify
    from worker.reporting.progress import ProgressReport, archive_ticks

    progress = ProgressReport()
    with _open_archive(args, settings) as (stream, manifest):
        report = verify(stream, manifest, archive_ticks(progress.update, manifest, "verify"))
    progress.close(finish=report.ok)
    if args.json:
        print(json.dumps(report.public(), indent=2))
    else:
        for ns in report.namespaces:
            print(f"{'ok ' if ns['crc_ok'] else 'BAD'} {ns['ns']}: {ns['documents']} documents")
        for problem in report.problems:
            print(f"problem: {problem}")
        for gap in report.unchecked:
            print(f"not checked: {gap}")
        print(("OK" + (f" ({len(report.unchecked)} thing(s) not checked)" if report.unchecked else ""))
              if report.ok else f"FAILED: {len(report.problems)} problem(s)")  # fmt: skip
    return 0 if report.ok else EXIT_BAD


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.backup.catalog import prune

    config = commands.schedule(args, settings)
    ledger = None if args.dry_run else commands.ledger(settings, commands.redactor(settings))
    try:
        for job in _backup_jobs(config, args.job):
            started = datetime.now(UTC)
            pruned = prune(job.options.open_storage(), job.id, job.options.retention, dry_run=args.dry_run)
            gone = pruned.gone
            verb = "would delete" if args.dry_run else "deleted"
            print(f"{job.id}: {verb} {len(gone)} backup(s)")
            for entry in gone:
                print(f"    {entry.key}")
            for key in pruned.orphans:
                print(f"    {key} (an archive without a manifest: a failed run's)")
            for problem in pruned.listing.problems:
                print(f"warning: {problem}", file=sys.stderr)
            if ledger is not None:
                summary = f"pruned {len(gone)} backup(s)"
                commands.record(ledger, job_id=job.id, kind="prune", started=started, summary=summary,
                                details={"deleted": [e.key for e in gone], "orphans": pruned.orphans})  # fmt: skip
    finally:
        if ledger is not None:
            ledger.close()
    return 0

"""`engine: mongodump`: the real mongodump, run once per database, its stream checked and re-emitted.

mongodump's selection options are one `--db` (optionally one `--collection`, or repeated
`--excludeCollection`) per invocation; it has no `--nsInclude` (that is mongorestore's;
shared/docs/reference.md §1a). Checked against mongodump 100.10.0 built from source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from bson import json_util

from jobs.backup.archive import ArchiveError, ArchiveReader, ArchiveWriter, Segment, crc64
from jobs.backup.catalog import digest_batch
from jobs.backup.source import BackupOptions, Namespace
from worker import children
from worker.job import JobContext

MONGODUMP_DIR = "opskeeper-mongodump-"
"""Temp folders holding mongodump's config file are named after the owning process: <prefix><pid>-."""


def mongodump_invocations(client: Any, namespaces: list[Namespace]) -> list[list[str]]:
    """mongodump's own selection options for `namespaces`: one `--db` per database, each run once.

    mongodump has no --nsInclude (that is mongorestore's). A database whose collections are all
    chosen is `--db X`; one chosen collection is `--db X --collection Y`; otherwise
    `--db X` with an `--excludeCollection` for each collection left out.
    """
    by_db: dict[str, set[str]] = {}
    for ns in namespaces:
        by_db.setdefault(ns.db, set()).add(ns.name)
    runs = []
    for db, chosen in sorted(by_db.items()):
        everything = {n for n in client[db].list_collection_names() if not n.startswith("system.")}
        left_out = sorted(everything - chosen)
        if len(chosen) == 1 and left_out:
            runs.append([f"--db={db}", f"--collection={next(iter(chosen))}"])
        else:
            runs.append([f"--db={db}", *(f"--excludeCollection={name}" for name in left_out)])
    return runs


def sweep_mongodump_configs(tmp: str | None = None) -> list[str]:
    """Remove config folders (with the URI inside) that a killed opskeeper left; the removed paths."""
    gone = []
    root = Path(tmp or tempfile.gettempdir())
    for folder in root.glob(f"{MONGODUMP_DIR}*-*"):
        pid = folder.name.removeprefix(MONGODUMP_DIR).split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        gone.append(str(folder))
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dump_with_mongodump(
    ctx: JobContext, client: Any, uri: str, options: BackupOptions, namespaces: list[Namespace], *,
    writer: ArchiveWriter,
) -> list[dict[str, Any]]:  # fmt: skip
    """Run the real `mongodump --archive` once per database and re-emit its segments into our archive.

    Our header and prelude (from the same listing the native engine uses) come first; each run's
    stream is parsed and checked as it passes (frames, CRCs, completeness), and its exit code and
    stderr are reported before anything it wrote. The URI (with its password) goes in a 0600
    config file, never on the command line; mongodump gets a minimal environment and dies with us.
    """
    exe = shutil.which("mongodump")
    if exe is None:
        raise RuntimeError("engine: mongodump, but no mongodump is installed here; use engine: native")
    for folder in sweep_mongodump_configs():
        ctx.log("backup.mongodump_config_removed", folder=folder, reason="left by a process that died")
    wanted = {f"{n.db}.{n.data_collection}": n for n in namespaces}
    totals: dict[str, dict[str, Any]] = {key: {"documents": 0, "bytes": 0, "crc": None, "digest": 0} for key in wanted}
    with tempfile.TemporaryDirectory(prefix=f"{MONGODUMP_DIR}{os.getpid()}-") as tmp:
        config = Path(tmp) / "mongodump.yaml"
        config.touch(mode=0o600)
        config.write_text(f"uri: {json.dumps(uri)}\n", encoding="utf-8")
        for selection in mongodump_invocations(client, namespaces):
            argv = [exe, f"--config={config}", "--archive", f"--readPreference={options.read_preference}", *selection]
            _one_mongodump(ctx, argv, options, writer=writer, totals=totals)
    stats = []
    for key, ns in wanted.items():
        seen = totals[key]
        if not seen.get("ended"):
            raise RuntimeError(f"mongodump did not dump {ns.db}.{ns.name}")
        stats.append({
            "ns": f"{ns.db}.{ns.name}", "data_ns": key, "type": ns.type, "documents": seen["documents"],
            "bytes": seen["bytes"], "crc": f"{seen['crc'] or 0:016x}", "digest": f"{seen['digest']:032x}",
            "options": json.loads(json_util.dumps(ns.options)), "indexes": json.loads(json_util.dumps(ns.indexes)),
        })  # fmt: skip
    return stats


def _one_mongodump(
    ctx: JobContext, argv: list[str], options: BackupOptions, *, writer: ArchiveWriter,
    totals: dict[str, dict[str, Any]],
) -> None:  # fmt: skip
    proc = children.spawn(argv, children.child_env(passed=options.pass_env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
    drain.start()
    failure: Exception | None = None
    reader = ArchiveReader(proc.stdout)  # type: ignore[arg-type]
    try:
        for event in reader.events():
            if ctx.cancel.is_set():
                raise InterruptedError("stopped while mongodump was running")
            seen = totals.get(event.ns)
            if seen is None:  # a namespace we did not list (system.js, say): not ours to store
                continue
            if isinstance(event, Segment):
                seen["digest"], count = digest_batch(seen["digest"], event.data)
                seen["documents"] += count
                if event.data:
                    seen["crc"] = crc64(event.data, seen["crc"])
                seen["bytes"] += len(event.data)
                writer.segment(event.db, event.collection, event.data)
            else:
                if event.crc != (seen["crc"] or 0):
                    raise RuntimeError(f"mongodump's archive failed its own CRC for {event.ns}")
                seen["ended"] = True
                writer.end(event.db, event.collection, seen["crc"] or 0)
    except ArchiveError as exc:
        failure = exc  # reported below, after mongodump's own exit code and words
    finally:
        if proc.poll() is None and (failure is not None or ctx.cancel.is_set()):
            children.kill_group(proc)
        code = proc.wait()
        children.reap(proc)
        drain.join(5)
    if code != 0:
        tail = b"".join(errors).decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"mongodump exited {code}: {' / '.join(tail) or 'no message'}")
    if failure is not None:
        raise RuntimeError(f"mongodump's archive is malformed: {failure}")

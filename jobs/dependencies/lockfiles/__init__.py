"""Lockfiles as the app's package manager wrote them: pnpm, npm, Yarn classic and berry, and bun.

Each becomes the same picture (`model.Lockfile`): per importer (a project folder) its direct
dependencies with their specifier, locked version and source, every resolved package, and
the dependency edges between them, so an advisory on a transitive package can be traced to
the direct dependency that brings it in.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from jobs.dependencies.lockfiles import bun, npm, pnpm, yarn
from jobs.dependencies.lockfiles.model import (
    GROUPS,
    LOCKFILE_NAMES,
    UNSUPPORTED,
    Direct,
    Lockfile,
    LockfileError,
    Package,
    Tracer,
    declared,
    read_manifest,
    spec_source,
)  # fmt: skip

__all__ = ["GROUPS", "LOCKFILE_NAMES", "UNSUPPORTED", "Direct", "Lockfile", "LockfileError", "Package", "Tracer",
           "declared", "read_lockfile", "read_manifest", "spec_source"]  # fmt: skip


def read_lockfile(path: Path) -> Lockfile:
    """Read any lockfile opskeeper knows; LockfileError names the file and why."""
    if path.name in UNSUPPORTED:
        raise LockfileError(f"{path}: {UNSUPPORTED[path.name]} is not read")
    if path.name not in LOCKFILE_NAMES:
        raise LockfileError(f"{path}: not a lockfile opskeeper reads ({', '.join(LOCKFILE_NAMES)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LockfileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise LockfileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        if path.name == "pnpm-lock.yaml":
            return pnpm.read(path, text)
        if path.name == "yarn.lock":
            return yarn.read(path, text)
        if path.name == "bun.lock":
            return bun.read(path, text)
        return npm.read(path, json.loads(text))
    except yaml.YAMLError as exc:
        raise LockfileError(yaml_problem(path, exc)) from None
    except json.JSONDecodeError as exc:
        raise LockfileError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise LockfileError(f"{path}: unexpected lockfile structure ({type(exc).__name__}: {exc})") from None


def yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """`FILE:LINE:COL: not valid YAML: what` in one sentence; PyYAML's own text spans lines, is indented and names
    `"<unicode string>"` instead of the file."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        return f"{where}: not valid YAML: {what}"
    return f"{path}: not valid YAML: {' '.join(str(exc).split())}"

"""The Node.js runtime check against the real release data in tests/fixtures/nodejs."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from jobs.dependencies.node import (
    Declared,
    assess,
    assess_declared,
    codenames,
    declared_runtime,
    parse_index,
    parse_spec,
)
from tests.conftest import FIXTURES

NODEJS = FIXTURES / "nodejs"
SCHEDULE = json.loads((NODEJS / "schedule.json").read_text())
RELEASES = parse_index((NODEJS / "index.tab").read_text())


def test_index_tab_parses_with_lts_and_security_flags() -> None:
    """index.tab: newest first, with LTS codenames and security flags."""
    assert RELEASES[0].text == "v23.1.0"
    v22_11 = next(r for r in RELEASES if r.text == "v22.11.0")
    assert (v22_11.lts, v22_11.released) == ("Jod", date(2024, 10, 29))
    assert any(r.security for r in RELEASES)


@pytest.mark.parametrize(("spec", "line", "exact"), [
    ("20.11.1", 20, (20, 11, 1)), ("v18", 18, None), ("^20.11", 20, None), (">=18", 18, None),
    ("22-alpine", 22, None), ("lts/jod", 22, None), ("lts/iron", 20, None),
])  # fmt: skip
def test_spec_forms(spec: str, line: int, exact: tuple[int, int, int] | None) -> None:
    """Every way projects declare Node.js gives its release line (and the version when pinned)."""
    assert parse_spec(spec, codenames(SCHEDULE)) == (line, exact)


@pytest.mark.parametrize(("line", "today", "status"), [
    (16, date(2026, 11, 26), "eol"), (18, date(2026, 11, 26), "eol"), (20, date(2026, 3, 1), "maintenance"),
    (22, date(2026, 11, 26), "maintenance"), (24, date(2026, 1, 10), "active-lts"), (25, date(2025, 11, 1), "current"),
])  # fmt: skip
def test_status_by_date(line: int, today: date, status: str) -> None:
    """EOL after `end`, maintenance after `maintenance`, active LTS after `lts`, else current."""
    verdict = assess(Declared("x", str(line), line, None), SCHEDULE, RELEASES, today)
    assert verdict.status == status


def test_eol_date_and_latest_lts() -> None:
    """Node 18 on 2026-11-26 is EOL since 2025-04-30; v26 became LTS on 2026-10-28, v24 before that."""
    verdict = assess(Declared("x", "18", 18, None), SCHEDULE, RELEASES, date(2026, 11, 26))
    assert (verdict.status, verdict.eol_date, verdict.latest_lts) == ("eol", "2025-04-30", "v26")
    assert assess(Declared("x", "18", 18, None), SCHEDULE, RELEASES, date(2026, 10, 1)).latest_lts == "v24"
    old = assess(Declared("x", "20", 20, None), SCHEDULE, RELEASES, date(2024, 11, 1))
    assert old.latest_lts == "v22.11.0"  # the index names the newest release of that line


def test_security_release_available_for_a_pinned_version() -> None:
    """A pinned version older than a security release of its line names that release."""
    security = [r for r in RELEASES if r.security]
    newest = security[0]
    older = next(r for r in RELEASES if r.version[0] == newest.version[0] and r.version < newest.version)
    verdict = assess(Declared("x", older.text, older.version[0], older.version), SCHEDULE, RELEASES, newest.released)
    assert verdict.security_release == newest.text


def test_declared_runtime_sources(tmp_path: Path) -> None:
    """.nvmrc wins over the Dockerfile's FROM node line (what runs), which wins over engines.node (a range)."""
    (tmp_path / "package.json").write_text('{"engines": {"node": ">=20.11.0"}}')
    assert declared_runtime(tmp_path) == Declared("package.json engines.node", ">=20.11.0", 20, None)
    (tmp_path / "Dockerfile").write_text("FROM --platform=linux/amd64 node:18-alpine AS build\n")
    assert declared_runtime(tmp_path) == Declared("Dockerfile FROM node", "18-alpine", 18, None)
    (tmp_path / ".nvmrc").write_text("v22.3.0\n")
    assert declared_runtime(tmp_path) == Declared(".nvmrc", "v22.3.0", 22, (22, 3, 0))


def test_workspace_fixture_declares_its_runtime() -> None:
    """The workspace-v6 fixture's .node-version is read."""
    folder = FIXTURES / "pnpm" / "workspace-v6"
    found = declared_runtime(folder)
    assert found is not None
    assert (found.source, found.spec) == (".node-version", (folder / ".node-version").read_text().strip())
    assert found.line == int(found.spec.lstrip("v").split(".")[0])


def test_last_dockerfile_stage_is_the_runtime(tmp_path: Path) -> None:
    """In a multi-stage Dockerfile the last `FROM node:` is the image that runs."""
    (tmp_path / "Dockerfile").write_text("FROM node:22 AS build\nRUN npm ci\nFROM docker.io/library/node:18-alpine\n")
    assert declared_runtime(tmp_path) == Declared("Dockerfile FROM node", "18-alpine", 18, None)


def test_root_dockerfile_counts_for_a_subproject(tmp_path: Path) -> None:
    """client/ with no runtime file of its own runs on the repository root's Dockerfile (node:18-alpine)."""
    (tmp_path / "Dockerfile").write_text("FROM node:18-alpine\nCOPY client server ./\n")
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "package.json").write_text('{"engines": {"node": ">=16"}}')
    assert declared_runtime(tmp_path / "client", root=tmp_path) == Declared("./Dockerfile FROM node", "18-alpine",
                                                                            18, None)  # fmt: skip
    assert declared_runtime(tmp_path / "client") == Declared("package.json engines.node", ">=16", 16, None)


def test_package_json_with_a_byte_order_mark(tmp_path: Path) -> None:
    """A package.json that starts with a UTF-8 BOM is read, not a crash."""
    (tmp_path / "package.json").write_bytes(b'\xef\xbb\xbf{"engines": {"node": "^22.11.0"}}')
    assert declared_runtime(tmp_path) == Declared("package.json engines.node", "^22.11.0", 22, None)


@pytest.mark.parametrize(("spec", "lines", "status"), [
    (">= 20.4.0", (26, 24, 22), "active-lts"),
    ("^20.19.0 || >=22.12.0", (26, 24, 22), "active-lts"),
    ("^22.11.0", (22,), "maintenance"),
    ("^20.11.0", (), "eol"),
    (">=18 <21", (), "eol"),
])  # fmt: skip
def test_engines_range_is_judged_by_the_lines_that_satisfy_it(spec: str, lines: tuple[int, ...], status: str) -> None:
    """An engines range is as supported as the best supported, released line in it (on 2026-12-01)."""
    schedule = json.loads((NODEJS / "node-releases-schedule.json").read_text())
    verdict = assess_declared(Declared("package.json engines.node", spec, 0, None), schedule, [], date(2026, 12, 1))
    assert verdict.lines == lines
    assert verdict.status == status

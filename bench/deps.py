"""Dependency check speed, printed as one JSON line.

Checks tests/fixtures/pnpm/mern-v9 (client and server) against a local registry that
serves the recorded package documents (tests/fixtures/registry) and npm's recorded bulk
advisory answer, adding 50 ms to every response. Reported: the cold wall time, the warm
wall time with the registry cache kept from the cold run (this stand-in sends ETags and no
Cache-Control, so every document is revalidated), and the cold time at concurrency 1 (the
sequential baseline). Targets (issue 6): cold < 5 s; warm < 1 s.

Then the comparisons with pnpm (issue 31): `opskeeper deps` against `pnpm outdated` on the
MERN server (tests/fixtures/pnpm/mern-v9/server, 10 direct dependencies), and `opskeeper deps
-r` against `pnpm -r outdated` on every importer of tests/fixtures/pnpm/large-workspace-v9
(102 of them). Both tools ask one local registry stand-in adding the same delay per request;
it serves real documents, fetched once from the npm registry into var/bench-registry/ (so
both see the same answers, and later runs need no network), with the npm registry's caching
headers (`Cache-Control: public, max-age=300`, ETag, Last-Modified), and counts its answers
to each run (200, 304, POST), so the figures say what each tool asked. Each tool runs in its own
process, cold (opskeeper with a fresh ledger, pnpm with a fresh cache) and then warm (the
same ledger, the same cache), timed with its peak RSS (/usr/bin/time); the outdated
packages both report are compared. pnpm is taken from PATH, else from var/tools (`make
tools`); without it the ratios are left out, with the reason. Targets (issue 31): one
project ≤ 0.8x pnpm cold and ≤ 0.5x warm; the workspace ≤ 1.0x cold and ≤ 0.8x warm; peak
RSS ≤ 0.5x pnpm's.

Usage: python bench/deps.py [--delay 0.05] [--repeat 3] [--skip-workspace]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.dependencies.job import check_projects  # noqa: E402
from jobs.dependencies.options import DependenciesOptions, Project  # noqa: E402
from tests.fixtures.registry_standin import LoopbackServer, bulk_refusal  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
RECORDED = ROOT / "tests" / "fixtures" / "registry"


def serve(delay: float) -> LoopbackServer:
    bulk = json.loads((FIXTURES / "npm-audit" / "audit-omit" / "bulk.json").read_text())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(delay)
            if self.path.startswith("/node/"):
                return self._send(200, (FIXTURES / "nodejs" / self.path.rsplit("/", 1)[1]).read_bytes(), "")
            path = RECORDED / f"{quote(unquote(self.path.lstrip('/')), safe='')}.json"
            if not path.is_file():
                return self._send(404, b"{}", "")
            body = json.dumps(json.loads(path.read_text())["doc"]).encode()
            etag = f'"{hashlib.sha1(body).hexdigest()}"'  # noqa: S324 - a cache key, not security
            if self.headers.get("If-None-Match") == etag:
                return self._send(304, b"", etag)
            return self._send(200, body, etag)

        def do_POST(self) -> None:
            time.sleep(delay)
            asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if bulk_refusal(asked):  # as strict as the registry
                return self._send(400, json.dumps({"error": bulk_refusal(asked)}).encode(), "")
            return self._send(200, json.dumps({k: v for k, v in bulk.items() if k in asked}).encode(), "")

        def _send(self, status: int, body: bytes, etag: str) -> None:
            self.send_response(status)
            if etag:
                self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return LoopbackServer(Handler)


MIRROR = ROOT / "var" / "bench-registry"
UPSTREAM = "https://registry.npmjs.org"


def serve_mirror(delay: float) -> tuple[LoopbackServer, dict[str, int], dict[str, str]]:
    """A registry stand-in serving real documents, each fetched from the npm registry once and kept on disk; the
    count of its answers by kind (200, 304, POST), so a run can show which tool asked it for what; and its
    policy, whose `cache_control` a run may change.

    It answers with the headers the npm registry sends with a package document (`Cache-Control: public,
    max-age=300`, an `ETag`, a `Last-Modified`), and a 304 to a request whose `If-None-Match` or
    `If-Modified-Since` matches, so each tool may use the registry's caching rules as it would for real.
    """
    import httpx

    bulk = json.loads((FIXTURES / "npm-audit" / "audit-omit" / "bulk.json").read_text())
    MIRROR.mkdir(parents=True, exist_ok=True)
    upstream = httpx.Client(base_url=UPSTREAM, timeout=60)
    lock = threading.Lock()
    answers = {"200": 0, "304": 0, "POST": 0}
    policy = {"cache_control": "public, max-age=300"}  # a run may set "no-cache", to time revalidation alone

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(delay)
            if self.path.startswith("/node/"):
                return self._send(200, (FIXTURES / "nodejs" / self.path.rsplit("/", 1)[1]).read_bytes())
            name = unquote(self.path.split("?", 1)[0].lstrip("/"))
            kept = MIRROR / f"{quote(name, safe='')}.json"
            if not kept.is_file():
                with lock:
                    answer = upstream.get("/" + quote(name, safe="@"),
                                          headers={"Accept": "application/vnd.npm.install-v1+json"})  # fmt: skip
                if answer.status_code != 200:
                    return self._send(answer.status_code, b'{"error": "Not found"}')
                kept.write_bytes(answer.content)
            body = kept.read_bytes()
            etag = f'"{hashlib.sha1(body).hexdigest()}"'  # noqa: S324 - a cache key, as the registry sends one
            modified = formatdate(kept.stat().st_mtime, usegmt=True)
            cached = {"ETag": etag, "Last-Modified": modified, "Cache-Control": policy["cache_control"]}
            same = self.headers.get("If-None-Match") == etag or (
                "If-None-Match" not in self.headers and self.headers.get("If-Modified-Since") == modified
            )
            with lock:
                answers["304" if same else "200"] += 1
            if same:
                return self._send(304, b"", headers=cached)
            return self._send(200, body, "application/vnd.npm.install-v1+json", cached)

        def do_POST(self) -> None:
            time.sleep(delay)
            with lock:
                answers["POST"] += 1
            asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if bulk_refusal(asked):  # as strict as the registry
                return self._send(400, json.dumps({"error": bulk_refusal(asked)}).encode())
            return self._send(200, json.dumps({k: v for k, v in bulk.items() if k in asked}).encode())

        def _send(self, status: int, body: bytes, kind: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:  # fmt: skip
            self.send_response(status)
            self.send_header("Content-Type", kind)
            for header, value in (headers or {}).items():
                self.send_header(header, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return LoopbackServer(Handler), answers, policy


def measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one command in its own process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%M", *command], env=env, cwd=cwd,
                              capture_output=True, text=True, check=False)  # fmt: skip
        wall = time.perf_counter() - started
        rss_kb = int(report.read().strip().splitlines()[-1])
    return wall, rss_kb / 1024, done.stdout


def pnpm() -> str | None:
    found = shutil.which("pnpm")
    local = ROOT / "var" / "tools" / "node_modules" / ".bin" / "pnpm"
    return found or (str(local) if local.is_file() else None)


def compare(delay: float, fixture: Path, member: str | None, recursive: bool, repeat: int) -> dict[str, Any]:
    """`opskeeper deps` against `pnpm outdated` on one tree, each in its own process, against one registry
    stand-in: `repeat` rounds, each of a cold run of either (a fresh ledger, a fresh pnpm cache) and then a warm
    one (the same ledger, the same cache), interleaved so that the machine's noise falls on both; medians.

    opskeeper's warm run finds its documents still fresh (max-age=300) and asks for none; so it is also timed
    revalidating every document (from a ledger whose answers said `no-cache`), as pnpm's warm run does."""
    server, answers, policy = serve_mirror(delay)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    tool = pnpm()

    def asked(run: Any, name: str) -> tuple[float, float, str, dict[str, int]]:
        """`run(name)`, with the stand-in's answers to it (the runs are one after the other)."""
        before = dict(answers)
        wall, rss, out = run(name)
        return wall, rss, out, {k: answers[k] - before[k] for k in answers}

    with tempfile.TemporaryDirectory(prefix="opskeeper-bench-") as scratch:
        base = Path(scratch)
        tree = base / "tree"
        shutil.copytree(fixture, tree)
        folder = tree / member if member else tree
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("npm_config", "https_proxy"))}
        env["HOME"] = str(base)  # no ~/.npmrc of the machine's
        ours = [str(Path(sys.executable).with_name("opskeeper")), "deps", *(["-r"] if recursive else []), str(folder),
                "--registry", url, "--node-index", f"{url}/node/index.tab", "--node-schedule",
                f"{url}/node/schedule.json", "--json"]  # fmt: skip

        def opskeeper(run: str) -> tuple[float, float, str]:
            return measured(ours, {**env, "OPSKEEPER_LEDGER": str(base / f"ledger-{run}.db")}, ROOT)

        def theirs(run: str) -> tuple[float, float, str]:
            # pnpm 11 and later read pnpm_config_* and no longer npm_config_* (seen with pnpm 12.23: with only
            # npm_config_registry set, it asked registry.npmjs.org); both are set, for older and newer pnpm.
            settings = {
                "registry": f"{url}/",
                "cache_dir": str(base / f"cache-{run}"),
                "store_dir": str(base / f"store-{run}"),
                "manage_package_manager_versions": "false",
                "pm_on_fail": "ignore",  # pnpm 11+'s name for it: the workspace pins pnpm@11.9.0
            }
            config = {f"{prefix}_config_{k}": v for k, v in settings.items() for prefix in ("npm", "pnpm")}
            command = [tool or "pnpm", *(["-r"] if recursive else []), "outdated", "--format", "json"]
            return measured(command, {**env, **config}, folder)

        opskeeper("fill")  # fills the mirror with every document either tool asks for (untimed)
        if tool:
            theirs("fill")
        policy["cache_control"] = "no-cache"
        opskeeper("revalidating")  # a ledger of answers that must be revalidated before each use (untimed)
        runs: dict[str, list[tuple[float, float, str, dict[str, int]]]] = {}
        for i in range(repeat):
            policy["cache_control"] = "no-cache"  # its 304s say so again, so each of its runs revalidates
            runs.setdefault("revalidating", []).append(asked(opskeeper, "revalidating"))
            policy["cache_control"] = "public, max-age=300"
            runs.setdefault("cold", []).append(asked(opskeeper, f"{i}"))
            if tool:
                runs.setdefault("pnpm_cold", []).append(asked(theirs, f"{i}"))
            runs.setdefault("warm", []).append(asked(opskeeper, f"{i}"))  # the cold run's ledger
            if tool:
                runs.setdefault("pnpm_warm", []).append(asked(theirs, f"{i}"))  # its metadata cache

        def median(kind: str, what: int = 0) -> float:
            return statistics.median(r[what] for r in runs[kind])

        reports = json.loads(runs["cold"][-1][2])["projects"]
        figures: dict[str, Any] = {"importers": len(reports), "repeat": repeat}
        for kind, label in (("cold", "opskeeper"), ("warm", "opskeeper_warm"),
                            ("revalidating", "opskeeper_revalidating")):  # fmt: skip
            figures |= {f"{label}_s": round(median(kind), 2), f"{label}_rss_mb": round(median(kind, 1), 1),
                        f"{label}_answers": runs[kind][-1][3]}  # fmt: skip
        if tool:
            if not runs["pnpm_cold"][-1][3]["200"]:  # it asked another registry: its times would not be comparable
                raise SystemExit(f"pnpm did not ask the registry stand-in at {url} ({runs['pnpm_cold'][-1][3]})")
            pwall, pwarm = median("pnpm_cold"), median("pnpm_warm")
            figures |= {"pnpm_s": round(pwall, 2), "pnpm_rss_mb": round(median("pnpm_cold", 1), 1),
                        "pnpm_warm_s": round(pwarm, 2), "pnpm_answers": runs["pnpm_cold"][-1][3],
                        "pnpm_warm_answers": runs["pnpm_warm"][-1][3],
                        "ratio_vs_pnpm": round(median("cold") / pwall, 2),
                        "warm_ratio_vs_pnpm": round(median("warm") / pwarm, 2),
                        "revalidating_ratio_vs_pnpm_warm": round(median("revalidating") / pwarm, 2),
                        "rss_ratio_vs_pnpm": round(median("cold", 1) / median("pnpm_cold", 1), 2)}  # fmt: skip
            figures |= agreement(reports, json.loads(runs["pnpm_cold"][-1][2] or "{}"))
        else:
            figures["pnpm"] = "not on PATH nor in var/tools: make tools"
    server.shutdown()
    return figures


def agreement(reports: list[dict[str, Any]], outdated: dict[str, Any]) -> dict[str, int]:
    """How many of the outdated packages `pnpm outdated --format json` lists opskeeper reports alike."""
    # pnpm -r keys its answer `name@current` (` (dev)` for devDependencies); pnpm outdated keys it by name.
    ours = {(d.get("package") or d["name"], d["locked"], d["latest"])
            for r in reports for d in r["direct"] if d["update"] != "none"}  # fmt: skip
    theirs = {(key.split(" ")[0].removesuffix(f"@{info['current']}"), info["current"], info["latest"])
              for key, info in outdated.items()
              if info.get("latest") and info["current"] != info["latest"]}  # fmt: skip
    return {"outdated_packages_pnpm": len(theirs), "outdated_packages_agree": len(ours & theirs)}


def timed(options: DependenciesOptions, cache: dict[str, Any]) -> float:
    started = time.perf_counter()
    asyncio.run(check_projects(options, ROOT, cache, datetime.now(UTC).date()))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--skip-workspace", action="store_true", help="only the MERN figures (no network needed)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each comparison (medians are printed)")
    args = parser.parse_args()
    server = serve(args.delay)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    projects = tuple(Project(name=p, path=str(FIXTURES / "pnpm" / "mern-v9" / p)) for p in ("client", "server"))

    def options(concurrency: int) -> DependenciesOptions:
        return DependenciesOptions(projects=projects, registry=url, node_index=f"{url}/node/index.tab",
                                   node_schedule=f"{url}/node/schedule.json", concurrency=concurrency)  # fmt: skip

    cache: dict[str, Any] = {}
    cold = timed(options(16), cache)
    warm = timed(options(16), cache)
    sequential = timed(options(1), {})
    server.shutdown()
    figures: dict[str, Any] = {
        "bench": "deps", "delay_ms": args.delay * 1000, "packages_cached": len(cache.get("registry", {})),
        "cold_s": round(cold, 3), "warm_s": round(warm, 3), "sequential_cold_s": round(sequential, 3),
        "speedup_vs_sequential": round(sequential / cold, 1),
    }  # fmt: skip
    if not args.skip_workspace:
        figures["server_vs_pnpm"] = compare(args.delay, FIXTURES / "pnpm" / "mern-v9", "server", recursive=False,
                                            repeat=args.repeat)  # fmt: skip
        figures["workspace_vs_pnpm"] = compare(
            args.delay, FIXTURES / "pnpm" / "large-workspace-v9", None, recursive=True, repeat=args.repeat
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Dependency check speed, printed as one JSON line.

Checks tests/fixtures/pnpm/mern-v9 (client and server) against a local registry that
serves the recorded package documents (tests/fixtures/registry) and npm's recorded bulk
advisory answer, adding 50 ms to every response. Reported: the cold wall time, the warm
wall time with the ETag cache kept from the cold run, and the cold time at concurrency 1
(the sequential baseline). Targets (issue 6): cold < 5 s; warm < 1 s.

Then the comparisons with pnpm (issue 31): `opskeeper deps` against `pnpm outdated` on the
MERN server (tests/fixtures/pnpm/mern-v9/server, 10 direct dependencies), and `opskeeper deps
-r` against `pnpm -r outdated` on every importer of tests/fixtures/pnpm/large-workspace-v9
(102 of them). Both tools ask one local registry stand-in adding the same delay per request;
it serves real documents, fetched once from the npm registry into var/bench-registry/ (so
both see the same answers, and later runs need no network). Each tool runs in its own
process, cold (opskeeper with a fresh ledger, pnpm with a fresh cache) and then warm (the
same ledger, the same cache), timed with its peak RSS (/usr/bin/time); the outdated
packages both report are compared. pnpm is taken from PATH, else from var/tools (`make
tools`); without it the ratios are left out, with the reason. Targets (issue 31): one
project ≤ 0.8x pnpm cold and ≤ 0.5x warm; the workspace ≤ 1.0x cold and ≤ 0.8x warm; peak
RSS ≤ 0.5x pnpm's.

Usage: python bench/deps.py [--delay 0.05] [--skip-workspace]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
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


def serve_mirror(delay: float) -> LoopbackServer:
    """A registry stand-in serving real documents, each fetched from the npm registry once and kept on disk."""
    import httpx

    bulk = json.loads((FIXTURES / "npm-audit" / "audit-omit" / "bulk.json").read_text())
    MIRROR.mkdir(parents=True, exist_ok=True)
    upstream = httpx.Client(base_url=UPSTREAM, timeout=60)
    lock = threading.Lock()

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
            if self.headers.get("If-None-Match") == etag:
                return self._send(304, b"", etag=etag)
            return self._send(200, body, "application/vnd.npm.install-v1+json", etag)

        def do_POST(self) -> None:
            time.sleep(delay)
            asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if bulk_refusal(asked):  # as strict as the registry
                return self._send(400, json.dumps({"error": bulk_refusal(asked)}).encode())
            return self._send(200, json.dumps({k: v for k, v in bulk.items() if k in asked}).encode())

        def _send(self, status: int, body: bytes, kind: str = "application/json", etag: str = "") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            if etag:
                self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return LoopbackServer(Handler)


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


def compare(delay: float, fixture: Path, member: str | None, recursive: bool) -> dict[str, Any]:
    """`opskeeper deps` against `pnpm outdated` on one tree, each cold (a fresh ledger, a fresh pnpm cache) and
    then warm (the same ones again), each in its own process, against one registry stand-in."""
    server = serve_mirror(delay)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    tool = pnpm()
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

        def opskeeper(run: int) -> tuple[float, float, str]:
            return measured(ours, {**env, "OPSKEEPER_LEDGER": str(base / f"ledger-{run}.db")}, ROOT)

        def theirs(run: int) -> tuple[float, float, str]:
            config = {"npm_config_registry": f"{url}/", "npm_config_cache_dir": str(base / f"cache-{run}"),
                      "npm_config_store_dir": str(base / f"store-{run}"),
                      "npm_config_manage_package_manager_versions": "false"}  # fmt: skip
            command = [tool or "pnpm", *(["-r"] if recursive else []), "outdated", "--format", "json"]
            return measured(command, {**env, **config}, folder)

        opskeeper(0)  # fills the mirror with every document either tool asks for (untimed)
        if tool:
            theirs(0)
        wall, rss, out = opskeeper(1)
        reports = json.loads(out)["projects"]
        warm, warm_rss, _ = opskeeper(1)  # the same ledger: the ETag cache of the first run, as a weekly job has
        figures: dict[str, Any] = {"importers": len(reports), "opskeeper_s": round(wall, 2),
                                   "opskeeper_rss_mb": round(rss, 1), "opskeeper_warm_s": round(warm, 2),
                                   "opskeeper_warm_rss_mb": round(warm_rss, 1)}  # fmt: skip
        if tool:
            pwall, prss, pout = theirs(1)
            pwarm, _, _ = theirs(1)  # the same metadata cache
            figures |= {"pnpm_s": round(pwall, 2), "pnpm_rss_mb": round(prss, 1), "pnpm_warm_s": round(pwarm, 2),
                        "ratio_vs_pnpm": round(wall / pwall, 2), "warm_ratio_vs_pnpm": round(warm / pwarm, 2),
                        "rss_ratio_vs_pnpm": round(rss / prss, 2)}  # fmt: skip
            outdated = json.loads(pout or "{}")
            # pnpm -r keys its answer `name@current` (` (dev)` for devDependencies); pnpm outdated keys it by name.
            ours_pairs = {(d.get("package") or d["name"], d["locked"], d["latest"])
                          for r in reports for d in r["direct"] if d["update"] != "none"}  # fmt: skip
            their_pairs = {
                (key.split(" ")[0].removesuffix(f"@{info['current']}"), info["current"], info["latest"])
                for key, info in outdated.items()
                if info.get("latest") and info["current"] != info["latest"]
            }
            figures |= {"outdated_packages_pnpm": len(their_pairs),
                        "outdated_packages_agree": len(ours_pairs & their_pairs)}  # fmt: skip
        else:
            figures["pnpm"] = "not on PATH nor in var/tools: make tools"
    server.shutdown()
    return figures


def timed(options: DependenciesOptions, cache: dict[str, Any]) -> float:
    started = time.perf_counter()
    asyncio.run(check_projects(options, ROOT, cache, datetime.now(UTC).date()))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--skip-workspace", action="store_true", help="only the MERN figures (no network needed)")
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
        figures["server_vs_pnpm"] = compare(args.delay, FIXTURES / "pnpm" / "mern-v9", "server", recursive=False)
        figures["workspace_vs_pnpm"] = compare(
            args.delay, FIXTURES / "pnpm" / "large-workspace-v9", None, recursive=True
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

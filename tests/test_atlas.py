"""`atlas_backup` against a local server that really does HTTP Digest and answers in Atlas's shapes."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jobs.backup.atlas import judge
from tests.conftest import opskeeper, write
from worker.job import Status

PUBLIC, PRIVATE = "abcdefgh", "0f1e2d3c-private-key-4b5a69788796"
REALM = "MMS Public API"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - RFC 7616 Digest uses MD5


class AtlasServer:
    """Answers /api/atlas/v2/groups/{g}/clusters/{c}/backup/{schedule,snapshots} behind Digest auth."""

    def __init__(self) -> None:
        self.schedule: dict[str, Any] = {}
        self.snapshots: dict[str, Any] = {"results": []}
        self.accepts: list[str] = []
        self.nonces: set[str] = set()
        atlas = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                header = self.headers.get("Authorization", "")
                if not header.startswith("Digest ") or not atlas.valid(header, "GET", self.path):
                    nonce = secrets.token_hex(16)
                    atlas.nonces.add(nonce)
                    self.send_response(401)
                    self.send_header(
                        "WWW-Authenticate",
                        f'Digest realm="{REALM}", domain="", nonce="{nonce}", algorithm=MD5, qop="auth"',
                    )
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                atlas.accepts.append(self.headers.get("Accept", ""))
                body = atlas.schedule if self.path.endswith("/schedule") else atlas.snapshots
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def valid(self, header: str, method: str, path: str) -> bool:
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header[len("Digest ") :]))
        if fields.get("username") != PUBLIC or fields.get("nonce") not in self.nonces or fields.get("uri") != path:
            return False
        ha1, ha2 = md5(f"{PUBLIC}:{REALM}:{PRIVATE}"), md5(f"{method}:{path}")
        expected = md5(f"{ha1}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:{fields['qop']}:{ha2}")
        return fields.get("response") == expected

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/atlas/v2"


@pytest.fixture
def atlas() -> Iterator[AtlasServer]:
    server = AtlasServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def policy(*frequencies: str) -> dict[str, Any]:
    """A backup schedule answer in the Admin API's shape."""
    return {"clusterName": "Cluster0", "referenceHourOfDay": 3, "policies": [{"id": "p1", "policyItems": [
        {"id": f"i{n}", "frequencyInterval": 1, "frequencyType": f, "retentionUnit": "days", "retentionValue": 7}
        for n, f in enumerate(frequencies)]}]}  # fmt: skip


def snapshot(hours_ago: float, status: str = "completed") -> dict[str, Any]:
    created = (datetime.now(UTC) - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"id": f"snap-{hours_ago}", "createdAt": created, "status": status, "snapshotType": "scheduled",
            "cloudProvider": "AWS", "replicaSetName": "Cluster0-shard-0"}  # fmt: skip


def config(tmp_path: Path, atlas: AtlasServer) -> Path:
    return write(
        tmp_path / "jobs.yaml",
        f"""\
jobs:
  - id: atlas-backups
    kind: atlas_backup
    schedule: "@daily"
    options: {{group_id: 5f1a2b3c4d5e6f7a8b9c0d1e, cluster: Cluster0, api_url: "{atlas.url}"}}
""",
    )


@pytest.fixture
def atlas_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "ATLAS_PUBLIC_KEY": PUBLIC, "ATLAS_PRIVATE_KEY": PRIVATE}


def test_daily_policy_and_recent_snapshot_is_ok(tmp_path: Path, atlas: AtlasServer, atlas_env: dict[str, str]) -> None:
    """Through real Digest auth: a daily policy and a 5-hour-old snapshot is OK, with versioned Accept headers."""
    atlas.schedule = policy("hourly", "daily", "weekly")
    atlas.snapshots = {"results": [snapshot(29), snapshot(5), snapshot(0.1, "inProgress")], "totalCount": 3}
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=atlas_env)
    out = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert (result.code, out["status"]) == (0, "ok"), out
    assert out["summary"].startswith("Cluster0: daily, hourly, weekly backups; newest snapshot 5h")
    assert atlas.accepts == ["application/vnd.atlas.2024-08-05+json", "application/vnd.atlas.2023-01-01+json"]
    assert PRIVATE not in result.stdout + result.stderr


def test_stale_snapshot_and_weekly_only_policy_fail(
    tmp_path: Path, atlas: AtlasServer, atlas_env: dict[str, str]
) -> None:
    """Only a weekly policy item and a 3-day-old newest snapshot: FAIL naming both problems."""
    atlas.schedule = policy("weekly")
    atlas.snapshots = {"results": [snapshot(72), snapshot(1, "failed")]}
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=atlas_env)
    out = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert result.code == 2
    assert out["summary"] == ("Cluster0: no daily backup in the policy (has: weekly); "
                              "newest completed snapshot is 3d old (max 1d2h)")  # fmt: skip


def test_wrong_key_is_a_clear_error(tmp_path: Path, atlas: AtlasServer, env: dict[str, str]) -> None:
    """A private key the server does not accept: error naming the Atlas API, no key in the output."""
    bad = {**env, "ATLAS_PUBLIC_KEY": PUBLIC, "ATLAS_PRIVATE_KEY": "not-the-right-private-key"}
    result = opskeeper("run-now", "atlas-backups", "--config", str(config(tmp_path, atlas)), "--json", env=bad)
    assert result.code == 3
    assert f"Atlas API key rejected by {atlas.url} (HTTP 401)" in result.stdout
    assert "not-the-right-private-key" not in result.stdout + result.stderr


def test_judge_without_snapshots() -> None:
    """No snapshot at all is a failure even with a daily policy."""
    outcome = judge("c", policy("daily"), {"results": []}, datetime.now(UTC), timedelta(hours=26))
    assert (outcome.status, outcome.summary) == (Status.FAIL, "c: no completed snapshot")

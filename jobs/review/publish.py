"""Where the status page goes: a local file (written whole, then renamed into place) or an S3 object.

An S3 page is written private (the bucket's default ACL) unless the operator asks for
`public-read`; a presigned link valid for a while can be logged instead, so the page can
be shared without making the bucket public. The daemon publishes after runs, at most once
per `every`, and a failure to publish is a log line, never a failed run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobs.review.page import render
from jobs.review.status import build_status
from worker.ledger import Ledger
from worker.schedule import ScheduleConfig
from worker.storage.s3 import S3Storage

HTML = "text/html; charset=utf-8"


def write_page(target: str, html: str, *, public: bool = False, link_for: timedelta | None = None,
               storage: S3Storage | None = None) -> str | None:  # fmt: skip
    """Write the page to `target` (a path or `s3://bucket/key`); returns a presigned link when `link_for` asks.

    An S3 page goes through the backups' own S3Storage (retries; the checksum settings GCS and R2
    need behind AWS_ENDPOINT_URL_S3); pass `storage` to reuse one client between writes.
    """
    if not target.startswith("s3://"):
        path = Path(target.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # A reader (a web server, `opskeeper serve`) never sees half a page: write beside it, then rename.
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=".status-", delete=False) as f:
            f.write(html)
        Path(f.name).replace(path)
        return None
    bucket, key = page_key(target)
    storage = storage or page_storage(bucket)
    storage.put(key, html.encode(), ContentType=HTML, CacheControl="no-cache", **({"ACL": "public-read"} if public
                                                                                     else {}))  # fmt: skip
    return storage.link(key, link_for) if link_for is not None else None


def page_key(target: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://` target; a folder gets index.html. Pure."""
    parts = urlsplit(target)
    key = parts.path.lstrip("/")
    return parts.netloc, key + "index.html" if not key or key.endswith("/") else key


def page_storage(bucket: str) -> S3Storage:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return S3Storage(f"s3://{bucket}/", endpoint_url=endpoint)


class StatusPublisher:
    """Regenerates the status page after runs, at most once per `every`."""

    def __init__(self, target: str, *, every: timedelta = timedelta(minutes=1), public: bool = False,
                 link_for: timedelta | None = None, warnings: Sequence[str] = ()) -> None:  # fmt: skip
        self.target, self.every, self.public, self.link_for = target, every, public, link_for
        self.warnings = list(warnings)  # standing conditions the page names until fixed (`build_status`)
        self._last: datetime | None = None
        # One S3 client for the daemon's life, not one a minute.
        self._storage = page_storage(page_key(target)[0]) if target.startswith("s3://") else None

    def due(self, now: datetime) -> bool:
        return self._last is None or now - self._last >= self.every

    def publish(self, config: ScheduleConfig, ledger: Ledger, masks: Any, now: datetime) -> str | None:
        """Build and write the page now; returns the presigned link, if one was asked for."""
        self._last = now
        page = render(masks(build_status(config, ledger, now, self.warnings)))
        return write_page(self.target, page, public=self.public, link_for=self.link_for, storage=self._storage)

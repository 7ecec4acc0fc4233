"""The npm registry (reference §5): package metadata (with an ETag cache kept between runs) and bulk advisories."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import ijson
import orjson

from worker.http import DEFAULT_TIMEOUT, AsyncApi, HttpError

NPM_REGISTRY = "https://registry.npmjs.org"
ABBREVIATED = "application/vnd.npm.install-v1+json"


def trim(doc: dict[str, Any]) -> dict[str, Any]:
    """What opskeeper keeps of a package document: dist-tags, versions with deprecations, the latest's engines.node.

    Idempotent (a trimmed document trims to itself), so recorded documents can be served as they are.
    """
    versions = doc.get("versions") or {}
    tags = doc.get("dist-tags") or {}
    kept: dict[str, dict[str, Any]] = {}
    for v, info in versions.items():
        entry: dict[str, Any] = {"deprecated": info["deprecated"]} if info.get("deprecated") else {}
        engines = info.get("engines")
        if v == tags.get("latest") and isinstance(engines, dict) and engines.get("node"):
            entry["engines"] = {"node": str(engines["node"])}
        kept[v] = entry
    return {"name": doc.get("name"), "dist-tags": tags, "versions": kept}


#: Above this size a document is read as a stream: its parsed form would be ~6 times as large (next: 21 MB of
#: JSON is ~120 MB of Python objects), and a 512 MB worker may read several at once.
STREAM_ABOVE = 2 * 1024 * 1024
_DIST_TAGS = re.compile(rb'"dist-tags"\s*:\s*(\{[^{}]*\})')


def read_document(content: bytes, name: str, stream_above: int = STREAM_ABOVE) -> dict[str, Any]:
    """The trimmed document from a registry answer's bytes; a large one is read version by version (ijson).

    Raises ValueError when the bytes are not a package document.
    """
    if len(content) <= stream_above:
        doc = orjson.loads(content)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return trim(doc)
    tags_at = _DIST_TAGS.search(content)  # a flat object of strings near the top of every document
    if tags_at is None:
        raise ValueError("no dist-tags")
    tags = orjson.loads(tags_at[1])
    versions: dict[str, Any] = {}
    try:
        for version, info in ijson.kvitems(io.BytesIO(content), "versions", use_float=True):
            versions[version] = {k: info[k] for k in ("deprecated", "engines") if k in info}
    except ijson.JSONError as exc:
        raise ValueError(str(exc)) from None
    return trim({"name": name, "dist-tags": tags, "versions": versions})


def latest_node(doc: Mapping[str, Any]) -> str | None:
    """The `engines.node` range of a (trimmed) document's latest version, if it states one."""
    latest = (doc.get("dist-tags") or {}).get("latest")
    node = (((doc.get("versions") or {}).get(latest) or {}).get("engines") or {}).get("node")
    return str(node) if node else None


class Registry:
    """An npm registry client for one run; `cache` maps package -> {etag, doc} across runs.

    Requests run concurrently, at most `concurrency` at a time. A package whose document
    cannot be fetched is left out of `packages()`'s answer and named in `failures`, so one
    bad package or a flaky mirror costs that package, not the report.
    """

    def __init__(self, base: str, token: str | None, cache: MutableMapping[str, Any], concurrency: int = 16,
                 timeout: timedelta = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        self.base = base.rstrip("/")
        self.cache = cache
        self.failures: dict[str, HttpError] = {}
        # The gate, not the pool, makes requests wait: a wait for a pooled connection would
        # count against the request's own timeout.
        self._gate = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._api = AsyncApi("npm registry", self.base, credential="the registry token (NPM_TOKEN)", headers=headers,
                             timeout=timeout, concurrency=concurrency)  # fmt: skip

    async def close(self) -> None:
        """Release the connection pool."""
        await self._api.close()

    async def packages(self, names: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """Trimmed documents of these packages (None for a package the registry does not have)."""
        unique = sorted(set(names))
        found = await asyncio.gather(*(self._package(name) for name in unique), return_exceptions=True)
        answer: dict[str, dict[str, Any] | None] = {}
        for name, doc in zip(unique, found, strict=True):
            if isinstance(doc, HttpError):
                self.failures[name] = doc
            elif isinstance(doc, BaseException):
                raise doc
            else:
                answer[name] = doc
        return answer

    async def _package(self, name: str) -> dict[str, Any] | None:
        cached = self.cache.get(name)
        headers = {"Accept": ABBREVIATED}
        if cached and cached.get("etag"):
            headers["If-None-Match"] = cached["etag"]
        async with self._gate:
            response = await self._api.get("/" + quote(name, safe="@"), headers=headers, allow=(404,))
        if response.status_code == 304 and cached:
            return dict(cached["doc"])
        if response.status_code == 404:
            return None
        try:
            doc = read_document(response.content, name)
        except ValueError as exc:
            raise HttpError(self._api.vendor, "GET", response.request.url, f"not a package document ({exc})") from None
        if response.headers.get("etag"):
            self.cache[name] = {"etag": response.headers["etag"], "doc": doc}
        return doc

    async def advisories(self, packages: dict[str, set[str]]) -> dict[str, list[dict[str, Any]]]:
        """The bulk advisory answer for these package versions (packages without advisories left out)."""
        if not packages:
            return {}
        body = {name: sorted(versions) for name, versions in sorted(packages.items())}
        async with self._gate:
            response = await self._api.request("POST", "/-/npm/v1/security/advisories/bulk", json=body)
        answer: dict[str, list[dict[str, Any]]] = self._api.parse(response)
        return answer

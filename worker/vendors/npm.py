"""The npm registry (reference §5): package metadata (with an ETag cache kept between runs) and bulk advisories."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import ijson
import orjson

from worker.http import DEFAULT_TIMEOUT, AsyncApi, HttpError

if TYPE_CHECKING:
    from jobs.dependencies.npmrc import NpmConfig

NPM_REGISTRY = "https://registry.npmjs.org"
ABBREVIATED = "application/vnd.npm.install-v1+json"


def trim(doc: dict[str, Any]) -> dict[str, Any]:
    """What opskeeper keeps of a package document: what npm's choice of a version reads (dist-tags; per version
    its deprecation and `engines.node`; the publication times, which only the full document carries).

    Idempotent (a trimmed document trims to itself), so recorded documents can be served as they are.
    """
    versions = doc.get("versions") or {}
    tags = doc.get("dist-tags") or {}
    kept: dict[str, dict[str, Any]] = {}
    for v, info in versions.items():
        entry: dict[str, Any] = {"deprecated": info["deprecated"]} if info.get("deprecated") else {}
        engines = info.get("engines")
        if isinstance(engines, dict) and engines.get("node"):
            entry["engines"] = {"node": str(engines["node"])}
        kept[v] = entry
    trimmed = {"name": doc.get("name"), "dist-tags": tags, "versions": kept}
    times = doc.get("time")
    if isinstance(times, dict):
        trimmed["time"] = {v: str(t) for v, t in times.items() if v in kept}
    return trimmed


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
    times: dict[str, Any] | None = None
    try:
        for version, info in ijson.kvitems(io.BytesIO(content), "versions", use_float=True):
            versions[version] = {k: info[k] for k in ("deprecated", "engines") if k in info}
        if b'"time"' in content:
            times = dict(ijson.kvitems(io.BytesIO(content), "time"))
    except ijson.JSONError as exc:
        raise ValueError(str(exc)) from None
    return trim({"name": name, "dist-tags": tags, "versions": versions, **({"time": times} if times else {})})


def implicit_token(registry: str, environ: Mapping[str, str]) -> str | None:
    """$NPM_TOKEN for `registry` when nothing else says where it belongs: only to a registry other than the public
    one (a private mirror the job names). A token meant for a scope's registry is keyed to it in .npmrc, and the
    public registry must not receive it."""
    public = registry.rstrip("/") == NPM_REGISTRY
    return None if public else environ.get("NPM_TOKEN") or None


def latest_node(doc: Mapping[str, Any]) -> str | None:
    """The `engines.node` range of a (trimmed) document's latest version, if it states one."""
    latest = (doc.get("dist-tags") or {}).get("latest")
    node = (((doc.get("versions") or {}).get(latest) or {}).get("engines") or {}).get("node")
    return str(node) if node else None


class Registry:
    """An npm registry client for one run; `cache` maps package -> {etag, doc, full} across runs.

    Each package is fetched from the registry npm would ask for it (`config`: its scope's, else the
    default `base`), with the credentials npm would send there and nowhere else; `token` (the job's
    `registry_token`) is sent to `base` only, when the configuration keys none to it, and so is
    `fallback_token` ($NPM_TOKEN) when the configuration keys no credentials anywhere. `full` asks for
    the full documents (with publication times, for a release-age cutoff) instead of the abbreviated ones. Requests run
    concurrently, at most `concurrency` at a time; a cached document is revalidated with its ETag (a
    304 carries no body). A package whose document cannot be fetched is left out of `packages()`'s
    answer and named in `failures`, so one bad package or a flaky mirror costs that package, not the report.
    """

    def __init__(self, base: str, token: str | None, cache: MutableMapping[str, Any], concurrency: int = 16,
                 timeout: timedelta = DEFAULT_TIMEOUT, *, config: NpmConfig | None = None, full: bool = False,
                 fallback_token: str | None = None) -> None:  # fmt: skip
        self.base = base.rstrip("/")
        self.cache = cache
        self.config = config
        self.full = full
        self.failures: dict[str, HttpError] = {}
        self._token = token
        # $NPM_TOKEN, when the job names no token: only where the configuration keys no credentials at all, as a
        # configuration that does key some says where each token goes.
        self._fallback = None if config is not None and config.secrets else fallback_token
        self._timeout = timeout
        self._concurrency = concurrency
        # The gate, not the pool, makes requests wait: a wait for a pooled connection would
        # count against the request's own timeout.
        self._gate = asyncio.Semaphore(concurrency)
        self._apis: dict[str, AsyncApi] = {}
        self._api = self._api_for(self.base)

    def _api_for(self, base: str) -> AsyncApi:
        """One connection pool per registry, carrying that registry's credentials."""
        base = base.rstrip("/")
        if base not in self._apis:
            headers = self.config.auth_headers(base + "/") if self.config is not None else {}
            credential = "the credentials .npmrc keys to this registry" if headers else None
            token = self._token or self._fallback
            if not headers and token and base == self.base:
                headers, credential = {"Authorization": f"Bearer {token}"}, "the registry token (NPM_TOKEN)"
            credential = credential or "a request without credentials (.npmrc keys none to this registry)"
            self._apis[base] = AsyncApi("npm registry", base, credential=credential, headers=headers,
                                        timeout=self._timeout, concurrency=self._concurrency)  # fmt: skip
        return self._apis[base]

    def base_for(self, name: str) -> str:
        """The registry `name` is fetched from."""
        return (self.config.registry_for(name) if self.config is not None else self.base).rstrip("/")

    async def close(self) -> None:
        """Release the connection pools."""
        for api in self._apis.values():
            await api.close()

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
        base = self.base_for(name)
        key = name if base == self.base else f"{base}/{name}"  # the same name may be another registry's package
        cached = self.cache.get(key)
        headers = {} if self.full else {"Accept": ABBREVIATED}
        if cached and cached.get("etag") and (cached.get("full", False) or not self.full):
            headers["If-None-Match"] = cached["etag"]
        api = self._api_for(base)
        async with self._gate:
            response = await api.get("/" + quote(name, safe="@"), headers=headers, allow=(404,))
        if response.status_code == 304 and cached:
            return dict(cached["doc"])
        if response.status_code == 404:
            return None
        try:
            doc = read_document(response.content, name)
        except ValueError as exc:
            raise HttpError(api.vendor, "GET", response.request.url, f"not a package document ({exc})") from None
        if response.headers.get("etag"):
            self.cache[key] = {"etag": response.headers["etag"], "doc": doc, "full": self.full}
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

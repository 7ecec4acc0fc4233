"""The npm registry (reference §5): package metadata (cached between runs by the registry's own caching rules)
and bulk advisories."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

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
    return _trimmed(doc.get("name"), doc.get("dist-tags"),
                    ((v, info.get("deprecated"), info.get("engines")) for v, info in versions.items()),
                    doc.get("time"))  # fmt: skip


def _trimmed(name: Any, tags: Any, versions: Iterable[tuple[str, Any, Any]], times: Any) -> dict[str, Any]:
    """The trimmed form, from the name, dist-tags, (version, deprecated, engines) and times: what trim() and
    read_document() both give."""
    kept: dict[str, dict[str, Any]] = {}
    for v, deprecated, engines in versions:
        entry: dict[str, Any] = {"deprecated": deprecated} if deprecated else {}
        if isinstance(engines, dict) and engines.get("node"):
            entry["engines"] = {"node": str(engines["node"])}
        kept[v] = entry
    trimmed = {"name": name, "dist-tags": tags or {}, "versions": kept}
    if isinstance(times, dict):
        trimmed["time"] = {v: str(t) for v, t in times.items() if v in kept}
    return trimmed


class _Version(msgspec.Struct):
    """What trim() keeps of a version; every other field of the answer is skipped unread."""

    deprecated: Any = None
    engines: Any = None  # an object with `node`, or (in old packages) a list of names


class _Document(msgspec.Struct):
    name: Any = None
    dist_tags: Any = msgspec.field(name="dist-tags", default=None)
    versions: dict[str, _Version | None] | None = None
    time: Any = None


_DECODER = msgspec.json.Decoder(_Document)


def read_document(content: bytes) -> dict[str, Any]:
    """The trimmed document (as trim() gives it) from a registry answer's bytes.

    Decoded by msgspec against the few fields trim() keeps: the rest (dependencies, dist, scripts: most of
    a document) is skipped unread, so nothing but the trimmed form is ever built. Against parsing the whole
    document and trimming it (orjson), measured on the 174 real documents of bench/deps.py's workspace: 0.10 s
    against 0.79 s for all of them, and next's 20 MB document read with 1.3 MB of objects against 315 MB,
    so no document needs reading as a stream in a 512 MB worker.

    Raises ValueError (msgspec's DecodeError) when the bytes are not a package document.
    """
    doc = _DECODER.decode(content)
    versions = ((v, info.deprecated if info else None, info.engines if info else None)
                for v, info in (doc.versions or {}).items())  # fmt: skip
    return _trimmed(doc.name, doc.dist_tags, versions, doc.time)


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


def freshness(headers: Mapping[str, str]) -> float | None:
    """Seconds from now that an answer stays fresh, by its `Cache-Control` and `Age` as a private cache reads
    them (RFC 9111 §4.2; `s-maxage` is for shared caches); None when it may not be stored at all (`no-store`).

    The npm registry sends `public, max-age=300` with a package document, and its CDN an `Age`: a copy
    fetched within that time is what a request would be answered with. Pure.
    """
    directives: dict[str, str] = {}
    for part in headers.get("cache-control", "").split(","):
        name, _, value = part.strip().partition("=")
        directives[name.lower()] = value.strip().strip('"')
    if "no-store" in directives:
        return None
    if "no-cache" in directives:
        return 0.0
    try:
        max_age = int(directives.get("max-age", "0"))
        age = int(headers.get("age", "0"))
    except ValueError:  # a malformed lifetime is no lifetime (RFC 9111 §4.2.1: treat as stale)
        return 0.0
    return float(max(0, max_age - max(0, age)))


class Registry:
    """An npm registry client for one run; `cache` maps package -> {etag, last_modified, fresh_until, doc, full}
    across runs.

    Each package is fetched from the registry npm would ask for it (`config`: its scope's, else the
    default `base`), with the credentials npm would send there and nowhere else; `token` (the job's
    `registry_token`) is sent to `base` only, when the configuration keys none to it, and so is
    `fallback_token` ($NPM_TOKEN) when the configuration keys no credentials anywhere. `full` asks for
    the full documents (with publication times, for a release-age cutoff) instead of the abbreviated ones. Requests run
    concurrently, at most `concurrency` at a time. A cached document is used as the registry's caching rules
    allow: as it is while its answer's `max-age` (less its `Age`) has not run out by `clock`, else revalidated
    with `If-None-Match` and `If-Modified-Since` (a 304 carries no body); `answers` counts each kind (fetched,
    revalidated, fresh), for the report to say how current its documents are. The cache keeps the trimmed
    documents, not the answers: a full document can be tens of MB, its trimmed form a fraction (this is why
    it is not an HTTP cache library's, which stores bodies). A package whose document cannot be fetched is left
    out of `packages()`'s answer and named in `failures`, so one bad package or a flaky mirror costs that
    package, not the report.
    """

    def __init__(self, base: str, token: str | None, cache: MutableMapping[str, Any], concurrency: int = 16,
                 timeout: timedelta = DEFAULT_TIMEOUT, *, config: NpmConfig | None = None, full: bool = False,
                 fallback_token: str | None = None, clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.base = base.rstrip("/")
        self.answers = {"fetched": 0, "revalidated": 0, "fresh": 0}
        self._clock = clock
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

    @staticmethod
    def total_answers(clients: Iterable[Registry]) -> dict[str, int]:
        """The clients' answers by kind, each client counted once."""
        unique = {id(c): c for c in clients}.values()
        return {kind: sum(c.answers[kind] for c in unique) for kind in ("fetched", "revalidated", "fresh")}

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
        usable = cached if cached and (cached.get("full", False) or not self.full) else None
        if usable and self._clock() < usable.get("fresh_until", 0):
            self.answers["fresh"] += 1
            return dict(usable["doc"])
        headers = {} if self.full else {"Accept": ABBREVIATED}
        if usable and usable.get("etag"):
            headers["If-None-Match"] = usable["etag"]
        if usable and usable.get("last_modified"):
            headers["If-Modified-Since"] = usable["last_modified"]
        api = self._api_for(base)
        async with self._gate:
            response = await api.get("/" + quote(name, safe="@"), headers=headers, allow=(404,))
        lifetime = freshness(response.headers)
        if response.status_code == 304 and usable:
            self.answers["revalidated"] += 1
            usable["fresh_until"] = self._clock() + lifetime if lifetime else 0  # a 304 renews the lifetime
            return dict(usable["doc"])
        if response.status_code == 404:
            return None
        try:
            doc = read_document(response.content)
        except ValueError as exc:
            raise HttpError(api.vendor, "GET", response.request.url, f"not a package document ({exc})") from None
        self.answers["fetched"] += 1
        validators = {k: response.headers[h] for k, h in (("etag", "etag"), ("last_modified", "last-modified"))
                      if response.headers.get(h)}  # fmt: skip
        if lifetime is None or not (validators or lifetime):
            self.cache.pop(key, None)  # no-store, or nothing to revalidate it with and no lifetime: not kept
        else:
            self.cache[key] = {**validators, "doc": doc, "full": self.full,
                               "fresh_until": self._clock() + lifetime if lifetime else 0}  # fmt: skip
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

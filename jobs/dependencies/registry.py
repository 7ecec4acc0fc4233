"""The npm registry: package metadata (with an ETag cache kept between runs) and bulk advisories.

Requests run concurrently (bounded), 429 and 5xx are retried with backoff, and an outage
is a RegistryError naming the registry, never a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

import httpx

ABBREVIATED = "application/vnd.npm.install-v1+json"
_ATTEMPTS = 4


class RegistryError(Exception):
    """The registry did not answer usefully; the message names it."""


def trim(doc: dict[str, Any]) -> dict[str, Any]:
    """What opskeeper keeps of a package document: dist-tags, versions, deprecations."""
    versions = doc.get("versions") or {}
    return {
        "name": doc.get("name"),
        "dist-tags": doc.get("dist-tags") or {},
        "versions": {v: ({"deprecated": info["deprecated"]} if info.get("deprecated") else {})
                     for v, info in versions.items()},
    }  # fmt: skip


class Registry:
    """An npm registry client for one run; `cache` maps package -> {etag, doc} across runs."""

    def __init__(self, base: str, token: str | None, cache: MutableMapping[str, Any], concurrency: int = 16,
                 timeout: float = 30.0) -> None:  # fmt: skip
        self.base = base.rstrip("/")
        self.cache = cache
        self._gate = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=timeout, trust_env=False,
                                         limits=httpx.Limits(max_connections=concurrency))  # fmt: skip

    async def close(self) -> None:
        await self._client.aclose()

    async def packages(self, names: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """Trimmed documents of these packages (None for a package the registry does not have)."""
        unique = sorted(set(names))
        found = await asyncio.gather(*(self._package(name) for name in unique))
        return dict(zip(unique, found, strict=True))

    async def _package(self, name: str) -> dict[str, Any] | None:
        cached = self.cache.get(name)
        headers = {"Accept": ABBREVIATED}
        if cached and cached.get("etag"):
            headers["If-None-Match"] = cached["etag"]
        response = await self._request("GET", "/" + quote(name, safe="@"), headers=headers)
        if response.status_code == 304 and cached:
            return dict(cached["doc"])
        if response.status_code == 404:
            return None
        doc = trim(response.json())
        if response.headers.get("etag"):
            self.cache[name] = {"etag": response.headers["etag"], "doc": doc}
        return doc

    async def advisories(self, packages: dict[str, set[str]]) -> dict[str, list[dict[str, Any]]]:
        """The bulk advisory answer for these package versions (packages without advisories left out)."""
        if not packages:
            return {}
        body = {name: sorted(versions) for name, versions in sorted(packages.items())}
        response = await self._request("POST", "/-/npm/v1/security/advisories/bulk", json=body)
        if response.status_code >= 400:
            raise RegistryError(f"{self.base}: the advisory endpoint answered HTTP {response.status_code}")
        answer: dict[str, list[dict[str, Any]]] = response.json()
        return answer

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with self._gate:
            for attempt in range(_ATTEMPTS):
                try:
                    response = await self._client.request(method, path, **kwargs)
                except httpx.TransportError as exc:
                    if attempt + 1 == _ATTEMPTS:
                        raise RegistryError(f"registry {self.base} unreachable: {exc}") from None
                    await asyncio.sleep(0.5 * 2**attempt)
                    continue
                if response.status_code in (401, 403):
                    raise RegistryError(f"registry {self.base} refused the request (HTTP {response.status_code}): "
                                        "check the registry token")  # fmt: skip
                if response.status_code == 429 or response.status_code >= 500:
                    if attempt + 1 == _ATTEMPTS:
                        raise RegistryError(f"registry {self.base}{path}: HTTP {response.status_code} "
                                            f"after {_ATTEMPTS} attempts")  # fmt: skip
                    delay = response.headers.get("retry-after", "")
                    await asyncio.sleep(min(float(delay), 30.0) if delay.isdigit() else 0.5 * 2**attempt)
                    continue
                return response
        raise AssertionError("unreachable")

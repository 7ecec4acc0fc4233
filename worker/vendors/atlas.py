"""MongoDB Atlas Admin API v2 (reference §7), with an API key (HTTP Digest) or a service account.

Lists are read to their end, as the published description (mongodb/atlas-sdk-go
`openapi/atlas-api-transformed.yaml`) pages them: `pageNum` from 1, `itemsPerPage` at most 500,
`totalCount` with `includeCount`; the order is not promised, so nothing may assume the first page
holds the newest. A list longer than `max_pages` pages is returned as read, marked incomplete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from worker.http import DEFAULT_TIMEOUT, Api

ATLAS_API = "https://cloud.mongodb.com/api/atlas/v2"
AtlasAuth = Literal["digest", "service_account"]
_CREDENTIALS = {"digest": ("ATLAS_PUBLIC_KEY", "ATLAS_PRIVATE_KEY"),
                "service_account": ("ATLAS_CLIENT_ID", "ATLAS_CLIENT_SECRET")}  # fmt: skip


#: The most items Atlas gives in one page (its default is 100).
ITEMS_PER_PAGE = 500
#: Clusters whose backups are sharded snapshots, read from `…/backup/snapshots/shardedClusters`.
SHARDED = frozenset({"SHARDED", "GEOSHARDED"})


@dataclass(frozen=True)
class Listing:
    """A whole list, or as much of it as `max_pages` pages held (`complete` False: `total` says how many)."""

    results: list[Any]
    total: int | None
    complete: bool


class AtlasError(Exception):
    """Atlas cannot be asked: a credential is missing."""


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise AtlasError(f"{name} is not set")
    return value


class AtlasAPI:
    """GET calls on the Admin API, each with its versioned Accept header."""

    def __init__(self, api_url: str = ATLAS_API, auth: AtlasAuth = "digest",
                 timeout: timedelta = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        first, second = (_env(name) for name in _CREDENTIALS[auth])
        credential = " / ".join(_CREDENTIALS[auth])
        import httpx

        if auth == "digest":
            self.api = Api("Atlas API", api_url, credential=credential, auth=httpx.DigestAuth(first, second),
                           timeout=timeout)  # fmt: skip
        else:
            bearer = {"Authorization": f"Bearer {self._token(api_url, first, second, timeout, credential)}"}
            self.api = Api("Atlas API", api_url, credential=credential, headers=bearer, timeout=timeout)

    @staticmethod
    def _token(api_url: str, client_id: str, secret: str, timeout: timedelta, credential: str) -> str:
        import httpx

        root = str(httpx.URL(api_url).copy_with(path="/"))
        with Api("Atlas API", root, credential=credential, timeout=timeout) as api:
            response = api.request("POST", "/api/oauth/token", auth=(client_id, secret),
                                   data={"grant_type": "client_credentials"})  # fmt: skip
            return str(api.parse(response)["access_token"])

    def __enter__(self) -> AtlasAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()

    def get(self, path: str, version: str, params: dict[str, Any] | None = None) -> Any:
        """GET `path` under the API root, as API version `version` (e.g. 2023-01-01)."""
        return self.api.get_json(path, headers={"Accept": f"application/vnd.atlas.{version}+json"}, params=params)

    def post(self, path: str, version: str, body: dict[str, Any]) -> Any:
        """POST `body` to `path`, as API version `version` (its request and answer media type)."""
        kind = f"application/vnd.atlas.{version}+json"
        response = self.api.request("POST", path, json=body, headers={"Accept": kind, "Content-Type": kind})
        return self.api.parse(response)

    def results(self, path: str, version: str, *, max_pages: int = 20) -> Listing:
        """Every item of a paged list (`results`), page by page until a short page or `totalCount`."""
        found: list[Any] = []
        total: int | None = None
        for page in range(1, max_pages + 1):
            answer = self.get(path, version, {"pageNum": page, "itemsPerPage": ITEMS_PER_PAGE, "includeCount": "true"})
            batch = list(answer.get("results") or [])
            found += batch
            total = answer["totalCount"] if isinstance(answer.get("totalCount"), int) else total
            if len(batch) < ITEMS_PER_PAGE or (total is not None and len(found) >= total):
                return Listing(found, total, complete=True)
        return Listing(found, total, complete=False)

    def snapshots(self, group_id: str, cluster: str) -> tuple[str, Listing]:
        """(the cluster's type, its snapshots): a sharded cluster's come from the sharded clusters' endpoint,
        which the description gives no paging, a replica set's are paged."""
        kind = str(self.get(f"/groups/{group_id}/clusters/{cluster}", "2024-08-05").get("clusterType") or "REPLICASET")
        base = f"/groups/{group_id}/clusters/{cluster}/backup/snapshots"
        if kind.upper() in SHARDED:
            answer = self.get(f"{base}/shardedClusters", "2023-01-01")
            results = list(answer.get("results") or [])
            return kind, Listing(results, answer.get("totalCount"), complete=True)
        return kind, self.results(base, "2023-01-01")

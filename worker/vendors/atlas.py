"""MongoDB Atlas Admin API v2 (reference §7), with an API key (HTTP Digest) or a service account."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Literal

from worker.http import DEFAULT_TIMEOUT, Api

ATLAS_API = "https://cloud.mongodb.com/api/atlas/v2"
AtlasAuth = Literal["digest", "service_account"]
_CREDENTIALS = {"digest": ("ATLAS_PUBLIC_KEY", "ATLAS_PRIVATE_KEY"),
                "service_account": ("ATLAS_CLIENT_ID", "ATLAS_CLIENT_SECRET")}  # fmt: skip


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

    def get(self, path: str, version: str) -> Any:
        """GET `path` under the API root, as API version `version` (e.g. 2023-01-01)."""
        return self.api.get_json(path, headers={"Accept": f"application/vnd.atlas.{version}+json"})

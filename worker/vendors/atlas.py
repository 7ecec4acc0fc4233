"""MongoDB Atlas Admin API v2 (reference §7), with an API key (HTTP Digest) or a service account."""

from __future__ import annotations

import os
from collections.abc import Generator
from datetime import timedelta
from typing import Any, Literal

import httpx

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


class _Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class AtlasAPI:
    """GET calls on the Admin API, each with its versioned Accept header."""

    def __init__(self, api_url: str = ATLAS_API, auth: AtlasAuth = "digest",
                 timeout: timedelta = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        first, second = (_env(name) for name in _CREDENTIALS[auth])
        credential = " / ".join(_CREDENTIALS[auth])
        how: httpx.Auth = httpx.DigestAuth(first, second) if auth == "digest" else _Bearer(
            self._token(api_url, first, second, timeout, credential))  # fmt: skip
        self.api = Api("Atlas API", api_url, credential=credential, auth=how, timeout=timeout)

    @staticmethod
    def _token(api_url: str, client_id: str, secret: str, timeout: timedelta, credential: str) -> str:
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

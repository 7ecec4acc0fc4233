"""Render's API (reference §6): deploys, rollback, service settings and metrics."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from worker.http import DEFAULT_RETRY, DEFAULT_TIMEOUT, Api, HttpError, RetryPolicy

RENDER_API = "https://api.render.com/v1"


class RenderAPI:
    """The Render API calls opskeeper makes."""

    def __init__(self, api_url: str, key: str, *, timeout: timedelta = DEFAULT_TIMEOUT,
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:  # fmt: skip
        self.api = Api("Render API", api_url, credential="RENDER_API_KEY", timeout=timeout, retry=retry,
                       headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})  # fmt: skip

    def close(self) -> None:
        """Release the connection pool."""
        self.api.close()

    def deploys(self, service_id: str, page_size: int, max_pages: int) -> Iterator[dict[str, Any]]:
        """Deploys newest first, page by page (the cursor sits beside each item)."""
        cursor: str | None = None
        for _ in range(max_pages):
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = self.api.get_json(f"/services/{service_id}/deploys", params=params)
            if not page:
                return
            for item in page:
                yield item["deploy"]
            if len(page) < page_size:
                return  # a short page is the last one: no need to ask for an empty one
            cursor = page[-1]["cursor"]

    def metric(self, name: str, service_id: str, since: datetime, until: datetime) -> list[float]:
        """Every sample of every instance of one service in the window (`/metrics/cpu`, `/metrics/memory`)."""
        params = {"resource": service_id, "startTime": since.isoformat(), "endTime": until.isoformat(),
                  "resolutionSeconds": 3600}  # fmt: skip
        series = self.api.get_json(f"/metrics/{name}", params=params)
        return [float(v["value"]) for s in series for v in s.get("values", []) if v.get("value") is not None]

    def service(self, service_id: str) -> dict[str, Any]:
        """The service's settings (`serviceDetails` holds its pre-deploy command)."""
        return dict(self.api.get_json(f"/services/{service_id}"))

    def rollback(self, service_id: str, deploy_id: str) -> dict[str, Any] | None:
        """Ask Render to roll the service back to a previous deploy; returns the new deploy.

        None when Render answers 400 or 404 for a service that exists: the deploy's build is no longer retained
        (only the newest few builds are, by plan), so only a new deploy of its commit can bring it back. A 404
        because the service itself is unknown (a wrong id, a deleted service) is an HttpError saying so.
        """
        response = self.api.request("POST", f"/services/{service_id}/rollback", json={"deployId": deploy_id},
                                    allow=(400, 404))  # fmt: skip
        if response.status_code == 404 and self.api.get(f"/services/{service_id}", allow=(404,)).status_code == 404:
            raise HttpError(self.api.vendor, "POST", response.request.url,
                            f"no service {service_id} (HTTP 404): check the service id")  # fmt: skip
        if response.status_code in (400, 404):
            return None
        return response.json() if response.content else {}

    def deploy_commit(self, service_id: str, commit: str) -> dict[str, Any]:
        """Start a new deploy of one commit (201 with the deploy, or 202 with no body)."""
        response = self.api.request("POST", f"/services/{service_id}/deploys", json={"commitId": commit})
        return response.json() if response.content else {}

    def disable_autodeploy(self, service_id: str) -> None:
        """Turn auto-deploy off, so the next push does not undo a rollback.

        Both spellings: `autoDeploy` is the field the API has always had, `autoDeployTrigger` the
        one that replaces it (reference §10); the two say the same thing.
        """
        self.api.request("PATCH", f"/services/{service_id}", json={"autoDeploy": "no", "autoDeployTrigger": "off"})


def pre_deploy_command(service: dict[str, Any]) -> str:
    """The service's pre-deploy command ('' when it has none), wherever the service type keeps it."""
    details = service.get("serviceDetails") or {}
    specific = details.get("envSpecificDetails") or {}
    return str(specific.get("preDeployCommand") or details.get("preDeployCommand") or "")

"""GitHub's REST API: repositories, trees, raw contents and the commits of a path. One client for every job."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from worker.http import DEFAULT_TIMEOUT, Api

GITHUB_API = "https://api.github.com"
_RAW = {"Accept": "application/vnd.github.raw+json"}


class GitHub:
    """Read one repository's files and history; the token defaults to GITHUB_TOKEN."""

    def __init__(self, repo: str, *, api_url: str = GITHUB_API, token: str | None = None,
                 timeout: timedelta = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        token = token or os.environ.get("GITHUB_TOKEN", "")
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.repo = repo
        self.api = Api("GitHub API", api_url, credential="GITHUB_TOKEN", headers=headers, timeout=timeout)

    def __enter__(self) -> GitHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool."""
        self.api.close()

    def default_branch(self) -> str:
        """The repository's default branch."""
        return str(self.api.get_json(f"/repos/{self.repo}")["default_branch"])

    def tree(self, ref: str) -> list[dict[str, Any]]:
        """Every entry of the tree at `ref`, recursively (`path`, `type`, `size`)."""
        answer = self.api.get_json(f"/repos/{self.repo}/git/trees/{ref}", params={"recursive": "1"})
        return list(answer.get("tree", []))

    def contents(self, path: str, ref: str) -> bytes | None:
        """A file's raw bytes at `ref`; None when there is no such file."""
        response = self.api.get(f"/repos/{self.repo}/contents/{path}", params={"ref": ref}, headers=_RAW,
                                allow=(404,))  # fmt: skip
        return None if response.status_code == 404 else response.content

    def last_commit(self, path: str, ref: str) -> dict[str, Any] | None:
        """The newest commit on `ref` that touched `path`; None when there is none."""
        commits = self.api.get_json(f"/repos/{self.repo}/commits", params={"path": path, "sha": ref, "per_page": 1})
        return dict(commits[0]) if commits else None

    def set_status(self, sha: str, state: str, context: str, description: str, target_url: str | None = None) -> None:
        """Set a commit status (`success`, `failure`, `pending`, `error`); needs commit statuses write."""
        body = {"state": state, "context": context, "description": description[:140]}
        if target_url:
            body["target_url"] = target_url
        self.api.request("POST", f"/repos/{self.repo}/statuses/{sha}", json=body)

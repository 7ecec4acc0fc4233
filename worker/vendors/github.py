"""GitHub's REST API: repositories, trees, raw contents, commit statuses, and changes opened as pull requests.

One client for every job. Changes are written through the Git Data API (reference §13), so
no git binary is needed: blobs, a tree on the base commit's tree, a commit, then the branch
created or moved to it. opskeeper writes only to branches of its own (`opskeeper/...`),
never to a base branch.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, NamedTuple

from worker.http import DEFAULT_RETRY, DEFAULT_TIMEOUT, Api, HttpError, RetryPolicy

GITHUB_API = "https://api.github.com"
#: The only branches opskeeper writes to.
OWN_BRANCHES = "opskeeper/"
#: Sub-trees walked one by one when a recursive tree answer comes back truncated.
MAX_TREES = 2000
#: GitHub refuses a pull request or comment body longer than this (422 "body is too long").
BODY_LIMIT = 65536


def fit(body: str, limit: int = BODY_LIMIT) -> str:
    """`body` cut at a line to GitHub's limit, saying how much was left out. Pure."""
    if len(body) <= limit:
        return body
    lines = body.splitlines()
    kept: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > limit - 100:  # room for the note
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join([*kept, "", f"… {len(lines) - len(kept)} more lines left out: GitHub takes {limit} characters."])


_RAW = {"Accept": "application/vnd.github.raw+json"}


class Tip(NamedTuple):
    """A branch's newest commit: its sha, its tree's, and its parents'."""

    sha: str
    tree: str
    parents: tuple[str, ...]


#: GitHub's primary limit resets within the hour; a rate-limited request waits for it, unless the job's
#: deadline comes first (then the run reports the rate limit, and the next run tries again).
RATE_LIMIT_WAIT = timedelta(hours=1)


class GitHub:
    """Read one repository's files and history; the token defaults to GITHUB_TOKEN.

    Rate limits (a 403 or 429 with `retry-after`, or `x-ratelimit-remaining: 0` and `x-ratelimit-reset`) are
    waited out and the request sent again: up to RATE_LIMIT_WAIT and never past `deadline` (a job's
    time.monotonic() deadline), or a minute without one; then the error says "rate limited", never that the
    token was rejected.
    """

    def __init__(self, repo: str, *, api_url: str = GITHUB_API, token: str | None = None,
                 timeout: timedelta = DEFAULT_TIMEOUT, deadline: float | None = None) -> None:  # fmt: skip
        token = token or os.environ.get("GITHUB_TOKEN", "")
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.repo = repo
        # Without a deadline (a command at a terminal) a rate limit is waited for as any Retry-After is, a minute.
        retry = (RetryPolicy(max_rate_limit_wait=RATE_LIMIT_WAIT, deadline=deadline) if deadline is not None
                 else DEFAULT_RETRY)  # fmt: skip
        self.api = Api("GitHub API", api_url, credential="GITHUB_TOKEN", headers=headers, timeout=timeout,
                       retry=retry)  # fmt: skip

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

    def tree(self, ref: str, max_trees: int = MAX_TREES) -> list[dict[str, Any]]:
        """Every entry of the tree at `ref`, recursively (`path`, `type`, `size`).

        A recursive answer past GitHub's limit (100,000 entries or 7 MB) says `truncated: true` and holds only
        part of the tree; then the tree is walked one sub-tree at a time, as GitHub's documentation says to,
        up to `max_trees` requests. HttpError when even that does not reach the end: part of a tree is never
        given as the whole.
        """
        answer = self.api.get_json(f"/repos/{self.repo}/git/trees/{ref}", params={"recursive": "1"})
        if not answer.get("truncated"):
            return list(answer.get("tree", []))
        entries: list[dict[str, Any]] = []
        pending: list[tuple[str, str]] = [("", ref)]
        for _ in range(max_trees):
            if not pending:
                return entries
            prefix, sha = pending.pop()
            for listed in self.api.get_json(f"/repos/{self.repo}/git/trees/{sha}").get("tree", []):
                entry = {**listed, "path": f"{prefix}{listed['path']}"}
                entries.append(entry)
                if entry.get("type") == "tree":
                    pending.append((f"{entry['path']}/", str(entry["sha"])))
        if not pending:
            return entries
        raise HttpError(self.api.vendor, "GET", f"{self.api.base_url}/repos/{self.repo}/git/trees/{ref}",
                        f"the tree is truncated and has more than {max_trees} sub-trees: not read whole")  # fmt: skip

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

    # --- changes as pull requests -------------------------------------------------------

    def head(self, branch: str) -> Tip | None:
        """The commit at the tip of `branch`; None when there is no such branch."""
        response = self.api.get(f"/repos/{self.repo}/git/ref/heads/{branch}", allow=(404,))
        if response.status_code == 404:
            return None
        sha = str(self.api.parse(response)["object"]["sha"])
        commit = self.api.get_json(f"/repos/{self.repo}/git/commits/{sha}")
        return Tip(sha, str(commit["tree"]["sha"]), tuple(str(p["sha"]) for p in commit.get("parents", [])))

    def commit_files(self, branch: str, base: str, files: dict[str, bytes], message: str) -> str:
        """Commit `files` (path -> content) on top of `base`'s tip as `branch`, created or force-moved there.

        The branch is rebuilt from the base every time (one commit ahead of it), so a refresh
        never piles commits up. A branch that already holds exactly this on the base's tip is left
        as it is: a new commit would re-run the pull request's checks for nothing. Returns the
        branch's commit.
        """
        if not branch.startswith(OWN_BRANCHES) or branch == base:
            raise ValueError(f"branch {branch!r}: opskeeper writes only to branches under {OWN_BRANCHES!r}, "
                             f"never to {base!r}")  # fmt: skip
        tip = self.head(base)
        if tip is None:
            raise HttpError("GitHub API", "GET", f"/repos/{self.repo}/git/ref/heads/{base}", "no such base branch")
        parent, tree = tip.sha, tip.tree
        entries = []
        modes = self._modes(tree, files)
        for path, data in sorted(files.items()):
            content = {"content": base64.b64encode(data).decode(), "encoding": "base64"}
            blob = self.api.request("POST", f"/repos/{self.repo}/git/blobs", json=content)
            entries.append({"path": path, "mode": modes.get(path, "100644"), "type": "blob",
                            "sha": self.api.parse(blob)["sha"]})  # fmt: skip
        made = self.api.parse(self.api.request("POST", f"/repos/{self.repo}/git/trees",
                                               json={"base_tree": tree, "tree": entries}))  # fmt: skip
        current = self.head(branch)
        if current is not None and current.tree == made["sha"] and current.parents == (parent,):
            return current.sha
        commit = self.api.parse(self.api.request("POST", f"/repos/{self.repo}/git/commits",
                                                 json={"message": message, "tree": made["sha"],
                                                       "parents": [parent]}))  # fmt: skip
        sha = str(commit["sha"])
        if current is None:
            ref = {"ref": f"refs/heads/{branch}", "sha": sha}
            self.api.request("POST", f"/repos/{self.repo}/git/refs", json=ref)
        else:
            self.api.request("PATCH", f"/repos/{self.repo}/git/refs/heads/{branch}", json={"sha": sha, "force": True})
        return sha

    def _modes(self, tree: str, paths: Iterable[str]) -> dict[str, str]:
        """The mode each of `paths` has in `tree` (100755 for an executable), for those it holds as files: a
        rewritten file keeps its mode. One non-recursive tree read per directory on the way."""
        listed: dict[str, dict[str, dict[str, Any]]] = {}

        def entries(folder: str) -> dict[str, dict[str, Any]]:
            if folder not in listed:
                parent, _, name = folder.rpartition("/")
                sha = tree if not folder else entries(parent).get(name, {}).get("sha")
                answer = self.api.get_json(f"/repos/{self.repo}/git/trees/{sha}") if sha else {}
                listed[folder] = {str(e["path"]): e for e in answer.get("tree", [])}
            return listed[folder]

        modes = {}
        for path in paths:
            folder, _, name = path.rpartition("/")
            entry = entries(folder).get(name)
            if entry and entry.get("type") == "blob" and entry.get("mode") in ("100644", "100755"):
                modes[path] = str(entry["mode"])
        return modes

    def open_pull(self, branch: str) -> dict[str, Any] | None:
        """The open pull request from `branch`, if there is one."""
        owner = self.repo.split("/", 1)[0]
        pulls = self.api.get_json(f"/repos/{self.repo}/pulls", params={"head": f"{owner}:{branch}", "state": "open"})
        return dict(pulls[0]) if pulls else None

    def propose(self, branch: str, base: str, title: str, body: str) -> tuple[dict[str, Any], bool]:
        """Open a pull request from `branch` into `base`, or refresh the open one; (the pull, whether it is new)."""
        found = self.open_pull(branch)
        if found is not None:
            updated = self.api.request("PATCH", f"/repos/{self.repo}/pulls/{found['number']}",
                                       json={"title": title, "body": fit(body)})  # fmt: skip
            return dict(self.api.parse(updated)), False
        made = self.api.request("POST", f"/repos/{self.repo}/pulls",
                                json={"title": title, "head": branch, "base": base, "body": fit(body)})  # fmt: skip
        return dict(self.api.parse(made)), True

    def close_pull(self, number: int, comment: str | None = None) -> None:
        """Close a pull request (with a comment saying why, when given)."""
        if comment:
            self.api.request("POST", f"/repos/{self.repo}/issues/{number}/comments", json={"body": fit(comment)})
        self.api.request("PATCH", f"/repos/{self.repo}/pulls/{number}", json={"state": "closed"})

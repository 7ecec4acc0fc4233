"""Changes opened as pull requests through GitHub's Git Data API, against a stand-in with git's object ids."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.fixtures.github_standin import GitHubStandIn
from worker.http import HttpError
from worker.vendors.github import GitHub


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    server = GitHubStandIn()
    repo = server.repo("acme/shop")
    repo.seed("main", {"server/package.json": b'{"name": "server"}\n', "server/pnpm-lock.yaml": b"old\n",
                       "README.md": b"# shop\n"})  # fmt: skip
    yield server
    server.close()


def test_blob_ids_are_gits_own(github: GitHubStandIn) -> None:
    """The stand-in names a blob as `git hash-object` does, so its trees and commits are git's too."""
    data = b"lockfileVersion: '9.0'\n"
    expected = subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True, check=True)
    assert github.repo("acme/shop").blob(data) == expected.stdout.decode().strip()


def test_commit_files_builds_one_commit_on_the_base_and_moves_the_branch(github: GitHubStandIn) -> None:
    """A new branch gets one commit on main's tip holding the changed file; other files are kept."""
    repo = github.repo("acme/shop")
    with GitHub("acme/shop", api_url=github.url, token="t") as client:
        sha = client.commit_files("opskeeper/updates/server", "main", {"server/pnpm-lock.yaml": b"new\n"}, "update")
        again = client.commit_files("opskeeper/updates/server", "main", {"server/pnpm-lock.yaml": b"newer\n"}, "again")
        commits = len(repo.commits)
        same = client.commit_files("opskeeper/updates/server", "main", {"server/pnpm-lock.yaml": b"newer\n"}, "again")
    assert same == again  # the same change on the same base: the branch is left as it is
    assert len(repo.commits) == commits  # no new commit at all
    assert repo.refs["opskeeper/updates/server"] == again != sha
    assert repo.commits[again]["parents"] == [repo.refs["main"]]  # rebuilt on the base: never commits piled up
    assert repo.files(again) == {"server/package.json": b'{"name": "server"}\n', "server/pnpm-lock.yaml": b"newer\n",
                                 "README.md": b"# shop\n"}  # fmt: skip
    assert repo.files(repo.refs["main"])["server/pnpm-lock.yaml"] == b"old\n"


@pytest.mark.parametrize("branch", ["main", "feature/x"])
def test_never_writes_to_a_base_or_foreign_branch(github: GitHubStandIn, branch: str) -> None:
    """Only branches under opskeeper/ are written: the base branch and others are refused before any request."""
    with GitHub("acme/shop", api_url=github.url, token="t") as client, pytest.raises(ValueError, match="opskeeper/"):
        client.commit_files(branch, "main", {"a": b"b"}, "nope")
    assert github.repo("acme/shop").calls == []


def test_one_pull_request_per_branch_refreshed_not_duplicated_then_closed(github: GitHubStandIn) -> None:
    """propose() opens a pull request once, then edits it; close_pull() closes it with a comment."""
    repo = github.repo("acme/shop")
    with GitHub("acme/shop", api_url=github.url, token="t") as client:
        client.commit_files("opskeeper/updates/server", "main", {"server/pnpm-lock.yaml": b"new\n"}, "update")
        first, new = client.propose("opskeeper/updates/server", "main", "Update server", "body 1")
        second, again = client.propose("opskeeper/updates/server", "main", "Update server (2)", "body 2")
        assert (new, again) == (True, False)
        assert first["number"] == second["number"]
        client.close_pull(second["number"], "nothing left to update")
        assert client.open_pull("opskeeper/updates/server") is None
    [pull] = repo.pulls
    assert (pull["title"], pull["body"], pull["state"], repo.comments[pull["number"]]) == (
        "Update server (2)", "body 2", "closed", ["nothing left to update"])  # fmt: skip


def test_a_pull_request_with_no_commits_is_refused_as_github_does(github: GitHubStandIn) -> None:
    """A branch that is not ahead of its base cannot become a pull request: the error says so."""
    repo = github.repo("acme/shop")
    repo.refs["opskeeper/updates/empty"] = repo.refs["main"]
    with GitHub("acme/shop", api_url=github.url, token="t") as client, pytest.raises(HttpError, match="422"):
        client.propose("opskeeper/updates/empty", "main", "t", "b")


def test_a_body_over_githubs_limit_is_cut_at_a_line_and_says_so(github: GitHubStandIn) -> None:
    """A 3,000-row update table (a big workspace, group: all) is over GitHub's 65,536 characters: the pull request
    still opens, its body cut at a whole line with a note, where the stand-in refuses the whole body as GitHub does."""
    rows = "\n".join(f"| package-{i:04d} | 1.0.0 | 1.0.1 | patch | dependencies |" for i in range(3000))
    with GitHub("acme/shop", api_url=github.url, token="t") as client:
        client.commit_files("opskeeper/updates/all", "main", {"server/pnpm-lock.yaml": b"new\n"}, "update")
        pull, new = client.propose("opskeeper/updates/all", "main", "Update dependencies", "| package |\n" + rows)
    assert new
    body = pull["body"]
    assert len(body) <= 65536
    assert body.splitlines()[-1].startswith("… ")
    assert body.splitlines()[-1].endswith("more lines left out: GitHub takes 65536 characters.")
    assert all(line.endswith("|") for line in body.splitlines()[:-2])  # whole rows only


def test_a_rewritten_file_keeps_its_executable_bit(github: GitHubStandIn) -> None:
    """A file the base holds as 100755 (a script the change rewrites) stays 100755; a new file is 100644."""
    repo = github.repo("acme/tools")
    repo.seed("main", {"bin/release.sh": b"#!/bin/sh\necho old\n", "package.json": b"{}\n"},
              modes={"bin/release.sh": "100755"})  # fmt: skip
    with GitHub("acme/tools", api_url=github.url, token="t") as client:
        sha = client.commit_files("opskeeper/updates/tools", "main", {"bin/release.sh": b"#!/bin/sh\necho new\n",
                                                                       "bin/new.txt": b"x\n"}, "update")  # fmt: skip
    root = repo.trees[repo.commits[sha]["tree"]]
    inner = repo.trees[root["bin"][2]]
    assert (inner["release.sh"][0], inner["new.txt"][0]) == ("100755", "100644")
    assert repo.files(sha)["bin/release.sh"] == b"#!/bin/sh\necho new\n"

"""The docs review: a real git repository with dated commits, and GitHub's API served locally."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs.review.docs import DocsReviewJob, DocsReviewOptions, Inventory, dangling
from tests.conftest import Reply, Request, VendorAPI
from worker.job import JobContext, Notice, Outcome, Status

CHECKLIST = """# Production checklist

- [ ] `MONGODB_URI` and `SESSION_SECRET` are set on Render
- [ ] `LEGACY_REDIS_URL` points at the cache
- [ ] run `pnpm run migrate` before each release, then `pnpm --filter server run seed`
- See [the runbook](docs/runbook.md) and [backups](docs/backups.md#restore)
- Health: `server/src/routes/health.js`; old cron: `scripts/cleanup.sh`

```bash
export STRIPE_API_KEY=sk_live_xxx
curl https://example.com/api/health   # not a file
```
"""
MAINTENANCE = "# Maintenance\n\nWeekly: `pnpm outdated`, then [the checklist](PRODUCTION_CHECKLIST.md).\n"
README = "# Shop\n\nStart with `pnpm run dev`.\n"
PACKAGE = {"name": "shop", "scripts": {"dev": "vite", "migrate": "node scripts/migrate.js"}}
SERVER_PACKAGE = {"name": "server", "scripts": {"start": "node src/index.js"}}
SERVER_CODE = "const uri = process.env.MONGODB_URI;\nconst secret = process.env.SESSION_SECRET;\n"


def git(repo: Path, *args: str, when: datetime | None = None) -> str:
    stamp = (when or datetime.now(UTC)).isoformat()
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.com", "GIT_COMMITTER_NAME": "Ops",
           "GIT_COMMITTER_EMAIL": "ops@example.com", "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}  # fmt: skip
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True).stdout


def app_files() -> dict[str, str]:
    return {
        "PRODUCTION_CHECKLIST.md": CHECKLIST, "MAINTENANCE.md": MAINTENANCE, "README.md": README,
        "package.json": json.dumps(PACKAGE), "server/package.json": json.dumps(SERVER_PACKAGE),
        "server/src/index.js": SERVER_CODE, "server/src/routes/health.js": "module.exports = {};\n",
        "docs/runbook.md": "# Runbook\n", "server/.env.example": "MONGODB_URI=\nSESSION_SECRET=\n",
        "node_modules/x/package.json": json.dumps({"scripts": {"seed": "x"}}),
    }  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The app's checkout: the checklist last changed 200 days ago, the others 10 days ago."""
    root = tmp_path / "shop"
    for path, text in app_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "PRODUCTION_CHECKLIST.md")
    git(root, "commit", "-qm", "checklist", when=datetime.now(UTC) - timedelta(days=200))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the rest", when=datetime.now(UTC) - timedelta(days=10))
    return root


def run(options: dict[str, Any], notices: list[Notice] | None = None) -> Outcome:
    sent = notices if notices is not None else []
    ctx = JobContext(job_id="docs", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 60,
                     state=None, cancel=threading.Event(), log=lambda e, **f: None, notify=sent.append)  # type: ignore[arg-type]  # fmt: skip
    return DocsReviewJob(DocsReviewOptions.model_validate(options)).run(ctx)


def by_doc(outcome: Outcome) -> dict[str, Any]:
    return {d["document"]: d for d in outcome.details["documents"]}


def test_local_checkout_flags_stale_and_dangling(repo: Path) -> None:
    """Git dates give each document's age; files, scripts and variables the repo lacks are named."""
    notices: list[Notice] = []
    outcome = run({"path": str(repo)}, notices)
    assert outcome.status is Status.WARN
    (notice,) = notices
    assert notice.level == "warning"
    assert notice.fingerprint == ("docs_review", f"{datetime.now(UTC):%Y-%m}")  # this month's review: its own issue
    assert notice.message.startswith("docs review: 1 thing(s) need a look: PRODUCTION_CHECKLIST.md: last changed")
    docs = by_doc(outcome)
    checklist = docs["PRODUCTION_CHECKLIST.md"]
    assert checklist["stale"]
    assert checklist["age_days"] == 200
    assert checklist["source"] == "git"
    assert len(checklist["commit"]) == 40
    refs = {(d["kind"], d["ref"]) for d in checklist["dangling"]}
    assert refs == {("env", "LEGACY_REDIS_URL"), ("env", "STRIPE_API_KEY"), ("script", "seed"),
                    ("file", "docs/backups.md"), ("file", "scripts/cleanup.sh")}  # fmt: skip
    lines = {d["ref"]: d["line"] for d in checklist["dangling"]}
    assert lines["LEGACY_REDIS_URL"] == 4
    assert lines["docs/backups.md"] == 6
    assert not docs["MAINTENANCE.md"]["stale"]
    assert docs["MAINTENANCE.md"]["dangling"] == []
    assert docs["README.md"]["age_days"] == 10
    assert "PRODUCTION_CHECKLIST.md: last changed 200 days ago (older than 90d)" in outcome.summary


def test_fixed_docs_are_current(repo: Path) -> None:
    """Once the checklist is updated and its references exist, the review is OK."""
    (repo / "PRODUCTION_CHECKLIST.md").write_text("# Production checklist\n\n- [ ] `MONGODB_URI` is set\n")
    git(repo, "commit", "-qam", "refresh checklist")
    notices: list[Notice] = []
    outcome = run({"path": str(repo), "max_age": "30d"}, notices)
    assert outcome.status is Status.OK, outcome.summary
    assert notices == []
    assert outcome.summary == "3 documents current (newest change 0 days ago)"


def test_missing_document_and_missing_repository(repo: Path, tmp_path: Path) -> None:
    """A configured document that is not there is flagged; a path that is not there is a gap."""
    outcome = run({"path": str(repo), "documents": ["README.md", "RUNBOOK.md"]})
    assert outcome.status is Status.WARN
    assert "RUNBOOK.md is missing" in outcome.summary
    gone = run({"path": str(tmp_path / "nowhere")})
    assert gone.status is Status.WARN
    assert gone.details["gaps"][0]["reason"].endswith("no such directory")


def test_exactly_one_source_is_required() -> None:
    """path and github are alternatives; the validation error says so."""
    with pytest.raises(ValueError, match="exactly one of path"):
        DocsReviewOptions.model_validate({})


def test_references_in_prose_are_not_variables() -> None:
    """Upper-case words in prose (HTTP_OK in a sentence) are not taken for variables; `$VARS` are."""
    inventory = Inventory(files={"a.md"}, scripts=set(), env={"KNOWN_VAR"}, read_env_from=1)
    text = "Returns HTTP_OK when fine.\nSet $MISSING_VAR and `KNOWN_VAR`.\n"
    assert [(r.kind, r.ref, r.line) for r in dangling("a.md", text, inventory)] == [("env", "MISSING_VAR", 2)]


# --- GitHub ---------------------------------------------------------------------------

GH_TOKEN = "ghp_docsreviewtoken0123456789abcdef"


def serve_github(vendor: VendorAPI, dates: dict[str, datetime]) -> None:
    """The repository, its recursive tree, raw contents and per-path commits, behind a bearer token."""
    files = app_files()

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {GH_TOKEN}"

    def repo(request: Request) -> Reply:
        return Reply(200, {"full_name": "acme/shop", "default_branch": "main"})

    def tree(request: Request) -> Reply:
        assert request.query["recursive"] == ["1"]
        return Reply(200, {"sha": "t1", "truncated": False, "tree": [
            *({"path": p, "type": "blob", "sha": "b", "mode": "100644", "size": len(t.encode())}
              for p, t in files.items()),
            {"path": "server/public/bundle.js", "type": "blob", "sha": "c", "mode": "100644", "size": 4_800_000},
            {"path": "server", "type": "tree", "sha": "t2", "mode": "040000"},
        ]})  # fmt: skip

    def commits(request: Request) -> Reply:
        if not authorized(request):
            return Reply(401, {"message": "Bad credentials"})
        path = request.query["path"][0]
        when = dates.get(path)
        if when is None:
            return Reply(200, [])  # type: ignore[arg-type]
        stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        return Reply(200, [{"sha": "a" * 40, "html_url": "https://github.com/acme/shop/commit/aaa",  # type: ignore[arg-type]
                            "commit": {"message": "docs", "author": {"date": stamp},
                                       "committer": {"date": stamp}}}])  # fmt: skip

    vendor.routes["/repos/acme/shop"] = repo
    vendor.routes["/repos/acme/shop/git/trees/main"] = tree
    vendor.routes["/repos/acme/shop/commits"] = commits
    for path, text in files.items():
        vendor.routes[f"/repos/acme/shop/contents/{path}"] = lambda request, text=text: (
            Reply(200, text, {"Content-Type": "application/vnd.github.raw+json"})
            if request.headers.get("accept") == "application/vnd.github.raw+json"
            else Reply(200, {"content": base64.b64encode(text.encode()).decode(), "encoding": "base64"})
        )


def test_github_repository_is_reviewed_through_the_api(vendor: VendorAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commits API dates each document; the tree and raw contents give files, scripts and variables."""
    monkeypatch.setenv("GITHUB_TOKEN", GH_TOKEN)
    now = datetime.now(UTC)
    serve_github(vendor, {"PRODUCTION_CHECKLIST.md": now - timedelta(days=120),
                          "MAINTENANCE.md": now - timedelta(days=5),
                          "README.md": now - timedelta(days=1)})  # fmt: skip
    outcome = run({"github": {"repo": "acme/shop", "api_url": vendor.url}})
    docs = by_doc(outcome)
    assert docs["PRODUCTION_CHECKLIST.md"]["age_days"] == 120
    assert docs["PRODUCTION_CHECKLIST.md"]["stale"]
    assert docs["PRODUCTION_CHECKLIST.md"]["source"] == "github"
    assert {d["ref"] for d in docs["PRODUCTION_CHECKLIST.md"]["dangling"]} == {
        "LEGACY_REDIS_URL", "STRIPE_API_KEY", "seed", "docs/backups.md", "scripts/cleanup.sh"}  # fmt: skip
    assert not docs["README.md"]["stale"]
    commits = [r for r in vendor.requests if r.path.endswith("/commits")]
    assert {r.query["path"][0] for r in commits} == {"PRODUCTION_CHECKLIST.md", "MAINTENANCE.md", "README.md"}
    assert all(r.query["sha"] == ["main"] for r in commits)
    read = {r.path.removeprefix("/repos/acme/shop/contents/") for r in vendor.requests if "/contents/" in r.path}
    assert "server/.env.example" in read
    assert "server/public/bundle.js" not in read  # 4.8 MB: not downloaded for variable names
    assert GH_TOKEN not in json.dumps(outcome.details) + outcome.summary


@pytest.mark.parametrize("failure", ["401", "500", "timeout"])
def test_github_failures_are_gaps(vendor: VendorAPI, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """A rejected token, a server error or a hang on the commits API is a named gap, not an error."""
    monkeypatch.setenv("GITHUB_TOKEN", GH_TOKEN if failure != "401" else "ghp_wrong")
    serve_github(vendor, {})
    if failure == "500":
        vendor.routes["/repos/acme/shop/commits"] = lambda r: Reply(500, {"message": "Server Error"})
    if failure == "timeout":
        vendor.routes["/repos/acme/shop/commits"] = lambda r: vendor.hang()
    outcome = run({"github": {"repo": "acme/shop", "api_url": vendor.url}, "documents": ["README.md"],
                   "api_timeout": "300ms"})  # fmt: skip
    assert outcome.status is Status.WARN
    (gap,) = outcome.details["gaps"]
    cause = {"401": "GITHUB_TOKEN rejected (HTTP 401)", "500": "HTTP 500", "timeout": "timed out after 300ms"}[failure]
    assert gap["source"] == "github.com/acme/shop/README.md"
    assert gap["reason"] == f"GitHub API: GET {vendor.url}/repos/acme/shop/commits: {cause}"


def test_without_git_file_times_date_the_documents(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker image has no git: a checkout is then dated by file times, not an error."""
    monkeypatch.setenv("PATH", str(repo / "no-such-bin"))
    os.utime(repo / "README.md", (time.time() - 100 * 86400, time.time() - 100 * 86400))
    docs = by_doc(run({"path": str(repo)}))
    assert docs["README.md"]["source"] == "mtime"
    assert docs["README.md"]["age_days"] == 100
    assert docs["README.md"]["stale"]


def test_github_contents_timeout_is_a_gap(vendor: VendorAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hang while reading a document's contents is a gap naming the document, not an error."""
    monkeypatch.setenv("GITHUB_TOKEN", GH_TOKEN)
    serve_github(vendor, {})
    vendor.routes["/repos/acme/shop/contents/MAINTENANCE.md"] = lambda r: vendor.hang()
    outcome = run({"github": {"repo": "acme/shop", "api_url": vendor.url}, "documents": ["MAINTENANCE.md", "README.md"],
                   "api_timeout": "300ms"})  # fmt: skip
    assert outcome.status is Status.WARN
    assert outcome.details["gaps"] == [{"source": "github.com/acme/shop/MAINTENANCE.md",
                                        "reason": "reading MAINTENANCE.md: timed out after 300ms"}]  # fmt: skip
    assert [d["document"] for d in outcome.details["documents"]] == ["README.md"]


def test_code_spans_that_are_not_paths_are_left_alone() -> None:
    """`application/json` and `acme/shop` are not files; `app.js` is found anywhere; real dangling paths are named."""
    inventory = Inventory(files={"server/app.js", "server/src/index.js", "README.md"}, scripts=set(), env=set())
    text = ("Send `application/json` to `acme/shop`; start `app.js`.\n"
            "See `server/src/` and `server/old/` and `./tools/run` and `client/app.js`.\n")  # fmt: skip
    assert [(r.ref, r.line) for r in dangling("README.md", text, inventory)] == [
        ("server/old", 2), ("./tools/run", 2), ("client/app.js", 2)]  # fmt: skip

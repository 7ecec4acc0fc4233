"""`docs_review`: are the app's operations documents recent, and do they still tell the truth?

For each document (by default PRODUCTION_CHECKLIST.md, MAINTENANCE.md and README.md) it
reports the last change (git history of a local checkout, or GitHub's commits API) and
flags documents older than `max_age`, missing, or referring to things the repository no
longer has: relative links and paths to files, `npm|pnpm|yarn run X` scripts that no
package.json defines, and environment variables (`FOO_BAR` in code spans, `$FOO_BAR`,
`process.env.FOO_BAR`) that no file other than the docs mentions. WARN when any document
needs a look, with one Sentry message listing what; a repository that cannot be read is a
named gap.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Protocol

from pydantic import Field, model_validator

from jobs.review.sources import SourceError
from worker.http import HttpError
from worker.job import JobContext, JobOptions, Notice, Outcome, Status
from worker.schedule import Duration
from worker.timespec import format_duration
from worker.vendors.github import GITHUB_API, GitHub

DEFAULT_DOCUMENTS = ("PRODUCTION_CHECKLIST.md", "MAINTENANCE.md", "README.md")
_SKIP_DIRS = frozenset({".git", "node_modules", "dist", "build", ".next", "coverage", ".venv", "vendor"})
#: Files whose text can name an environment variable the app uses.
_CODE = re.compile(r"(\.(js|jsx|ts|tsx|mjs|cjs|json|ya?ml|toml|sh|py|env[\w.-]*)|Dockerfile|Procfile|\.env[\w.-]*)$")
_MAX_FILE_BYTES = 512 * 1024

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_SCRIPT = re.compile(r"\b(?:npm|pnpm|yarn)\s+(?:(?:--?[\w-]+(?:[= ][\w@./-]+)?)\s+)*run\s+([\w:.-]+)")
_NAME = r"[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]"
#: In code: every ENV_LIKE name. In a document: `$NAME`, `${NAME}`, `process.env.NAME`, a code
#: span that is just `NAME` or `NAME=value`, and `NAME=` lines in fenced blocks.
_ENV = re.compile(rf"\b({_NAME})\b")
_ENV_EXPLICIT = re.compile(rf"(?:\$\{{?|process\.env\.)({_NAME})\b")
_ENV_SPAN = re.compile(rf"^({_NAME})(?:=.*)?$")
_ENV_ASSIGN = re.compile(rf"^\s*(?:export\s+)?({_NAME})=")
_PATHLIKE = re.compile(r"^\.{0,2}/?[\w.-]+(/[\w.-]+)*\.(js|jsx|ts|tsx|mjs|cjs|json|ya?ml|md|sh|py|toml|env\w*)$"
                       r"|^\.{0,2}/?[\w.-]+(/[\w.-]+)+/?$")  # fmt: skip


class GitHubRepo(JobOptions):
    """A repository on GitHub; the token (GITHUB_TOKEN by default) needs read access to contents."""

    repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    ref: str | None = None
    """Branch, tag or SHA; the default branch when unset."""
    api_url: str = GITHUB_API
    token: str | None = None
    max_files: Annotated[int, Field(ge=0)] = 300
    """How many code files to read for environment variable names (each is one API call)."""


class DocsReviewOptions(JobOptions):
    """Where the app's repository is, which documents to review, and how old they may be."""

    path: str | None = None
    """A local checkout of the app (git history when it is a git repository, else file times)."""
    github: GitHubRepo | None = None
    documents: tuple[str, ...] = DEFAULT_DOCUMENTS
    max_age: Duration = timedelta(days=90)
    api_timeout: Duration = timedelta(seconds=20)

    @model_validator(mode="after")
    def _one_source(self) -> DocsReviewOptions:
        if (self.path is None) == (self.github is None):
            raise ValueError("give exactly one of path (a local checkout) or github (owner/name)")
        return self


@dataclass(frozen=True)
class Change:
    """A document's last change."""

    at: datetime
    commit: str = ""
    source: str = "git"
    """git | github | mtime"""


class Repository(Protocol):
    """What the review reads of the app's repository."""

    display: str

    def files(self) -> list[str]:
        """Every file path, '/'-separated from the root (without dependency and build folders)."""
        ...

    def read(self, path: str) -> str | None: ...

    def last_change(self, path: str) -> Change | None: ...


class LocalRepository:
    """A checkout on this machine."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise SourceError(f"{root}: no such directory")
        self.root, self.display = root, str(root)
        self._git = (root / ".git").exists()

    def files(self) -> list[str]:
        found = []
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            rel = Path(folder).relative_to(self.root)
            found += [(rel / n).as_posix() for n in names]
        return sorted(found)

    def read(self, path: str) -> str | None:
        target = self.root / path
        if not target.is_file() or target.stat().st_size > _MAX_FILE_BYTES:
            return None
        return target.read_text(encoding="utf-8", errors="replace")

    def last_change(self, path: str) -> Change | None:
        if not (self.root / path).is_file():
            return None
        if self._git:
            # argv only: no shell, and the path cannot be taken for an option.
            argv = ["git", "-C", str(self.root), "log", "-1", "--format=%cI %H", "--", path]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
            except (OSError, subprocess.TimeoutExpired):
                done = None  # no git on this machine (the worker image has none): file times it is
            if done is not None and done.returncode == 0 and done.stdout.strip():
                when, sha = done.stdout.split()
                return Change(datetime.fromisoformat(when), sha, "git")
        return Change(datetime.fromtimestamp((self.root / path).stat().st_mtime, UTC), "", "mtime")


class GitHubRepository:
    """A repository read through GitHub's REST API: the tree, raw contents and the commits of a path."""

    def __init__(self, options: GitHubRepo, timeout: timedelta) -> None:
        self.options, self.display = options, f"github.com/{options.repo}"
        self._github = GitHub(options.repo, api_url=options.api_url, token=options.token, timeout=timeout)
        try:
            self._ref = options.ref or self._github.default_branch()
        except HttpError as exc:
            self._github.close()
            raise SourceError(str(exc)) from None
        self._sizes: dict[str, int] | None = None

    def close(self) -> None:
        self._github.close()

    def files(self) -> list[str]:
        if self._sizes is None:
            try:
                tree = self._github.tree(self._ref)
            except HttpError as exc:
                raise SourceError(str(exc)) from None
            self._sizes = {e["path"]: int(e.get("size") or 0) for e in tree if e.get("type") == "blob"
                           and not _SKIP_DIRS.intersection(PurePosixPath(e["path"]).parts[:-1])}  # fmt: skip
        return sorted(self._sizes)

    def read(self, path: str) -> str | None:
        if self._sizes is not None and self._sizes.get(path, 0) > _MAX_FILE_BYTES:
            return None  # a bundle or a data file: not worth a download, as for a local checkout
        try:
            data = self._github.contents(path, self._ref)
        except HttpError as exc:
            raise SourceError(f"reading {path}: {exc.cause}") from None
        return None if data is None else data.decode("utf-8", errors="replace")

    def last_change(self, path: str) -> Change | None:
        try:
            commit = self._github.last_commit(path, self._ref)
        except HttpError as exc:
            raise SourceError(str(exc)) from None
        if commit is None:
            return None
        return Change(datetime.fromisoformat(commit["commit"]["committer"]["date"].replace("Z", "+00:00")),
                      commit["sha"], "github")  # fmt: skip


# --- what the repository has, and what a document refers to: pure ----------------------


@dataclass
class Inventory:
    """What a document may refer to."""

    files: set[str]
    scripts: set[str]
    env: set[str]
    read_env_from: int = 0
    """How many files the variable names came from (0: variables are not checked)."""

    @functools.cached_property
    def dirs(self) -> set[str]:
        return {str(parent) for f in self.files for parent in PurePosixPath(f).parents if str(parent) != "."}

    @functools.cached_property
    def names(self) -> set[str]:
        return {PurePosixPath(f).name for f in self.files}

    @functools.cached_property
    def top_level(self) -> set[str]:
        return {f.split("/", 1)[0] for f in self.files}


def scripts_of(package_json: str) -> set[str]:
    """The script names of one package.json (none when it is not valid JSON)."""
    try:
        scripts = json.loads(package_json).get("scripts") or {}
    except (ValueError, AttributeError):
        return set()
    return set(scripts) if isinstance(scripts, dict) else set()


def env_names(text: str) -> set[str]:
    """Every ENV_LIKE name in a file's text."""
    return {m.group(1) for m in _ENV.finditer(text)}


@dataclass
class Reference:
    """One thing a document names that the repository does not have."""

    kind: str
    """file | script | env"""
    ref: str
    line: int


def dangling(document: str, text: str, inventory: Inventory) -> list[Reference]:
    """The references in `text` (the document at path `document`) that the inventory lacks."""
    found: list[Reference] = []
    seen: set[tuple[str, str]] = set()
    folder = PurePosixPath(document).parent
    in_fence = False

    def add(kind: str, ref: str, line: int) -> None:
        if (kind, ref) not in seen:
            seen.add((kind, ref))
            found.append(Reference(kind, ref, line))

    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        candidates = [(m.group(1), True) for m in _LINK.finditer(line)]
        candidates += [(m.group(1).strip(), False) for m in _CODE_SPAN.finditer(line)
                       if _PATHLIKE.match(m.group(1).strip())]  # fmt: skip
        for target, linked in candidates:
            if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^mailto:", target, re.I) or "*" in target or "<" in target:
                continue
            path = target.split("#")[0].split("?")[0].rstrip("/")
            if path and not linked and not _looks_like_a_path(path, inventory):
                continue
            if path and not _exists(path, folder, inventory):
                add("file", path, number)
        for match in _SCRIPT.finditer(line):
            if match.group(1) not in inventory.scripts:
                add("script", match.group(1), number)
        if inventory.read_env_from:
            names = [m.group(1) for m in _ENV_EXPLICIT.finditer(line)]
            names += [m.group(1) for span in _CODE_SPAN.finditer(line) if (m := _ENV_SPAN.match(span.group(1).strip()))]
            if in_fence and (m := _ENV_ASSIGN.match(line)):
                names.append(m.group(1))
            for name in names:
                if name not in inventory.env:
                    add("env", name, number)
    return found


def _looks_like_a_path(span: str, inventory: Inventory) -> bool:
    """Whether a code span names a file of this repository (a link always does).

    `application/json` or `acme/shop` in a code span are not paths: a span with a slash and
    no extension counts only when it starts with ./ or ../ or with a top-level folder of the
    repository. A bare file name (`app.js`) counts, and is found anywhere in the tree.
    """
    if span.startswith(("./", "../")) or "." in PurePosixPath(span).name:
        return True
    return span.split("/", 1)[0] in inventory.top_level


def _exists(path: str, folder: PurePosixPath, inventory: Inventory) -> bool:
    if "/" not in path and "." in path:
        return path in inventory.names
    base = PurePosixPath(path.lstrip("/")) if path.startswith("/") else folder / path
    candidates = {_normal(base), _normal(PurePosixPath(path.lstrip("./")))}
    return any(c in inventory.files or c in inventory.dirs for c in candidates if c)


def _normal(path: PurePosixPath) -> str:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts)


@dataclass
class DocumentReport:
    """One document's review."""

    document: str
    exists: bool
    last_changed: str | None = None
    commit: str = ""
    source: str = ""
    age_days: int | None = None
    stale: bool = False
    dangling: list[dict[str, Any]] = field(default_factory=list)

    def needs_look(self) -> bool:
        return not self.exists or self.stale or bool(self.dangling)


def judge(
    document: str, change: Change | None, text: str | None, inventory: Inventory | None, *,
    now: datetime, max_age: timedelta,
) -> DocumentReport:  # fmt: skip
    """One document's verdict. Pure."""
    if text is None:
        return DocumentReport(document, exists=False)
    report = DocumentReport(document, exists=True)
    if change is not None:
        age = now - change.at
        report.last_changed, report.commit, report.source = change.at.isoformat(), change.commit, change.source
        report.age_days, report.stale = age.days, age > max_age
    if inventory is not None:
        report.dangling = [vars(r) for r in dangling(document, text, inventory)]
    return report


# --- the job --------------------------------------------------------------------------


def inventory_of(repo: Repository, documents: Iterable[str], max_files: int) -> Inventory:
    """Files, package.json scripts and environment variable names the repository has."""
    files = repo.files()
    scripts: set[str] = set()
    for path in files:
        if PurePosixPath(path).name == "package.json":
            scripts |= scripts_of(repo.read(path) or "")
    env: set[str] = set()
    skip = set(documents)
    code = [f for f in files if f not in skip and _CODE.search(f) and not f.endswith(".md")]
    # Examples and blueprints first: they name the variables an app expects.
    code.sort(key=lambda f: (".env" not in f and "render.yaml" not in f and "docker-compose" not in f, f))
    read = 0
    for path in code[:max_files]:
        env |= env_names(repo.read(path) or "")
        read += 1
    return Inventory(set(files), scripts, env, read)


def review(
    repo: Repository, options: DocsReviewOptions, now: datetime
) -> tuple[list[DocumentReport], list[dict[str, str]]]:
    """Every document's report, and the gaps (what could not be read)."""
    gaps: list[dict[str, str]] = []
    max_files = options.github.max_files if options.github else 10_000
    try:
        inventory: Inventory | None = inventory_of(repo, options.documents, max_files)
    except SourceError as exc:
        inventory = None
        gaps.append({"source": repo.display, "reason": f"could not list the repository: {exc}"})
    reports = []
    for document in options.documents:
        try:
            text = repo.read(document)
            change = repo.last_change(document) if text is not None else None
        except SourceError as exc:
            gaps.append({"source": f"{repo.display}/{document}", "reason": str(exc)})
            continue
        reports.append(judge(document, change, text, inventory, now=now, max_age=options.max_age))
    return reports, gaps


def describe(report: DocumentReport, max_age: timedelta) -> str:
    """One line about one document that needs a look."""
    if not report.exists:
        return f"{report.document} is missing"
    parts = []
    if report.stale:
        parts.append(f"last changed {report.age_days} days ago (older than {format_duration(max_age)})")
    if report.dangling:
        refs = ", ".join(f"{d['kind']} {d['ref']} (line {d['line']})" for d in report.dangling[:4])
        more = f" and {len(report.dangling) - 4} more" if len(report.dangling) > 4 else ""
        parts.append(f"refers to what the repository no longer has: {refs}{more}")
    return f"{report.document}: " + "; ".join(parts)


class DocsReviewJob:
    """Review the app's operations documents once a month."""

    def __init__(self, options: DocsReviewOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        opts = self.options
        now = datetime.now(UTC)
        try:
            repo: Any = (LocalRepository(Path(opts.path)) if opts.path is not None
                         else GitHubRepository(opts.github, opts.api_timeout))  # type: ignore[arg-type]  # fmt: skip
        except SourceError as exc:
            where = opts.path or (opts.github.repo if opts.github else "?")
            details: Mapping[str, Any] = {"documents": [], "gaps": [{"source": where, "reason": str(exc)}]}
            return Outcome(Status.WARN, f"docs review could not read {where}: {exc}", details)
        try:
            reports, gaps = review(repo, opts, now)
        finally:
            if hasattr(repo, "close"):
                repo.close()
        details = {"repository": repo.display, "documents": [vars(r) for r in reports], "gaps": gaps}
        flagged = [describe(r, opts.max_age) for r in reports if r.needs_look()]
        for line in flagged:
            ctx.log("docs.flagged", document=line.split(":")[0], detail=line)
        if flagged or gaps:
            items = flagged + [f"{g['source']}: could not read: {g['reason']}" for g in gaps]
            # One message per review for the human who updates the docs (the run itself worked).
            ctx.notify(Notice("warning", f"docs review: {len(items)} thing(s) need a look: " + "; ".join(items)[:900],
                              ("docs_review", f"{ctx.scheduled_at:%Y-%m}"),  # this month's review, its own issue
                              {"repository": repo.display, "items": items}))  # fmt: skip
            return Outcome(Status.WARN, "; ".join(items), details, alerted=True)
        newest = min((r.age_days for r in reports if r.age_days is not None), default=None)
        since = f" (newest change {newest} days ago)" if newest is not None else ""
        return Outcome(Status.OK, f"{len(reports)} documents current{since}", details)

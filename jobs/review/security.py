"""`security_review`: the quarterly look at security settings and access controls.

Checks the backup bucket (reference §8), the Atlas project (reference §7), the worker's own
configuration and the app's dependency posture. Every finding has a severity, the evidence
and the fix. FAIL on any high finding, WARN on a medium one or on a check that could not be
made (a named gap); low findings are recommendations. One Sentry message lists the high and
medium findings with their fixes (the run's own Crons check-in stays ok: the review worked).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import model_validator

from worker.http import HttpError
from worker.job import JobContext, JobOptions, Notice, Outcome, Status
from worker.schedule import Duration
from worker.storage import open_storage
from worker.vendors.atlas import ATLAS_API, AtlasAPI, AtlasAuth, AtlasError

Severity = Literal["high", "medium", "low"]
BROAD_ROLES = frozenset({"atlasAdmin", "readWriteAnyDatabase", "dbAdminAnyDatabase"})
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|access[_-]?key|dsn|credentials?|authorization|cookie)$",
    re.I,
)
_URL_PASSWORD = re.compile(r"://[^/@:\s]+:([^/@\s]+)@")
_LOOKBACK = timedelta(days=92)
#: Access list entries that admit every address (strings to compare, not addresses to bind).
OPEN_TO_ALL = frozenset({"0.0.0.0/0", "0.0.0.0", "::/0"})  # noqa: S104


@dataclass(frozen=True)
class Finding:
    """One thing the review found."""

    check: str
    severity: Severity
    title: str
    evidence: str
    fix: str


class AtlasTarget(JobOptions):
    """The Atlas project and cluster; credentials come from the environment as for atlas_backup."""

    group_id: str
    cluster: str
    api_url: str = ATLAS_API
    auth: AtlasAuth = "digest"
    api_timeout: Duration = timedelta(seconds=30)


class SecurityReviewOptions(JobOptions):
    """What to review: a backup job's storage (or a storage URL), Atlas, and key ages."""

    backup_job: str | None = None
    storage: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    atlas: AtlasTarget | None = None
    max_key_age: Duration = timedelta(days=90)
    iam_endpoint_url: str | None = None
    """Where to ask AWS IAM for the access key's age (AWS's own endpoint when unset)."""
    config_file: str | None = None
    """The schedule file to check for literal secrets (default: $OPSKEEPER_CONFIG or config/jobs.yaml)."""

    @model_validator(mode="after")
    def _one_storage(self) -> SecurityReviewOptions:
        if self.backup_job and self.storage:
            raise ValueError("give backup_job or storage, not both")
        return self


# --- the bucket ---------------------------------------------------------------------


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__))


def bucket_findings(client: Any, bucket: str, gcs: bool) -> tuple[list[Finding], list[dict[str, str]]]:
    """The bucket's protections, each missing one a finding; calls that are refused are gaps."""
    from botocore.exceptions import BotoCoreError, ClientError

    findings: list[Finding] = []
    gaps: list[dict[str, str]] = []
    where = f"s3://{bucket}"

    def ask(call: str, *missing: str) -> Any:
        """The answer, None when the setting is absent (one of the `missing` codes), or ... when the call failed."""
        try:
            answer = getattr(client, call)(Bucket=bucket)
        except ClientError as exc:
            if _code(exc) in missing:
                return None
            gaps.append({"source": f"{where} {call}", "reason": _code(exc)})
            return ...
        except BotoCoreError as exc:
            gaps.append({"source": f"{where} {call}", "reason": f"{type(exc).__name__}: {exc}"})
            return ...
        answer.pop("ResponseMetadata", None)
        return answer

    block = ask("get_public_access_block", "NoSuchPublicAccessBlockConfiguration")
    if block is not ...:
        settings = (block or {}).get("PublicAccessBlockConfiguration", {})
        off = [k for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
               if not settings.get(k)]  # fmt: skip
        if off and not gcs:
            findings.append(Finding(
                "bucket.public_access_block", "high", "Public access is not fully blocked on the backup bucket",
                f"{where}: " + ("no public access block configured" if block is None else f"off: {', '.join(off)}"),
                f"aws s3api put-public-access-block --bucket {bucket} --public-access-block-configuration "
                "BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true",
            ))  # fmt: skip
    status = ask("get_bucket_policy_status", "NoSuchBucketPolicy")
    if status not in (None, ...) and status.get("PolicyStatus", {}).get("IsPublic"):
        findings.append(Finding(
            "bucket.policy", "high", "The backup bucket's policy makes it public",
            f"{where}: GetBucketPolicyStatus IsPublic=true",
            f"remove the statements with Principal \"*\" from the bucket policy "
            f"(aws s3api get-bucket-policy --bucket {bucket})",
        ))  # fmt: skip
    encryption = ask("get_bucket_encryption", "ServerSideEncryptionConfigurationNotFoundError")
    if encryption is None:
        findings.append(Finding(
            "bucket.encryption", "medium", "The backup bucket has no default encryption",
            f"{where}: no server-side encryption configuration",
            f"aws s3api put-bucket-encryption --bucket {bucket} --server-side-encryption-configuration "
            "'{\"Rules\":[{\"ApplyServerSideEncryptionByDefault\":{\"SSEAlgorithm\":\"AES256\"}}]}' "
            "(or set the job's sse: aws:kms)",
        ))  # fmt: skip
    versioning = ask("get_bucket_versioning")
    if versioning is not ... and (versioning or {}).get("Status") != "Enabled":
        findings.append(Finding(
            "bucket.versioning", "medium", "Versioning is off on the backup bucket: a deleted or overwritten backup is gone",  # noqa: E501
            f"{where}: versioning {(versioning or {}).get('Status', 'never enabled')}",
            f"aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled",
        ))  # fmt: skip
    lifecycle = ask("get_bucket_lifecycle_configuration", "NoSuchLifecycleConfiguration")
    if lifecycle is not ...:
        rules = (lifecycle or {}).get("Rules", [])
        if not any(r.get("Status") == "Enabled" and r.get("AbortIncompleteMultipartUpload") for r in rules):
            findings.append(Finding(
                "bucket.multipart_lifecycle", "medium",
                "No lifecycle rule expires incomplete multipart uploads: failed backups keep costing storage",
                f"{where}: {len(rules)} lifecycle rule(s), none with AbortIncompleteMultipartUpload",
                "add a lifecycle rule with AbortIncompleteMultipartUpload {DaysAfterInitiation: 7}"
                + (" (GCS never expires them by itself)" if gcs else ""),
            ))  # fmt: skip
    if not gcs:
        lock = ask("get_object_lock_configuration", "ObjectLockConfigurationNotFoundError")
        if lock is None or (
            lock is not ... and lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled"
        ):
            findings.append(Finding(
                "bucket.object_lock", "low", "Backups are not immutable (no Object Lock)",
                f"{where}: Object Lock is not enabled",
                "create the backup bucket with Object Lock and a default COMPLIANCE retention longer than the "
                "retention policy's oldest backup; nobody, not even a stolen key, can then delete them",
            ))  # fmt: skip
    else:
        findings.append(Finding(
            "bucket.retention", "low", "Check the GCS bucket's retention policy (not visible through the S3 API)",
            f"{where}: Google Cloud Storage", "gcloud storage buckets update gs://BUCKET --retention-period=30d "
            "and lock it once it is right",
        ))  # fmt: skip
    return findings, gaps


# --- Atlas --------------------------------------------------------------------------


def atlas_findings(
    access_list: Mapping[str, Any], users: Mapping[str, Any], cluster: Mapping[str, Any], name: str
) -> list[Finding]:
    """Open network access, broad database users and a cluster without cloud backup. Pure."""
    found = []
    open_entries = [e.get("cidrBlock") or e.get("ipAddress") for e in access_list.get("results", [])
                    if (e.get("cidrBlock") or e.get("ipAddress")) in OPEN_TO_ALL]  # fmt: skip
    if open_entries:
        found.append(Finding(
            "atlas.access_list", "high", "The Atlas IP access list lets in the whole internet",
            f"access list has {', '.join(open_entries)}",
            "remove 0.0.0.0/0 and list your app's outbound IPs (Render shows them under the service's Connect tab)",
        ))  # fmt: skip
    broad = []
    for user in users.get("results", []):
        roles = sorted({r["roleName"] for r in user.get("roles", [])} & BROAD_ROLES)
        if roles:
            broad.append(f"{user['username']}@{user.get('databaseName', 'admin')} ({', '.join(roles)})")
    broad.sort()
    if broad:
        found.append(Finding(
            "atlas.database_users", "medium", "Database users with roles over every database",
            "; ".join(broad),
            "give the app a user with readWrite on its own database only, and the backup a user with backup/read",
        ))  # fmt: skip
    if not cluster.get("backupEnabled"):
        found.append(Finding(
            "atlas.cloud_backup", "high", f"Cloud backup is off for cluster {name}",
            f"cluster {name}: backupEnabled={cluster.get('backupEnabled')}",
            "enable Cloud Backup on the cluster (Atlas UI > Backup, or PATCH the cluster with backupEnabled: true)",
        ))  # fmt: skip
    return found


# --- the worker and the app ----------------------------------------------------------


def _walk(node: yaml.Node, path: str) -> Iterator[tuple[str, yaml.Node]]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _walk(value, f"{path}.{key.value}" if path else str(key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _walk(item, f"{path}[{index}]")
    elif isinstance(node, yaml.ScalarNode):
        yield path, node


def literal_secrets(text: str, file: str) -> list[Finding]:
    """Secret-named keys holding literal values, and URLs with literal passwords. Never shows a value."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []
    found = []
    for path, node in _walk(root, "") if root is not None else ():
        value = str(node.value)
        if node.tag != "tag:yaml.org,2002:str" or not value or "${" in value:
            continue
        name = path.rsplit(".", 1)[-1].split("[")[0]
        url = _URL_PASSWORD.search(value)
        if _SECRET_KEY.search(name) or (url and "${" not in url.group(1)):
            where = f"{file}:{node.start_mark.line + 1}: {path}"
            found.append(Finding(
                "worker.literal_secret", "high", "A secret is written into the schedule file",
                f"{where} holds a literal {'URL password' if url else 'value'} (not shown)",
                "move it to the environment (Render: a sync: false env var) and write ${VAR} in the YAML; "
                "then rotate it, since it is in the file's history",
            ))  # fmt: skip
    return found


def aws_key_age(
    endpoint_url: str | None, region: str | None, now: datetime, max_age: timedelta
) -> tuple[list[Finding], str]:
    """A finding when the AWS access key in use is older than `max_age`; and what IAM said."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session()
    credentials = session.get_credentials()
    if credentials is None:
        return [], "no AWS credentials"
    key_id = credentials.access_key
    try:
        keys = session.client("iam", endpoint_url=endpoint_url, region_name=region or "us-east-1").list_access_keys()
    except (ClientError, BotoCoreError) as exc:
        return [], f"not reported ({_code(exc) if isinstance(exc, ClientError) else type(exc).__name__})"
    for key in keys.get("AccessKeyMetadata", []):
        if key["AccessKeyId"] == key_id:
            age = now - key["CreateDate"].astimezone(UTC)
            masked = key_id[:4] + "…" + key_id[-4:]
            if age > max_age:
                return [Finding(
                    "worker.key_age", "medium", "The AWS access key is older than max_key_age",
                    f"key {masked} of {key.get('UserName')} was created {age.days} days ago (max {max_age.days})",
                    "create a new access key, put it in the worker's environment, then deactivate and delete the old one",  # noqa: E501
                )], f"{age.days} days"  # fmt: skip
            return [], f"{age.days} days"
    return [], "not reported (the key is not listed for this user)"


def dependency_findings(runs: list[Any]) -> list[Finding]:
    """Open high/critical advisories and an end-of-life Node.js, from each dependencies job's newest run."""
    newest: dict[str, Any] = {}
    for run in runs:
        if run.kind == "dependencies" and run.details.get("projects") is not None:
            newest[run.job_id] = run
    if not newest:
        return [Finding("app.dependencies", "low", "No dependency report in the last 92 days",
                        "no dependencies run in the ledger", "add a weekly dependencies job")]  # fmt: skip
    found = []
    for run in newest.values():
        checked = run.started_at.date().isoformat()
        for project in run.details["projects"]:
            serious = [a for a in project.get("advisories") or [] if a["severity"] in ("high", "critical")]
            if serious:
                found.append(Finding(
                    "app.advisories", "high", f"{project['name']}: {len(serious)} open high/critical advisories",
                    "; ".join(f"{a['severity']} {a['id']} {a['package']}@{a['version']}" for a in serious[:5])
                    + f" (checked {checked})",
                    "update the packages (pnpm update <pkg> / pnpm.overrides for transitive ones) and redeploy",
                ))  # fmt: skip
            node = project.get("node") or {}
            if node.get("status") == "eol":
                found.append(Finding(
                    "app.node_eol", "high",
                    f"{project['name']}: Node.js {node.get('declared') or node.get('line')} is end-of-life",
                    f"no more security releases since {node.get('eol_date')}",
                    f"move to Node.js {node.get('latest_lts') or 'the current LTS'} "
                    "(engines.node and Render's NODE_VERSION)",
                ))  # fmt: skip
    return found


# --- the job --------------------------------------------------------------------------

_ORDER = {"high": 0, "medium": 1, "low": 2}


class SecurityReviewJob:
    """Review the backup bucket, Atlas, the worker and the app's dependencies; FAIL on high findings."""

    def __init__(self, options: SecurityReviewOptions) -> None:
        self.options = options

    def run(self, ctx: JobContext) -> Outcome:
        opts = self.options
        now = datetime.now(UTC)
        findings: list[Finding] = []
        gaps: list[dict[str, str]] = []
        checked: dict[str, Any] = {}

        def attempt(source: str, step: Callable[[], None]) -> None:
            try:
                step()
            except (AtlasError, HttpError, OSError, ValueError, KeyError) as exc:
                gaps.append({"source": source, "reason": str(exc) or type(exc).__name__})

        attempt("storage", lambda: self._storage(ctx, findings, gaps, checked, now))
        if opts.atlas is not None:
            attempt("atlas", lambda: self._atlas(findings, gaps))
        attempt("worker", lambda: self._worker(findings))
        attempt("github", lambda: self._github(ctx, findings, checked))
        if ctx.history is not None:
            findings += dependency_findings(ctx.history.runs(now - _LOOKBACK, now, ("dependencies",)))
        findings.sort(key=lambda f: (_ORDER[f.severity], f.check))
        counts = {s: sum(1 for f in findings if f.severity == s) for s in ("high", "medium", "low")}
        for finding in findings:
            ctx.log("security.finding", check=finding.check, severity=finding.severity, title=finding.title)
        details = {"findings": [asdict(f) for f in findings], "counts": counts, "gaps": gaps, "checked": checked}
        worst = [f for f in findings if f.severity != "low"]
        summary = (f"{counts['high']} high, {counts['medium']} medium, {counts['low']} low"
                   + (": " + "; ".join(f.title for f in worst[:3]) if worst else "")
                   + (f"; could not check {', '.join(g['source'] for g in gaps)}" if gaps else ""))  # fmt: skip
        if not (worst or gaps):
            return Outcome(Status.OK, summary, details)
        # One message listing what needs fixing, each with its fix; the run itself worked.
        high = bool(counts["high"])
        ctx.notify(Notice("error" if high else "warning", f"security review: {summary}"[:900],
                          ("security_review", "high" if high else "medium",  # this quarter's own issue
                           f"{ctx.scheduled_at.year}-Q{(ctx.scheduled_at.month - 1) // 3 + 1}"),
                          {"findings": [f"[{f.severity}] {f.title}: {f.evidence}. Fix: {f.fix}" for f in worst],
                           "gaps": gaps}))  # fmt: skip
        return Outcome(Status.FAIL if high else Status.WARN, summary, details, alerted=True)

    def _targets(self, ctx: JobContext) -> list[tuple[str, str | None, str | None]]:
        """(storage URL, endpoint, region) to check: the named job's or storage, else every backup job's."""
        opts = self.options
        if opts.storage:
            return [(opts.storage, opts.endpoint_url, opts.region)]
        if opts.backup_job:
            spec = ctx.jobs.get(opts.backup_job)
            if spec is None or spec.kind != "backup":
                raise ValueError(f"backup_job {opts.backup_job!r} is not a backup job of this schedule")
            specs = [spec]
        else:
            specs = [s for s in ctx.jobs.values() if s.kind == "backup"]
        targets = [(s.options.storage, s.options.endpoint_url, s.options.region) for s in specs]
        return list(dict.fromkeys(targets))

    def _storage(self, ctx: JobContext, findings: list[Finding], gaps: list[dict[str, str]],
                 checked: dict[str, Any], now: datetime) -> None:  # fmt: skip
        opts = self.options
        targets = self._targets(ctx)
        checked["storage"] = [url for url, _, _ in targets]
        asked_iam = False
        for url, endpoint, region in targets:
            if not url.startswith("s3://"):
                findings.append(Finding(
                    "bucket.offsite", "high", "Backups are kept on the worker's own disk",
                    f"storage {url} is a local path: a Render worker's disk goes with the instance",
                    "back up to S3, GCS or R2 (storage: s3://bucket/prefix) so a lost worker loses no backups",
                ))  # fmt: skip
                continue
            storage: Any = open_storage(url, endpoint_url=endpoint, region=region)
            gcs = "storage.googleapis.com" in (endpoint or "")
            more, missing = bucket_findings(storage.client, storage.bucket, gcs)
            findings += more
            gaps += missing
            # One key serves every bucket (the standard AWS_* variables): ask IAM once.
            if not asked_iam and (endpoint is None or opts.iam_endpoint_url):
                asked_iam = True
                aged, checked["aws_key_age"] = aws_key_age(opts.iam_endpoint_url, region, now, opts.max_key_age)
                findings += aged

    def _atlas(self, findings: list[Finding], gaps: list[dict[str, str]]) -> None:
        target = self.options.atlas
        if target is None:
            return
        group = f"/groups/{target.group_id}"
        with AtlasAPI(target.api_url, target.auth, target.api_timeout) as api:
            access = api.results(f"{group}/accessList", "2023-01-01")
            users = api.results(f"{group}/databaseUsers", "2023-01-01")
            cluster = api.get(f"{group}/clusters/{target.cluster}", "2024-08-05")
        for what, listing in (("access list", access), ("database users", users)):
            if not listing.complete:  # what was not read was not checked: say so
                read = f"read {len(listing.results)} of {listing.total or 'more'} entries"
                gaps.append({"source": f"atlas {what}", "reason": f"{read} (the page limit): the rest not checked"})
        findings += atlas_findings({"results": access.results}, {"results": users.results}, cluster, target.cluster)

    def _github(self, ctx: JobContext, findings: list[Finding], checked: dict[str, Any]) -> None:
        """The token dependency_updates writes with: the scopes GitHub reports for it (classic tokens say)."""
        sources = [p.github for spec in ctx.jobs.values() if spec.kind == "dependency_updates"
                   for p in spec.options.projects if p.github is not None]  # fmt: skip
        if not sources or not os.environ.get("GITHUB_TOKEN"):
            return
        from worker.vendors.github import GitHub

        with GitHub(sources[0].repo, api_url=sources[0].api_url) as github:
            response = github.api.get(f"/repos/{sources[0].repo}")
        scopes = response.headers.get("x-oauth-scopes")
        checked["github_token_scopes"] = scopes if scopes is not None else "not reported (a fine-grained token)"
        extra = sorted({s.strip() for s in (scopes or "").split(",") if s.strip()} - {"repo", "public_repo"})
        if extra:
            findings.append(Finding(
                "github.token_scopes", "medium",
                f"GITHUB_TOKEN has scopes pull requests do not need: {', '.join(extra)}",
                f"GitHub reports the token's scopes as {scopes!r}",
                "use a fine-grained token on the app's repository with Contents and Pull requests: read and write",
            ))  # fmt: skip

    def _worker(self, findings: list[Finding]) -> None:
        if not os.environ.get("SENTRY_DSN", "").strip():
            findings.append(Finding(
                "worker.sentry_dsn", "medium", "SENTRY_DSN is not set: failed jobs alert nobody",
                "SENTRY_DSN is empty in the worker's environment",
                "set SENTRY_DSN on the Render worker (render.yaml has it as sync: false)",
            ))  # fmt: skip
        path = Path(self.options.config_file or os.environ.get("OPSKEEPER_CONFIG") or "config/jobs.yaml")
        if path.is_file():
            findings += literal_secrets(path.read_text(encoding="utf-8"), str(path))

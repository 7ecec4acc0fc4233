"""The security review: buckets on moto's S3 server, Atlas behind real HTTP Digest, the worker's own config."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from jobs.review.security import SecurityReviewJob, SecurityReviewOptions
from tests.conftest import Reply, Request, VendorAPI, digest_auth, write
from tests.test_atlas import PRIVATE, PUBLIC, REALM
from worker.job import JobContext, Notice, Outcome, Status
from worker.ledger import RunRecord, SqliteLedger

PROTECTIONS = ["public_access_block", "policy", "encryption", "versioning", "multipart_lifecycle", "object_lock"]


def protected_bucket(s3: Any, *, without: str | None = None) -> str:
    """A bucket with every protection the review looks for, except `without`."""
    name = f"backups-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=without != "object_lock")
    if without == "object_lock":
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    if without == "versioning":
        # Object Lock needs versioning, so a bucket without versioning has no lock either.
        s3.delete_bucket(Bucket=name)
        s3.create_bucket(Bucket=name)
    block = dict.fromkeys(("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True)
    if without == "public_access_block":
        block["RestrictPublicBuckets"] = False
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=block)
    if without == "policy":
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{name}/*"}]}))  # fmt: skip
    if without != "encryption":
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})  # fmt: skip
    if without != "multipart_lifecycle":
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [
            {"ID": "abort-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]})  # fmt: skip
    return name


def run(options: dict[str, Any], ledger: SqliteLedger | None = None, jobs: dict[str, Any] | None = None,
        notices: list[Notice] | None = None) -> Outcome:  # fmt: skip
    sent = notices if notices is not None else []
    ctx = JobContext(job_id="security", run_id="r", scheduled_at=datetime.now(UTC), deadline=time.monotonic() + 60,
                     state=None, cancel=threading.Event(), log=lambda e, **f: None, jobs=jobs or {},  # type: ignore[arg-type]
                     history=ledger, notify=sent.append)  # fmt: skip
    return SecurityReviewJob(SecurityReviewOptions.model_validate(options)).run(ctx)


def checks(outcome: Outcome, prefix: str = "") -> dict[str, str]:
    return {f["check"]: f["severity"] for f in outcome.details["findings"] if f["check"].startswith(prefix)}


@pytest.fixture
def quiet_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A worker with Sentry set and a clean schedule file, so only what a test adds is found."""
    monkeypatch.setenv("SENTRY_DSN", "http://key@127.0.0.1:9/1")
    config = write(tmp_path / "jobs.yaml", "jobs: []\n")
    monkeypatch.setenv("OPSKEEPER_CONFIG", str(config))
    return config


def test_fully_protected_bucket_has_no_bucket_findings(s3_endpoint: str, bucket: str, quiet_worker: Path) -> None:
    """Public access blocked, policy private, encrypted, versioned, uploads expire, Object Lock: nothing to say."""
    name = protected_bucket(boto3.client("s3", endpoint_url=s3_endpoint))
    notices: list[Notice] = []
    outcome = run({"storage": f"s3://{name}/db", "endpoint_url": s3_endpoint}, notices=notices)
    assert notices == []
    assert checks(outcome, "bucket.") == {}
    assert outcome.details["gaps"] == []
    assert outcome.status is Status.OK, outcome.summary


@pytest.mark.parametrize("missing", PROTECTIONS)
def test_each_missing_protection_is_its_own_finding(s3_endpoint: str, bucket: str, quiet_worker: Path,
                                                    missing: str) -> None:  # fmt: skip
    """Taking one protection away gives exactly that finding, with its severity, evidence and fix."""
    name = protected_bucket(boto3.client("s3", endpoint_url=s3_endpoint), without=missing)
    outcome = run({"storage": f"s3://{name}", "endpoint_url": s3_endpoint})
    expected = {"public_access_block": "high", "policy": "high", "encryption": "medium", "versioning": "medium",
                "multipart_lifecycle": "medium", "object_lock": "low"}  # fmt: skip
    found = checks(outcome, "bucket.")
    if missing == "versioning":  # a bucket without versioning cannot hold an Object Lock either
        assert found == {"bucket.versioning": "medium", "bucket.object_lock": "low"}
    else:
        assert found == {f"bucket.{missing}": expected[missing]}
    finding = next(f for f in outcome.details["findings"] if f["check"] == f"bucket.{missing}")
    assert name in finding["evidence"]
    assert finding["fix"]
    assert outcome.status is {"high": Status.FAIL, "medium": Status.WARN, "low": Status.OK}[expected[missing]]


def test_bare_bucket_and_local_storage(s3_endpoint: str, bucket: str, quiet_worker: Path, tmp_path: Path) -> None:
    """A bucket with no protection has them all missing; backups on the worker's disk are high."""
    notices: list[Notice] = []
    outcome = run({"storage": f"s3://{bucket}", "endpoint_url": s3_endpoint}, notices=notices)
    (notice,) = notices
    assert notice.level == "error"
    now = datetime.now(UTC)
    assert notice.fingerprint == ("security_review", "high", f"{now.year}-Q{(now.month - 1) // 3 + 1}")  # per quarter
    assert "Fix: aws s3api put-public-access-block" in notice.context["findings"][0]
    assert checks(outcome, "bucket.") == {"bucket.public_access_block": "high", "bucket.encryption": "medium",
                                          "bucket.versioning": "medium", "bucket.multipart_lifecycle": "medium",
                                          "bucket.object_lock": "low"}  # fmt: skip
    assert outcome.status is Status.FAIL
    assert outcome.summary.startswith("1 high, 3 medium, 1 low")
    local = run({"storage": str(tmp_path / "backups")})
    assert checks(local, "bucket.") == {"bucket.offsite": "high"}


def test_old_aws_key_is_reported(s3_endpoint: str, bucket: str, quiet_worker: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """IAM's CreateDate of the key in use is compared with max_key_age."""
    iam = boto3.client("iam", endpoint_url=s3_endpoint)
    user = f"opskeeper-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    options = {"storage": f"s3://{bucket}", "endpoint_url": s3_endpoint, "iam_endpoint_url": s3_endpoint}
    fresh = run({**options, "max_key_age": "1d"})
    assert "worker.key_age" not in checks(fresh)
    assert fresh.details["checked"]["aws_key_age"] == "0 days"
    old = run({**options, "max_key_age": "0s"})
    (finding,) = [f for f in old.details["findings"] if f["check"] == "worker.key_age"]
    assert finding["severity"] == "medium"
    assert user in finding["evidence"]
    assert key["AccessKeyId"] not in json.dumps(old.details)


def test_literal_secrets_in_the_schedule_are_high(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret-named key or a URL password written into the YAML is found by line; the value never shows."""
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    config = write(
        tmp_path / "jobs.yaml",
        """jobs:
  - id: deploys
    kind: deploys
    schedule: every 5m
    options:
      api_key: rnd_literalkey1234567890
      services: [{name: api, service_id: srv-abc}]
  - id: nightly
    kind: backup
    schedule: "0 3 * * *"
    options:
      uri: mongodb://backup:hunter2hunter2@db.example.com/shop
  - id: probe
    kind: health
    schedule: every 1m
    options:
      endpoints:
        - {name: api, url: "https://api.example.com/health", headers: {Authorization: "Bearer abcdef123456"}}
        - {name: web, url: "https://example.com/", headers: {Authorization: "${HEALTH_AUTH}"}}
  - id: fine
    kind: backup
    schedule: "0 4 * * *"
    options: {uri: "${MONGODB_URI}", storage: "s3://b"}
""",
    )
    outcome = run({"config_file": str(config)})
    literal = [f for f in outcome.details["findings"] if f["check"] == "worker.literal_secret"]
    assert [f["evidence"].split(" holds")[0] for f in literal] == [
        f"{config}:6: jobs[0].options.api_key", f"{config}:12: jobs[1].options.uri",
        f"{config}:18: jobs[2].options.endpoints[0].headers.Authorization"]  # fmt: skip
    for secret in ("rnd_literalkey", "hunter2", "abcdef123456"):
        assert secret not in json.dumps(outcome.details)
    assert checks(outcome, "worker.sentry_dsn") == {"worker.sentry_dsn": "medium"}
    assert outcome.status is Status.FAIL


def test_dependency_posture_from_the_newest_report(tmp_path: Path, quiet_worker: Path) -> None:
    """Open high/critical advisories and an EOL Node.js in the newest dependencies run are high findings."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    now = datetime.now(UTC)
    project = {"name": "server", "advisories": [
        {"id": 1, "severity": "critical", "package": "jsonwebtoken", "version": "8.5.1", "title": "forgery"},
        {"id": 2, "severity": "low", "package": "debug", "version": "2.6.8", "title": "ReDoS"}],
        "node": {"declared": "16.20.2 (.nvmrc)", "line": "16", "status": "eol", "eol_date": "2023-09-11",
                 "latest_lts": "24.11.1", "security_release": None}}  # fmt: skip
    for days, advisories in ((10, project["advisories"]), (2, project["advisories"][:1])):
        ledger.record(RunRecord(run_id=f"d{days}", job_id="deps", kind="dependencies", status=Status.WARN,
                                started_at=now - timedelta(days=days), finished_at=now,
                                details={"projects": [{**project, "advisories": advisories}]}))  # fmt: skip
    outcome = run({}, ledger)
    found = {f["check"]: f for f in outcome.details["findings"] if f["check"].startswith("app.")}
    assert set(found) == {"app.advisories", "app.node_eol"}
    assert found["app.advisories"]["evidence"].startswith("critical 1 jsonwebtoken@8.5.1")
    assert "24.11.1" in found["app.node_eol"]["fix"]
    assert outcome.status is Status.FAIL
    ledger.close()


# --- Atlas ----------------------------------------------------------------------------


def paged(items: list[dict[str, Any]]) -> Callable[[Request], Reply]:
    """A list answered as the Admin API pages it: pageNum from 1, itemsPerPage 100 by default, at most 500."""

    def route(request: Request) -> Reply:
        number = int(request.query.get("pageNum", ["1"])[0])
        size = int(request.query.get("itemsPerPage", ["100"])[0])
        if not 1 <= size <= 500 or number < 1:
            return Reply(400, {"error": 400, "errorCode": "INVALID_PARAMETER"})
        return Reply(200, {"results": items[(number - 1) * size : number * size], "totalCount": len(items)})

    return route


def serve_atlas(vendor: VendorAPI, *, open_list: bool, broad: bool, backup: bool, listed: int = 1) -> None:
    group = "/api/atlas/v2/groups/5f1a2b3c4d5e6f7a8b9c0d1e"
    access = [{"ipAddress": f"203.0.{n // 250}.{n % 250}", "cidrBlock": f"203.0.{n // 250}.{n % 250}/32",
               "comment": "Render outbound"} for n in range(listed)]  # fmt: skip
    if open_list:
        access.append({"cidrBlock": "0.0.0.0/0", "comment": "temporary"})
    users = [
        {"username": "shop-app", "databaseName": "admin", "roles": [{"roleName": "readWrite", "databaseName": "shop"}]}
    ]
    if broad:
        users.append({"username": "ops", "databaseName": "admin", "roles": [
            {"roleName": "atlasAdmin", "databaseName": "admin"},
            {"roleName": "readWriteAnyDatabase", "databaseName": "admin"}]})  # fmt: skip
    cluster = {"name": "shop", "clusterType": "REPLICASET", "backupEnabled": backup, "stateName": "IDLE"}
    vendor.routes[f"{group}/accessList"] = digest_auth(paged(access), PUBLIC, PRIVATE, REALM)
    vendor.routes[f"{group}/databaseUsers"] = digest_auth(paged(users), PUBLIC, PRIVATE, REALM)
    vendor.routes[f"{group}/clusters/shop"] = digest_auth(lambda r: Reply(200, cluster), PUBLIC, PRIVATE, REALM)


def atlas_options(vendor: VendorAPI) -> dict[str, Any]:
    return {"atlas": {"group_id": "5f1a2b3c4d5e6f7a8b9c0d1e", "cluster": "shop",
                      "api_url": f"{vendor.url}/api/atlas/v2",
                      "api_timeout": "500ms"}}  # fmt: skip


@pytest.fixture
def atlas_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("ATLAS_PRIVATE_KEY", PRIVATE)


def test_atlas_open_access_broad_users_and_no_backup(vendor: VendorAPI, atlas_keys: None, quiet_worker: Path) -> None:
    """0.0.0.0/0 and a cluster without cloud backup are high; broad roles are listed as medium."""
    serve_atlas(vendor, open_list=True, broad=True, backup=False)
    outcome = run(atlas_options(vendor))
    assert checks(outcome, "atlas.") == {"atlas.access_list": "high", "atlas.database_users": "medium",
                                         "atlas.cloud_backup": "high"}  # fmt: skip
    users = next(f for f in outcome.details["findings"] if f["check"] == "atlas.database_users")
    assert users["evidence"] == "ops@admin (atlasAdmin, readWriteAnyDatabase)"
    assert PRIVATE not in json.dumps(outcome.details)


def test_an_open_entry_on_a_later_page_is_found(vendor: VendorAPI, atlas_keys: None, quiet_worker: Path) -> None:
    """0.0.0.0/0 as the 651st access-list entry (Atlas pages 100 at a time by default): every page is read."""
    serve_atlas(vendor, open_list=True, broad=False, backup=True, listed=650)
    outcome = run(atlas_options(vendor))
    assert checks(outcome, "atlas.") == {"atlas.access_list": "high"}
    assert outcome.details["gaps"] == []


def test_atlas_locked_down_has_no_findings(vendor: VendorAPI, atlas_keys: None, quiet_worker: Path) -> None:
    """A listed IP, narrow users and cloud backup on: nothing about Atlas."""
    serve_atlas(vendor, open_list=False, broad=False, backup=True)
    outcome = run(atlas_options(vendor))
    assert checks(outcome, "atlas.") == {}
    assert outcome.details["gaps"] == []


@pytest.mark.parametrize("failure", ["401", "500", "timeout"])
def test_atlas_failures_are_gaps(vendor: VendorAPI, atlas_keys: None, quiet_worker: Path,
                                 monkeypatch: pytest.MonkeyPatch, failure: str) -> None:  # fmt: skip
    """A wrong key, a server error or a hang: a named gap and WARN, and the other checks still run."""
    serve_atlas(vendor, open_list=True, broad=False, backup=True)
    group = "/api/atlas/v2/groups/5f1a2b3c4d5e6f7a8b9c0d1e"
    if failure == "401":
        monkeypatch.setenv("ATLAS_PRIVATE_KEY", "wrong-private-key")
    elif failure == "500":
        vendor.routes[f"{group}/accessList"] = lambda r: Reply(500, {"error": 500})
    else:
        vendor.routes[f"{group}/accessList"] = lambda r: vendor.hang()
    monkeypatch.delenv("SENTRY_DSN")
    outcome = run(atlas_options(vendor))
    (gap,) = outcome.details["gaps"]
    cause = {"401": "ATLAS_PUBLIC_KEY / ATLAS_PRIVATE_KEY rejected (HTTP 401)", "500": "HTTP 500",
             "timeout": "timed out after 500ms"}[failure]  # fmt: skip
    assert gap["source"] == "atlas"
    assert gap["reason"] == f"Atlas API: GET {vendor.url}{group}/accessList: {cause}"
    assert checks(outcome, "atlas.") == {}
    assert outcome.status is Status.WARN
    assert checks(outcome, "worker.") == {"worker.sentry_dsn": "medium"}  # the worker was still reviewed


def test_every_backup_job_is_checked_by_default(s3_endpoint: str, bucket: str, quiet_worker: Path,
                                                tmp_path: Path) -> None:  # fmt: skip
    """With no backup_job or storage, each backup job's storage in the schedule is reviewed once."""
    from worker import registry
    from worker.schedule import load_config

    config = load_config(write(tmp_path / "jobs.yaml", f"""jobs:
  - {{id: a, kind: backup, schedule: "@daily", options: {{storage: "s3://{bucket}/a", endpoint_url: "{s3_endpoint}"}}}}
  - {{id: b, kind: backup, schedule: "@daily", options: {{storage: "{tmp_path / 'local'}"}}}}
  - {{id: c, kind: backup, schedule: "@daily", options: {{storage: "s3://{bucket}/a", endpoint_url: "{s3_endpoint}"}}}}
"""), registry.OPTIONS)  # fmt: skip
    outcome = run({}, jobs={j.id: j for j in config.jobs})
    assert outcome.details["checked"]["storage"] == [f"s3://{bucket}/a", str(tmp_path / "local")]
    found = [f["check"] for f in outcome.details["findings"] if f["check"].startswith("bucket.")]
    assert found.count("bucket.offsite") == 1
    assert found.count("bucket.versioning") == 1


def test_reviews_read_the_real_dependencies_report(tmp_path: Path, quiet_worker: Path) -> None:
    """The dependencies job's own report (recorded registry answers) feeds both reviews: Node.js 18 is EOL."""
    from jobs.dependencies.job import DependenciesJob
    from jobs.dependencies.options import DependenciesOptions
    from jobs.review.weekly import WeeklyReviewOptions, build
    from worker.demo import offline_registry
    from worker.ledger import JobState

    ledger = SqliteLedger(tmp_path / "ledger.db")
    with offline_registry() as registry:
        options = DependenciesOptions.model_validate({
            "projects": [{"name": "shop-server", "path": "config/examples/shop-server"}], "registry": registry,
            "node_index": f"{registry}/-/node/index.tab",
            "node_schedule": f"{registry}/-/node/schedule.json"})  # fmt: skip
        ctx = JobContext(job_id="app-deps", run_id="d", scheduled_at=datetime.now(UTC),
                         deadline=time.monotonic() + 60, state=JobState(ledger, "app-deps"),
                         cancel=threading.Event(), log=lambda e, **f: None)  # fmt: skip
        outcome = DependenciesJob(options).run(ctx)
    started = datetime.now(UTC) - timedelta(minutes=1)
    ledger.record(RunRecord(run_id="d", job_id="app-deps", kind="dependencies", status=outcome.status,
                            started_at=started, finished_at=started, details=outcome.details))  # fmt: skip
    security = run({}, ledger)
    (eol,) = [f for f in security.details["findings"] if f["check"] == "app.node_eol"]
    assert eol["title"] == "shop-server: Node.js 18.20.4 (.nvmrc) is end-of-life"
    assert eol["evidence"] == "no more security releases since 2025-04-30"
    report = build(WeeklyReviewOptions(), ledger, {}, datetime.now(UTC))
    (project,) = report["dependencies"]["projects"]
    assert project["majors_behind"] == ["dotenv", "express", "mongoose"]
    assert "shop-server: Node.js 18.20.4 (.nvmrc) is end-of-life" in [n["message"] for n in report["needs_attention"]]
    ledger.close()


@pytest.mark.parametrize(("scopes", "found"), [("repo, admin:org, delete_repo", "admin:org, delete_repo"),
                                               ("repo", None), (None, None)])  # fmt: skip
def test_the_update_tokens_scopes_are_listed(tmp_path: Path, quiet_worker: Path, monkeypatch: pytest.MonkeyPatch,
                                             scopes: str | None, found: str | None) -> None:  # fmt: skip
    """The token dependency_updates writes with: its scopes as GitHub reports them, and a finding for any extra."""
    from tests.fixtures.github_standin import GitHubStandIn
    from worker import registry
    from worker.schedule import load_config

    github = GitHubStandIn()
    github.repo("acme/shop").seed("main", {"README.md": b"# shop\n"})
    github.scopes = scopes
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_TestToken00000000000000000000")
    try:
        config = load_config(write(tmp_path / "jobs.yaml", f"""jobs:
  - id: updates
    kind: dependency_updates
    schedule: "0 7 1 * *"
    options:
      mode: pull_request
      projects: [{{name: server, github: {{repo: acme/shop, ref: main, path: server, api_url: "{github.url}"}}}}]
"""), registry.OPTIONS)  # fmt: skip
        outcome = run({}, jobs={j.id: j for j in config.jobs})
    finally:
        github.close()
    assert outcome.details["checked"]["github_token_scopes"] == (scopes or "not reported (a fine-grained token)")
    titles = [f["title"] for f in outcome.details["findings"] if f["check"] == "github.token_scopes"]
    assert titles == ([f"GITHUB_TOKEN has scopes pull requests do not need: {found}"] if found else [])

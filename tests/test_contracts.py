"""The clients against the vendors' published API descriptions (tests/fixtures/contracts/, reference §15): each
call a client makes is a described operation, each field the code reads is in that operation's answer, and the
checks fail when the description does not have what is asked of it. (Every VendorAPI stand-in is also checked
against the same descriptions at the end of each test that uses one: tests/conftest.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests import contracts
from tests.conftest import Reply, Request, VendorAPI, contract_problems, digest_auth
from worker.vendors.atlas import AtlasAPI
from worker.vendors.sentry_api import SentryAPI

ORG = "/api/0/organizations/{organization_id_or_slug}"
GROUP = "/api/atlas/v2/groups/{groupId}"
CLUSTER = f"{GROUP}/clusters/{{clusterName}}"
REPO = "/repos/{owner}/{repo}"

#: What the code reads of each answer (kept beside the code that reads it: worker/vendors/, jobs/backup/atlas.py,
#: jobs/review/security.py, jobs/review/vendors.py, jobs/deploys/marks.py, worker/reporting/sentry.py).
READS: dict[tuple[str, str, str], list[str]] = {
    ("sentry", "GET", f"{ORG}/issues/"): ["[].id", "[].shortId", "[].title", "[].culprit", "[].permalink",
                                          "[].level", "[].status", "[].count", "[].userCount", "[].firstSeen",
                                          "[].lastSeen", "[].project.slug"],
    ("sentry", "GET", f"{ORG}/events/"): ["data"],
    ("sentry", "GET", f"{ORG}/teams/"): ["[].id", "[].slug"],
    ("atlas", "GET", CLUSTER): ["clusterType", "backupEnabled"],
    ("atlas", "GET", f"{CLUSTER}/backup/schedule"): ["policies[].policyItems[].frequencyType"],
    ("atlas", "GET", f"{CLUSTER}/backup/snapshots"): ["results[].status", "results[].createdAt", "totalCount"],
    ("atlas", "GET", f"{CLUSTER}/backup/snapshots/shardedClusters"): ["results[].status", "results[].createdAt",
                                                                        "totalCount"],
    ("atlas", "GET", f"{GROUP}/accessList"): ["results[].cidrBlock", "results[].ipAddress", "totalCount"],
    ("atlas", "GET", f"{GROUP}/databaseUsers"): ["results[].username", "results[].databaseName",
                                                 "results[].roles[].roleName", "totalCount"],
    ("atlas", "POST", f"{CLUSTER}/backup/restoreJobs"): ["id", "finishedAt", "failed", "cancelled", "expired"],
    ("atlas", "GET", f"{CLUSTER}/backup/restoreJobs/{{restoreJobId}}"): ["id", "finishedAt", "failed", "cancelled",
                                                                        "expired"],
    ("render", "GET", "/services/{serviceId}/deploys"): ["[].cursor", "[].deploy.id", "[].deploy.status",
                                                         "[].deploy.commit.id", "[].deploy.commit.message",
                                                         "[].deploy.createdAt", "[].deploy.finishedAt",
                                                         "[].deploy.trigger"],
    ("render", "GET", "/services/{serviceId}"): ["serviceDetails", "autoDeploy"],
    ("render", "POST", "/services/{serviceId}/rollback"): ["id", "status", "commit.id"],
    ("render", "POST", "/services/{serviceId}/deploys"): ["id", "status", "commit.id"],
    ("render", "GET", "/metrics/cpu"): ["[].values[].value"],
    ("render", "GET", "/metrics/memory"): ["[].values[].value"],
    ("github", "GET", f"{REPO}"): ["default_branch"],
    ("github", "GET", f"{REPO}/git/trees/{{tree_sha}}"): ["tree[].path", "tree[].type", "tree[].size",
                                                          "tree[].sha", "tree[].mode", "truncated"],
    ("github", "GET", f"{REPO}/git/ref/{{ref}}"): ["object.sha"],
    ("github", "GET", f"{REPO}/git/commits/{{commit_sha}}"): ["tree.sha", "parents[].sha"],
    ("github", "GET", f"{REPO}/commits"): ["[].sha", "[].html_url", "[].commit.committer.date"],
    ("github", "GET", f"{REPO}/pulls"): ["[].number", "[].html_url", "[].head.ref", "[].state"],
    ("github", "POST", f"{REPO}/git/blobs"): ["sha"],
    ("github", "POST", f"{REPO}/git/trees"): ["sha"],
    ("github", "POST", f"{REPO}/git/commits"): ["sha"],
    ("github", "POST", f"{REPO}/pulls"): ["number", "html_url"],
}  # fmt: skip


@pytest.mark.parametrize(("key", "field"), [(k, f) for k, fields in READS.items() for f in fields],
                         ids=lambda v: v if isinstance(v, str) else v[2].rsplit("/", 2)[-2])  # fmt: skip
def test_every_field_read_is_in_the_answer_described(key: tuple[str, str, str], field: str) -> None:
    """A field the code reads of an answer is one the vendor's description says the answer has."""
    assert contracts.described(*key, field), f"{key[1]} {key[2]}: {field} is not in {key[0]}'s description"


def test_the_check_finds_a_field_the_description_lacks() -> None:
    """The field check can fail: a field no Atlas snapshot has is not described."""
    assert not contracts.described("atlas", "GET", f"{CLUSTER}/backup/snapshots", "results[].finishedAt")


@pytest.mark.parametrize("vendor", ["sentry", "atlas", "render", "github"])
def test_each_description_names_its_source(vendor: str) -> None:
    """A recorded description says where it came from: the repository (for GitHub's, the npm package that
    publishes github/rest-api-description's build), the file and the commit (the package's sha1)."""
    source = contracts.contract(vendor)["source"]
    assert source["repository"] in ("getsentry/sentry-api-schema", "mongodb/atlas-sdk-go", "render-oss/cli",
                                    "npm @octokit/openapi 23.0.2 (github/rest-api-description)")  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])


PUBLIC, PRIVATE = "pub", "0f1e2d3c-private"


def sentry_calls(api: SentryAPI) -> list[Callable[[], object]]:
    day = datetime(2026, 12, 1, tzinfo=UTC)
    return [lambda: api.issues("is:unresolved", "7d"), lambda: api.slow_transactions("7d", 10),
            lambda: api.error_count("1.0", "web", day, day + timedelta(hours=1)), api.teams,
            lambda: api.resolve_issue("42"), lambda: api.create_release("1.0", ["web"]),
            lambda: api.create_deploy("1.0", "production", name="api dep-1", started=None, finished=None)]  # fmt: skip


def atlas_calls(api: AtlasAPI) -> list[Callable[[], object]]:
    return [lambda: api.snapshots("g1", "c0"), lambda: api.snapshots("g1", "c1"),
            lambda: api.results("/groups/g1/accessList", "2023-01-01"),
            lambda: api.results("/groups/g1/databaseUsers", "2023-01-01"),
            lambda: api.get("/groups/g1/clusters/c0/backup/schedule", "2024-08-05")]  # fmt: skip


def answer_everything(vendor: VendorAPI) -> None:
    """Each described operation answers with an empty page (or object) of its shape."""

    def answer(request: Request) -> Reply:
        if request.path.endswith(("/issues/", "/teams/")) and request.method == "GET":
            return Reply(200, [])  # type: ignore[arg-type]
        if request.path.endswith(("/releases/", "/deploys/")):
            return Reply(201, {})
        if request.method == "PUT":
            return Reply(200, {"id": "42", "status": "resolved"})
        if request.path.endswith("/events/"):
            return Reply(200, {"data": [], "meta": {}})
        if request.path.endswith(("/clusters/c0", "/clusters/c1")):
            kind = "REPLICASET" if request.path.endswith("c0") else "SHARDED"
            return Reply(200, {"clusterType": kind, "backupEnabled": True})
        return Reply(200, {"results": [], "totalCount": 0} if "schedule" not in request.path else {"policies": []})

    for path in ("/api/0/organizations/acme/issues/", "/api/0/organizations/acme/issues/42/",
                 "/api/0/organizations/acme/releases/", "/api/0/organizations/acme/releases/1.0/deploys/",
                 "/api/0/organizations/acme/events/", "/api/0/organizations/acme/teams/"):  # fmt: skip
        vendor.routes[path] = answer
    for path in (
        "/groups/g1/clusters/c0",
        "/groups/g1/clusters/c0/backup/schedule",
        "/groups/g1/clusters/c0/backup/snapshots",
        "/groups/g1/clusters/c1",
        "/groups/g1/clusters/c1/backup/snapshots/shardedClusters",
        "/groups/g1/accessList",
        "/groups/g1/databaseUsers",
    ):
        vendor.routes["/api/atlas/v2" + path] = digest_auth(answer, PUBLIC, PRIVATE, "MMS Public API")


@pytest.fixture
def atlas_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("ATLAS_PRIVATE_KEY", PRIVATE)


def test_every_client_call_is_a_described_operation(vendor: VendorAPI, atlas_keys: None) -> None:
    """Each call of the Sentry and Atlas clients is an operation of the vendor's description: its method and path,
    its query parameters, its body's properties and, for Atlas, an Accept header one of its answers has."""
    answer_everything(vendor)
    with SentryAPI(vendor.url, "acme", "sntrys_t", ["web"], timedelta(seconds=5)) as sentry, \
            AtlasAPI(vendor.url + "/api/atlas/v2", "digest", timedelta(seconds=5)) as atlas:  # fmt: skip
        for call in [*sentry_calls(sentry), *atlas_calls(atlas)]:
            call()
    found = [contracts.find(contracts.vendor_of(r.path) or "", r.method, r.path) for r in vendor.requests]
    assert None not in found
    # Render's and GitHub's calls are checked where their stand-ins serve them (tests/test_deploys.py,
    # tests/test_github_changes.py, tests/test_updates.py), the restore jobs where the Atlas drill makes them.
    here = {k[2] for k in READS if k[0] in ("sentry", "atlas") and "restoreJobs" not in k[2]}
    assert {op.path for op in found if op} >= here
    assert contract_problems(vendor) == []


def test_a_call_the_description_lacks_fails(vendor: VendorAPI, atlas_keys: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """With the teams operation removed from Sentry's recorded description, the client's call to it is named as
    one the description does not have."""
    answer_everything(vendor)
    original = contracts.operations
    monkeypatch.setattr(contracts, "operations", lambda v: tuple(
        o for o in original(v) if v != "sentry" or not o.path.endswith("/teams/")))  # fmt: skip
    with SentryAPI(vendor.url, "acme", "sntrys_t", ["web"], timedelta(seconds=5)) as sentry:
        sentry.teams()
    problems = contract_problems(vendor)
    vendor.answers.clear()  # checked here; the fixture's own check would repeat it
    assert problems == ["GET /api/0/organizations/acme/teams/: no such operation in getsentry/sentry-api-schema's "
                        "description"]  # fmt: skip


@pytest.mark.parametrize(("request_", "problem"), [
    (("GET", "/api/atlas/v2/groups/g1/accessList", {"page": ["2"]}, None, None),
     "GET /api/atlas/v2/groups/{groupId}/accessList: query parameter 'page' is not described"),
    (("GET", "/api/atlas/v2/groups/g1/accessList", {}, None, {"accept": "application/json"}),
     "GET /api/atlas/v2/groups/{groupId}/accessList: Accept 'application/json' is not one of its answers' media "
     "types (application/vnd.atlas.2023-01-01+json)"),
    (("POST", "/api/0/organizations/acme/releases/", {}, {"version": "1.0"}, None),
     "POST /api/0/organizations/{organization_id_or_slug}/releases/: request body.projects is required and missing"),
    (("POST", "/api/0/organizations/acme/releases/", {}, {"version": "1.0", "projects": ["web"], "colour": "red"},
      None), "POST /api/0/organizations/{organization_id_or_slug}/releases/: request body.colour is not described"),
    (("DELETE", "/api/0/organizations/acme/issues/42/", {}, None, None),
     "DELETE /api/0/organizations/acme/issues/42/: no such operation in getsentry/sentry-api-schema's description"),
])  # fmt: skip
def test_requests_the_description_does_not_have_are_named(request_: tuple[Any, ...], problem: str) -> None:
    """An undescribed parameter, media type, body property or missing required one, or method, is named."""
    method, path, query, body, headers = request_
    assert problem in contracts.request_problems(contracts.vendor_of(path) or "", method, path, query, body, headers)


def test_an_answer_with_an_invented_field_is_named() -> None:
    """A stand-in inventing a field (here `finishedAt` on a snapshot) or giving one another type is named."""
    found = contracts.answer_problems("atlas", "GET", "/api/atlas/v2/groups/g1/clusters/c0/backup/snapshots", 200,
                                      {"results": [{"id": "s1", "finishedAt": "x"}], "totalCount": "1"})  # fmt: skip
    assert found == [
        "GET /api/atlas/v2/groups/{groupId}/clusters/{clusterName}/backup/snapshots: answer body.results[0].finishedAt "
        "is not described",
        "GET /api/atlas/v2/groups/{groupId}/clusters/{clusterName}/backup/snapshots: answer body.totalCount is str, "
        "described as integer",
    ]  # fmt: skip


def test_the_readmes_scopes_and_roles_are_the_descriptions() -> None:
    """Every Sentry scope and Atlas role the README's table of vendor calls names is one the recorded
    descriptions require of an operation opskeeper calls."""
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## The vendors' APIs", 1)[1].split("\n## ", 1)[0]
    rows = {vendor: [line for line in table.splitlines() if line.startswith(f"| {name} ")]
            for vendor, name in (("sentry", "Sentry"), ("atlas", "Atlas"))}  # fmt: skip
    scopes = {s for o in contracts.contract("sentry")["operations"] for s in o.get("scopes", [])}
    named = {s for line in rows["sentry"] for s in re.findall(r"`([a-z]+:[a-z]+)`", line)}
    assert named
    assert named <= scopes
    roles = {r for o in contracts.contract("atlas")["operations"] for r in o.get("roles", [])}
    said = {r for line in rows["atlas"] for r in re.findall(r"Project [A-Z][a-z]+(?: [A-Z][a-z]+)*", line)}
    assert said
    assert said <= roles, said - roles


def test_a_render_call_the_description_lacks_is_named() -> None:
    """Render's description is checked too: a field no deploy has, a query parameter no list takes, and a
    method Render has not are each named."""
    assert contracts.answer_problems("render", "POST", "/v1/services/srv-1/rollback", 201,
                                     {"id": "dep-2", "rolledBackFrom": "dep-1"}) == [
        "POST /services/{serviceId}/rollback: answer body.rolledBackFrom is not described"]  # fmt: skip
    assert contracts.request_problems("render", "GET", "/v1/services/srv-1/deploys", {"page": ["2"]}, None) == [
        "GET /services/{serviceId}/deploys: query parameter 'page' is not described"]  # fmt: skip
    assert contracts.request_problems("render", "DELETE", "/v1/services/srv-1/deploys", {}, None) == [
        "DELETE /v1/services/srv-1/deploys: no such operation in render-oss/cli's description"]  # fmt: skip


def test_a_github_call_the_description_lacks_is_named() -> None:
    """GitHub's description is checked too: a ref with its slash is one path parameter, and a parameter or a
    method GitHub has not is named."""
    assert contracts.request_problems("github", "GET", "/repos/acme/shop/git/ref/heads/main", {}, None) == []
    assert contracts.request_problems("github", "GET", "/repos/acme/shop/git/trees/main", {"depth": ["2"]}, None) == [
        "GET /repos/{owner}/{repo}/git/trees/{tree_sha}: query parameter 'depth' is not described"]  # fmt: skip
    assert contracts.request_problems("github", "PUT", "/repos/acme/shop/git/blobs", {}, None) == [
        "PUT /repos/acme/shop/git/blobs: no such operation in npm @octokit/openapi 23.0.2 "
        "(github/rest-api-description)'s description"]  # fmt: skip


GOOD_CHECKIN = {
    "monitor_slug": "nightly-backup",
    "status": "ok",
    "monitor_config": {
        "schedule": {"type": "crontab", "value": "0 3 * * *"},
        "checkin_margin": 5,
        "max_runtime": 60,
        "timezone": "Europe/Berlin",
        "failure_issue_threshold": 1,
        "recovery_threshold": 1,
        "owner": "team:4509",
    },
}


@pytest.mark.parametrize(("change", "problem"), [
    ({}, None),
    ({"owner": "team:ops"}, "owner 'team:ops' is not user:<id> or team:<id>"),
    ({"max_runtime": 10081}, "max_runtime 10081 is not 1..10080 minutes"),
    ({"schedule": {"type": "interval", "value": 5, "unit": "second"}}, "interval unit 'second' is not one of"),
    ({"checkin_margin": 0}, "checkin_margin 0 is not a whole number of at least 1"),
])  # fmt: skip
def test_checkins_are_held_to_sentrys_crons_rules(change: dict[str, Any], problem: str | None) -> None:
    """The encoded Crons rules pass a check-in Sentry takes and name what it would refuse or drop (a slug owner is
    dropped silently: Sentry's consumer reads the number after `team:`)."""
    item = {**GOOD_CHECKIN, "monitor_config": {**GOOD_CHECKIN["monitor_config"], **change}}
    found = contracts.checkin_problems(item)
    assert (found == []) if problem is None else any(problem in p for p in found), found
    assert contracts.checkin_problems({**GOOD_CHECKIN, "status": "missed"})


def test_what_is_read_of_a_package_document_is_what_npm_documents() -> None:
    """The fields read of a registry document (msgspec decodes only those) are in npm's description of the
    abbreviated document, except `time`, which only the full one has and which is read only from it."""
    import msgspec

    from worker.vendors import npm

    described = contracts.contract("npm")
    top = {f.encode_name for f in msgspec.structs.fields(npm._Document)}
    version = {f.encode_name for f in msgspec.structs.fields(npm._Version)}
    assert version <= set(described["abbreviated"]["version"])
    assert top - {"time"} <= set(described["abbreviated"]["top"])
    assert "time" not in described["abbreviated"]["top"]
    assert "time" in described["full"]["top"]

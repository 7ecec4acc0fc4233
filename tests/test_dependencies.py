"""Dependency checks against a local registry serving real recorded answers (never the live one)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest

from jobs.dependencies import semver
from jobs.dependencies.advisories import Ignore
from jobs.dependencies.job import Report, notices, verdict
from jobs.dependencies.options import DependenciesOptions
from jobs.dependencies.outdated import update_kind
from tests.conftest import FIXTURES, ROOT, Reply, opskeeper, send_reply
from tests.fixtures.registry_standin import NPM_NAME, bulk_refusal
from worker.job import Status

RECORDED = ROOT / "tests" / "fixtures" / "registry"
NODEJS = FIXTURES / "nodejs"
BULK = json.loads((FIXTURES / "npm-audit" / "audit-omit" / "bulk.json").read_text())
BULK_TODAY = {**BULK, **json.loads((ROOT / "tests" / "fixtures" / "advisories" / "multer-bulk.json").read_text())}


ADVISORIES = ROOT / "tests" / "fixtures" / "advisories"
OSV_RECORDS = {p.stem: json.loads(p.read_text()) for p in (ADVISORIES / "osv").glob("*.json")}
# npm's package-name rule (validate-npm-package-name, old names allowed upper case): anything else the registry
# refuses with 400, as it did for `git+ssh://git`.


def osv_affects(record: dict[str, Any], name: str, version: str) -> bool:
    """OSV's own test: the version lies in an introduced..fixed interval of the package's SEMVER events."""
    for affected in record["affected"]:
        if affected["package"] != {**affected["package"], "ecosystem": "npm", "name": name}:
            continue
        for span in affected["ranges"]:
            low = None
            for event in span["events"]:
                if "introduced" in event:
                    low = event["introduced"]
                elif low is not None:
                    above = low == "0" or semver.compare(version, low) >= 0
                    if above and semver.compare(version, event["fixed"]) < 0:
                        return True
                    low = None
    return False


class LocalRegistry:
    """GET /<package> from recorded documents (with ETags), POST bulk advisories from npm's recorded answer,
    Node.js release data under /node/, and OSV's querybatch and vulns under /osv/ from recorded records."""

    def __init__(self, bulk: dict[str, Any]) -> None:
        self.bulk = bulk
        self.gets = self.not_modified = self.posts = 0
        self.down = False
        self.bulk_status = 200
        self.node_down = False
        self.asked: list[str] = []
        self.posted: list[dict[str, Any]] = []
        self.osv_queries: list[dict[str, Any]] = []
        self.github_auth: list[str] = []
        self.github_status = 200
        #: OSV's page size for one query's vulnerabilities, when a test makes it page (None: all at once).
        self.osv_page_size: int | None = None
        #: Every field of a querybatch result this stand-in answered (for the check against OSV's document).
        self.osv_answer_fields: set[str] = set()
        #: name -> {"etag", "doc"}: documents this test serves besides the recorded ones (never written to disk).
        self.documents: dict[str, dict[str, Any]] = {}
        #: The registry's caching headers, when a test sets them (the npm registry sends `public, max-age=300`,
        #: an ETag, a Last-Modified and, through its CDN, an Age); `etags` False sends no ETag.
        self.cache_control: str | None = None
        self.age: str | None = None
        self.last_modified: str | None = None
        self.etags = True
        #: (If-None-Match, If-Modified-Since) of each package request.
        self.conditionals: list[tuple[str | None, str | None]] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/repos/"):  # the GitHub contents API
                    registry.github_auth.append(self.headers.get("Authorization", ""))
                    if registry.github_status != 200:
                        return self._send(registry.github_status, b'{"message": "Bad credentials"}', {})
                    name = self.path.split("?", 1)[0].split("/contents/", 1)[1]
                    source = FIXTURES / "pnpm" / "mern-v9" / unquote(name)
                    return self._send(200 if source.is_file() else 404,
                                      source.read_bytes() if source.is_file() else b"{}", {})  # fmt: skip
                if self.path in ("/node/index.tab", "/node/schedule.json"):
                    if registry.node_down or registry.down:
                        return self._send(503, b"down", {})
                    name = self.path.rsplit("/", 1)[1]
                    return self._send(200, (NODEJS / name).read_bytes(), {})
                if self.path.startswith("/osv/v1/vulns/"):
                    record = OSV_RECORDS.get(unquote(self.path.rsplit("/", 1)[1]))
                    return self._send(200 if record else 404, json.dumps(record or {"code": 5}).encode(), {})
                registry.gets += 1
                name = unquote(self.path.lstrip("/"))
                registry.asked.append(name)
                if registry.down:
                    return self._send(503, b"{}", {})
                if not NPM_NAME.match(name):
                    return self._send(400, b'{"error": "Invalid package name"}', {})
                path = RECORDED / f"{quote(name, safe='')}.json"
                if name not in registry.documents and not path.is_file():
                    return self._send(404, b'{"error": "Not found"}', {})
                record = registry.documents.get(name) or json.loads(path.read_text())
                body = json.dumps(record["doc"]).encode()
                # Not every recorded answer carried an ETag; a content hash is what a server would send.
                etag = record["etag"] or f'"{hashlib.sha1(body).hexdigest()}"'  # noqa: S324 - not security
                asked_etag, asked_since = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
                registry.conditionals.append((asked_etag, asked_since))
                headers = {k: v for k, v in (("ETag", etag if registry.etags else None),
                                             ("Cache-Control", registry.cache_control), ("Age", registry.age),
                                             ("Last-Modified", registry.last_modified)) if v}  # fmt: skip
                # RFC 9110 §13.2.2: If-None-Match, when sent, decides; If-Modified-Since only without it.
                unchanged = (asked_etag == etag and registry.etags) if asked_etag else (
                    asked_since is not None and asked_since == registry.last_modified)  # fmt: skip
                if unchanged:
                    registry.not_modified += 1
                    return self._send(304, b"", headers)
                return self._send(200, body, headers)

            def do_POST(self) -> None:
                asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/osv/v1/querybatch":
                    registry.osv_queries.append(asked)
                    if len(asked["queries"]) > 1000:  # OSV's own limit, refused as OSV refuses it
                        return self._send(400, b'{"code": 3, "message": "Too many queries."}', {})
                    results = []
                    for query in asked["queries"]:
                        name, version = query["package"]["name"], query["version"]
                        vulns = [{"id": i, "modified": r["modified"]} for i, r in sorted(OSV_RECORDS.items())
                                 if osv_affects(r, name, version)]  # fmt: skip
                        # Paged as OSV pages a long answer: a next_page_token to send back as the query's page_token.
                        size = registry.osv_page_size or len(vulns) or 1
                        start = int(str(query.get("page_token", "0")))
                        page = vulns[start : start + size]
                        more = {"next_page_token": str(start + size)} if start + size < len(vulns) else {}
                        results.append({**({"vulns": page} if page else {}), **more})
                        registry.osv_answer_fields.update(results[-1])
                    return self._send(200, json.dumps({"results": results}).encode(), {})
                registry.posts += 1
                registry.posted.append(asked)
                refused = bulk_refusal(asked)  # as strict as the registry
                if refused:
                    return self._send(400, json.dumps({"error": refused}).encode(), {})
                if registry.down:
                    return self._send(503, b"{}", {})
                if registry.bulk_status != 200:
                    return self._send(registry.bulk_status, b'{"error": "Method Not Allowed"}', {})
                # npm's recorded answer, for the packages asked about (the real endpoint leaves out the rest).
                answer = {name: advisories for name, advisories in registry.bulk.items() if name in asked}
                return self._send(200, json.dumps(answer).encode(), {})

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                send_reply(self, Reply(status, body, headers))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def args(self) -> list[str]:
        return ["--registry", self.url, "--node-index", f"{self.url}/node/index.tab",
                "--node-schedule", f"{self.url}/node/schedule.json", "--osv-url", f"{self.url}/osv"]  # fmt: skip


@contextlib.contextmanager
def local_registry() -> Iterator[LocalRegistry]:
    """A LocalRegistry answering with today's recorded advisories, shut down after use (every module's fixture)."""
    server = LocalRegistry(BULK_TODAY)
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def registry() -> Iterator[LocalRegistry]:
    with local_registry() as server:
        yield server


def deps(env: dict[str, str], registry: LocalRegistry, *paths: Path) -> tuple[int, dict[str, Any]]:
    result = opskeeper("deps", *map(str, paths), *registry.args(), "--json", env=env)
    assert result.stdout.startswith("{"), result.stderr
    return result.code, json.loads(result.stdout)


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_every_vulnerable_package_in_npms_answer_is_reported_at_its_severity(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """audit-omit: each advisory npm's own bulk answer names is reported, with npm's severity."""
    project = copy_project(FIXTURES / "npm-audit" / "audit-omit", tmp_path / "audit-omit")
    code, out = deps(env, registry, project)
    [report] = out["projects"]
    found = {(a["package"], a["id"]): a["severity"] for a in report["advisories"]}
    # npm's answer lists every advisory of each package; the installed versions decide which apply,
    # judged here by npm's own semver rules (tests/test_semver.py holds ours to npm's module) against the lockfile.
    installed = {}
    for key, info in json.loads((project / "package-lock.json").read_text())["packages"].items():
        if key:
            installed.setdefault(info.get("name") or key.rsplit("node_modules/", 1)[1], set()).add(info["version"])
    expected = {
        (name, adv["id"]): adv["severity"]
        for name, advs in BULK.items()
        for adv in advs
        if any(semver.satisfies(v, adv["vulnerable_versions"], include_prerelease=True) for v in installed[name])
    }
    assert found == expected
    assert ("atob", 646) not in found  # atob 2.1.1 is past the vulnerable <=2.0.3
    assert len(found) >= 10
    assert out["status"] == "fail"
    assert code == 2
    assert report["lockfile_version"] == "2"


def test_vulnerable_transitive_package_is_traced_to_its_direct_dependency(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """Every advisory says which direct dependency (nyc or tap) pulls the package in."""
    project = copy_project(FIXTURES / "npm-audit" / "audit-omit", tmp_path / "audit-omit")
    _, out = deps(env, registry, project)
    advisories = out["projects"][0]["advisories"]
    assert advisories
    for advisory in advisories:
        assert advisory["via"], advisory
        assert all(chain[0] in ("nyc", "tap") and chain[-1] == advisory["package"] for chain in advisory["via"])
    mixin = next(a for a in advisories if a["package"] == "mixin-deep")
    assert len(mixin["via"][0]) > 2  # a real chain, not just the package itself


def test_outdated_direct_dependencies_of_the_mern_server(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """Locked, wanted (what `pnpm update` installs), latest and the kind of update, from the registry's data."""
    project = copy_project(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    _, out = deps(env, registry, project)
    [report] = out["projects"]
    express = next(d for d in report["direct"] if d["name"] == "express")
    doc = json.loads((RECORDED / "express.json").read_text())["doc"]
    fours = sorted((v for v in doc["versions"] if v.startswith("4.") and "-" not in v),
                   key=lambda v: tuple(int(x) for x in v.split(".")))  # fmt: skip
    assert (express["specifier"], express["locked"]) == ("^4.19.2", "4.21.2")
    assert express["wanted"] == fours[-1]
    assert express["latest"] == doc["dist-tags"]["latest"]
    assert express["update"] == update_kind("4.21.2", doc["dist-tags"]["latest"]) == "major"
    assert report["resolved_count"] == 166
    assert {d["name"] for d in report["direct"]} >= {"cors", "dotenv", "express", "mongoose"}


def test_etag_cache_makes_the_second_check_ask_only_for_changes(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """The second run sends If-None-Match for every package and gets 304s back."""
    project = copy_project(FIXTURES / "pnpm" / "mern-v9" / "client", tmp_path / "client")
    deps(env, registry, project)
    first = registry.gets
    assert registry.not_modified == 0
    deps(env, registry, project)
    assert registry.gets == 2 * first
    assert registry.not_modified == first


def test_eol_runtime_fails(tmp_path: Path, env: dict[str, str], registry: LocalRegistry) -> None:
    """A project pinned to Node.js 20 (end of life 2026-04-30) fails, with the date."""
    project = copy_project(FIXTURES / "pnpm" / "workspace-v6" / "packages" / "server", tmp_path / "api")
    (project / ".nvmrc").write_text("20.11.0\n")
    code, out = deps(env, registry, project)
    node = out["projects"][0]["node"]
    assert (node["line"], node["status"], node["eol_date"]) == (20, "eol", "2026-04-30")
    assert code == 2


@pytest.mark.slow
def test_everything_down_is_an_error_and_still_prints_the_document(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """Registry, advisories and Node.js data all 503: exit 3, one line naming the registry, and --json a document."""
    registry.down = True
    project = copy_project(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    result = opskeeper("deps", str(project), *registry.args(), "--osv-url", "http://127.0.0.1:9/osv", "--json",
                       env=env, timeout=120)  # fmt: skip
    assert result.code == 3
    last = result.stderr.strip().splitlines()[-1]
    # One line, every source in a fixed order: the registry's documents, its advisories, OSV, Node.js data.
    wanted = (rf"opskeeper: nothing could be checked: 10 of 10 package documents could not be fetched \(.*\): "
              rf"npm registry: GET {re.escape(registry.url)}/\S+: HTTP 503 after 4 attempts; npm registry: POST "
              rf"{re.escape(registry.url)}/-/npm/v1/security/advisories/bulk: HTTP 503 after 4 attempts; OSV: .*; "
              rf"Node.js release data: GET {re.escape(registry.url)}/node/\S+: HTTP 503 after 4 attempts")  # fmt: skip
    assert re.fullmatch(wanted, last), result.stderr
    assert "Traceback" not in result.stderr
    assert "never retrieved" not in result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "error"
    assert {g["source"] for g in out["gaps"]} == {"registry", "advisories (registry)", "advisories (osv)",
                                                  "Node.js release data"}  # fmt: skip


@pytest.mark.slow
def test_bulk_endpoint_405_leaves_the_rest_of_the_report(tmp_path: Path, env: dict[str, str],
                                                         registry: LocalRegistry) -> None:  # fmt: skip
    """The registry's bulk endpoint answering 405: the outdated list and the Node.js verdict stay, the gap is named."""
    registry.bulk_status = 405
    project = copy_project(FIXTURES / "pnpm" / "mern-v9" / "server", tmp_path / "server")
    (project / ".nvmrc").write_text("22\n")
    result = opskeeper("deps", str(project), *registry.args(), "--osv-url", "http://127.0.0.1:9/osv", "--json",
                       env=env, timeout=120)  # fmt: skip
    out = json.loads(result.stdout)
    [gap, fallback] = out["gaps"]
    assert (gap["source"], fallback["source"]) == ("advisories (registry)", "advisories (osv)")
    assert "HTTP 405" in gap["error"]
    [report] = out["projects"]
    assert next(d for d in report["direct"] if d["name"] == "express")["latest"]
    assert report["node"]["line"] == 22
    assert out["status"] == "warn"
    assert result.code == 1


def test_osv_answers_when_the_bulk_endpoint_is_not_served(tmp_path: Path, env: dict[str, str],
                                                          registry: LocalRegistry) -> None:  # fmt: skip
    """Bulk 405, OSV up: multer 1.4.5-lts.2's three advisories come from OSV, and the gap says so."""
    registry.bulk_status = 405
    project = copy_project(ROOT / "tests" / "fixtures" / "projects" / "multer-lts", tmp_path / "uploads")
    code, out = deps(env, registry, project)
    [gap] = out["gaps"]
    assert gap["effect"] == "advisories were checked with OSV instead"
    found = {a["id"]: a for a in out["projects"][0]["advisories"] if a["package"] == "multer"}
    assert set(found) == set(OSV_RECORDS)
    assert all(a["version"] == "1.4.5-lts.2" and a["severity"] == "high" for a in found.values())
    assert found["GHSA-44fp-w29j-9vj5"]["fixed_in"] == "2.0.0"
    assert found["GHSA-g5hg-p3ph-g8qg"]["fixed_in"] == "2.0.1"
    assert code == 2


def test_registry_and_osv_together_name_each_advisory_once(tmp_path: Path, env: dict[str, str],
                                                           registry: LocalRegistry) -> None:  # fmt: skip
    """`--advisories registry,osv`: the two advisories both know are one entry each, with both sources."""
    project = copy_project(ROOT / "tests" / "fixtures" / "projects" / "multer-lts", tmp_path / "uploads")
    result = opskeeper("deps", str(project), *registry.args(), "--advisories", "registry,osv", "--json", env=env)
    out = json.loads(result.stdout)
    multer = [a for a in out["projects"][0]["advisories"] if a["package"] == "multer"]
    assert len(multer) == 3
    by_source = {tuple(a["sources"]) for a in multer}
    assert by_source == {("osv", "registry"), ("osv",)}
    assert out["gaps"] == []


def test_prerelease_lts_version_is_vulnerable_to_its_advisory(tmp_path: Path, env: dict[str, str],
                                                             registry: LocalRegistry) -> None:  # fmt: skip
    """multer@1.4.5-lts.2 against `<2.0.0` (GHSA-44fp-w29j-9vj5): reported high, as npm audit reports it."""
    project = copy_project(ROOT / "tests" / "fixtures" / "projects" / "multer-lts", tmp_path / "uploads")
    code, out = deps(env, registry, project)
    multer = {a["id"]: a for a in out["projects"][0]["advisories"] if a["package"] == "multer"}
    assert set(multer) == {1104917, 1104916}
    assert multer[1104917]["via"] == [["multer"]]
    assert code == 2


@pytest.mark.slow
def test_node_release_data_unreachable_is_a_gap_and_the_last_copy_still_judges(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """Node.js data down: the first check says the runtime was not checked; after one good fetch, EOL still fails."""
    project = copy_project(FIXTURES / "pnpm" / "workspace-v6" / "packages" / "server", tmp_path / "api")
    (project / ".nvmrc").write_text("20.11.0\n")
    registry.node_down = True
    _, out = deps(env, registry, project)
    assert [g["source"] for g in out["gaps"]] == ["Node.js release data"]
    assert out["gaps"][0]["effect"] == "the Node.js runtime was not checked"
    assert out["projects"][0]["node"] is None
    registry.node_down = False
    deps(env, registry, project)
    registry.node_down = True
    code, out = deps(env, registry, project)
    assert out["gaps"][0]["effect"].startswith("judged with the copy fetched on ")
    assert out["projects"][0]["node"]["status"] == "eol"
    assert code == 2


def test_unreadable_lockfile_is_reported_with_its_path(
    tmp_path: Path, env: dict[str, str], registry: LocalRegistry
) -> None:
    """A broken lockfile is a problem naming the file; the run fails but reports the other projects."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "package.json").write_text("{}")
    (broken / "pnpm-lock.yaml").write_text("lockfileVersion: '9.0'\nimporters: [oops\n")
    _code, out = deps(env, registry, broken)
    assert out["projects"][0]["problems"][0].startswith(f"{broken / 'pnpm-lock.yaml'}:3:1: not valid YAML: ")
    assert out["status"] == "fail"


# --- ignores and alerts, as pure functions -----------------------------------------------------


def report_with(severity: str) -> Report:
    advisory = {"package": "semver", "version": "4.3.1", "id": 31, "severity": severity, "title": "ReDoS",
                "url": "u", "fixed_in": "4.3.2", "via": [["nyc", "semver"]]}  # fmt: skip
    return Report("client", "client", advisories=[advisory])


def test_ignored_advisory_alerts_again_after_its_expiry() -> None:
    """An ignore with `until` silences the advisory until that date, then it fails and alerts again."""
    ignore = Ignore(advisory="31", reason="no fix released yet", until=date(2026, 12, 31))
    options = DependenciesOptions(projects=(), ignore=(ignore,))
    reports = [report_with("high")]
    assert verdict(reports, options, date(2026, 12, 1))[0] is Status.OK
    assert notices(reports, options, {}, date(2026, 12, 1)) == []
    assert verdict(reports, options, date(2027, 1, 1))[0] is Status.FAIL
    assert len(notices(reports, options, {}, date(2027, 1, 1))) == 1


def test_same_advisory_alerts_once_unless_its_severity_rises() -> None:
    """Next week's identical advisory is quiet; a severity raised from moderate to critical alerts again."""
    options = DependenciesOptions(projects=())
    alerted: dict[str, Any] = {}
    assert len(notices([report_with("moderate")], options, alerted, date(2026, 11, 1))) == 1
    assert notices([report_with("moderate")], options, alerted, date(2026, 11, 8)) == []
    again = notices([report_with("critical")], options, alerted, date(2026, 11, 15))
    assert len(again) == 1
    assert again[0].level == "error"
    assert again[0].message == "client: critical advisory 31 in semver@4.3.1 (ReDoS) via semver <- nyc"


@pytest.mark.live
def test_live_registry_document_has_what_we_read() -> None:
    """Opt-in (-m live): the live registry's abbreviated document still has dist-tags and versions."""
    import httpx

    from worker.vendors.npm import ABBREVIATED, trim

    response = httpx.get("https://registry.npmjs.org/express", headers={"Accept": ABBREVIATED}, timeout=60)
    doc = trim(response.json())
    assert "latest" in doc["dist-tags"]
    assert doc["dist-tags"]["latest"] in doc["versions"]


def test_project_read_from_github(tmp_path: Path, env: dict[str, str], registry: LocalRegistry) -> None:
    """A project given as github: {repo, ref, path} is fetched through the contents API with GITHUB_TOKEN."""
    from tests.conftest import write

    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: deps
    kind: dependencies
    schedule: "0 6 * * 1"
    options:
      registry: {registry.url}
      node_index: {registry.url}/node/index.tab
      node_schedule: {registry.url}/node/schedule.json
      projects:
        - name: server
          github: {{repo: acme/shop, ref: main, path: server, api_url: "{registry.url}"}}
""")  # fmt: skip
    token = "ghp_TestGitHubToken000000000000"
    result = opskeeper("run-now", "deps", "--config", str(config), "--json", env={**env, "GITHUB_TOKEN": token})
    out = json.loads(result.stdout)
    [project] = out["details"]["projects"]
    assert (project["path"], project["lockfile_version"], project["resolved_count"]) == (
        "github:acme/shop/server", "9.0", 166
    )  # fmt: skip
    assert registry.github_auth
    assert all(a == f"Bearer {token}" for a in registry.github_auth)
    assert token not in result.stdout + result.stderr


def test_the_typed_read_is_trim_of_the_whole_document() -> None:
    """Reading only trim()'s fields (msgspec) gives exactly trim() of the whole parsed document, on every real
    registry answer recorded here (566 abbreviated documents, as pnpm and npm read them, and the trimmed ones)."""
    import gzip

    import orjson

    from worker.vendors.npm import read_document, trim

    answers = [gzip.decompress(p.read_bytes()) for p in sorted((FIXTURES / "registry-full").glob("*.json.gz"))]
    answers += [json.dumps(json.loads(p.read_text())["doc"]).encode() for p in sorted(RECORDED.glob("*.json"))]
    assert len(answers) > 566
    for content in answers:
        assert read_document(content) == trim(orjson.loads(content))


def test_odd_versions_read_as_trim_reads_them() -> None:
    """Old packages' list of engines, `deprecated: false` and a null version read as trim() reads them."""
    from worker.vendors.npm import read_document

    content = json.dumps({"name": "old", "dist-tags": {"latest": "1.0.0"}, "versions": {
        "0.1.0": {"engines": ["node", "rhino"], "deprecated": False, "dependencies": {"x": "1"}},
        "0.2.0": None, "1.0.0": {"engines": {"node": ">=0.8", "npm": "1"}, "deprecated": "use new"}},
        "time": {"0.1.0": "2011-01-01T00:00:00Z", "gone": "2012-01-01T00:00:00Z", "modified": "x"},
    }).encode()  # fmt: skip
    assert read_document(content) == {"name": "old", "dist-tags": {"latest": "1.0.0"}, "versions": {
        "0.1.0": {}, "0.2.0": {}, "1.0.0": {"deprecated": "use new", "engines": {"node": ">=0.8"}}},
        "time": {"0.1.0": "2011-01-01T00:00:00Z"}}  # fmt: skip


@pytest.mark.parametrize("content", [b'{"dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": [}', b"[1, 2]",
                                     b'{"versions": {"1.0.0": 7}}', b""])  # fmt: skip
def test_broken_document_is_a_value_error(content: bytes) -> None:
    """Truncated, non-object or misshapen registry answers raise ValueError, never a half document."""
    from worker.vendors.npm import read_document

    with pytest.raises(ValueError, match=r"."):  # msgspec's own words for what is wrong, and where
        read_document(content)


def test_github_refusing_one_project_leaves_the_others(tmp_path: Path, env: dict[str, str],
                                                       registry: LocalRegistry) -> None:  # fmt: skip
    """GitHub answering 401 for one project: that project has a problem and a github gap, the local one is reported."""
    from tests.conftest import write

    registry.github_status = 401
    local = copy_project(FIXTURES / "pnpm" / "mern-v9" / "client", tmp_path / "client")
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: deps
    kind: dependencies
    schedule: "0 6 * * 1"
    options:
      registry: {registry.url}
      node_index: {registry.url}/node/index.tab
      node_schedule: {registry.url}/node/schedule.json
      advisory_fallback: none
      projects:
        - {{name: client, path: "{local}"}}
        - {{name: server, github: {{repo: acme/shop, ref: main, path: server, api_url: "{registry.url}"}}}}
""")  # fmt: skip
    result = opskeeper("run-now", "deps", "--config", str(config), "--json",
                       env={**env, "GITHUB_TOKEN": "ghp_TestGitHubToken000000000000"})  # fmt: skip
    out = json.loads(result.stdout)
    client, server = out["details"]["projects"]
    assert client["direct"]
    assert server["problems"][0].startswith("could not be read from GitHub: ")
    assert [g["source"] for g in out["details"]["gaps"]] == ["github"]
    assert out["status"] == "fail"
    assert "ghp_TestGitHubToken" not in result.stdout + result.stderr

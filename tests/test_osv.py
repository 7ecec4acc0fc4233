"""OSV's querybatch as its published description pages it (google/osv.dev docs/api/post-v1-querybatch.md): a
result with `next_page_token` is asked again with it as the query's `page_token`, until none is left."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_dependencies import LocalRegistry, local_registry
from worker.http import HttpError
from worker.vendors import osv
from worker.vendors.osv import Osv


@pytest.fixture
def registry() -> Iterator[LocalRegistry]:
    with local_registry() as server:
        yield server


def ask(server: LocalRegistry, packages: dict[str, set[str]]) -> dict[str, list[dict[str, Any]]]:
    async def run() -> dict[str, list[dict[str, Any]]]:
        client = Osv(f"{server.url}/osv")
        try:
            return await client.advisories(packages)
        finally:
            await client.close()

    return asyncio.run(run())


def test_a_paged_answer_is_followed_to_its_end(registry: LocalRegistry) -> None:
    """multer 1.4.4 has three advisories; answered one page at a time, all three are found, the later pages asked
    for with the tokens OSV gave, and only for the query that had more."""
    whole = ask(registry, {"multer": {"1.4.4"}, "express": {"4.21.2"}})
    registry.osv_queries.clear()
    registry.osv_page_size = 1
    paged = ask(registry, {"multer": {"1.4.4"}, "express": {"4.21.2"}})
    assert {a["id"] for a in paged["multer"]} == {a["id"] for a in whole["multer"]}
    assert len(paged["multer"]) == 3
    assert [[q.get("page_token") for q in batch["queries"]] for batch in registry.osv_queries] == [
        [None, None], ["1"], ["2"]]  # fmt: skip
    assert registry.osv_queries[1]["queries"][0]["package"]["name"] == "multer"


def test_paging_without_end_is_an_error_not_a_short_answer(registry: LocalRegistry,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Past the round limit the source fails, saying so: a partial list is never given as the whole."""
    monkeypatch.setattr(osv, "MAX_ROUNDS", 2)
    registry.osv_page_size = 1
    with pytest.raises(HttpError, match=r"still paging after 2 rounds \(1 queries with a next_page_token\)"):
        ask(registry, {"multer": {"1.4.4"}})


def recorded_without_github_severity(**severity: str) -> dict[str, Any]:
    """The recorded OSV record of GHSA-44fp-w29j-9vj5 as a non-GitHub database would give it: no
    database_specific.severity, its severity only as CVSS vectors (`severity[]`, the OSV schema's field)."""
    import json
    from pathlib import Path

    record = json.loads((Path(__file__).parent / "fixtures" / "advisories" / "osv" / "GHSA-44fp-w29j-9vj5.json")
                        .read_text())  # fmt: skip
    record = {**record, "id": "OSV-2026-0001", "aliases": [], "database_specific": {}}
    return {**record, "severity": [{"type": kind, "score": vector} for kind, vector in severity.items()]}


@pytest.mark.parametrize(("severity", "expected"), [
    ({"CVSS_V3": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"}, "high"),  # 7.5
    ({"CVSS_V3": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}, "critical"),  # 9.8
    ({"CVSS_V3": "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}, "low"),  # 1.8
    ({"CVSS_V4": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:N/VI:N/VA:H/SC:N/SI:N/SA:N",
      "CVSS_V3": "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}, "high"),  # v4 (8.7) over v3
    ({"CVSS_V2": "AV:N/AC:L/Au:N/C:N/I:N/A:P"}, "moderate"),  # 5.0, Medium
    ({"CVSS_V3": "not a vector"}, "moderate"),  # unreadable: the default, as with no severity at all
])  # fmt: skip
def test_severity_of_a_record_without_githubs_label_is_its_cvss_rating(severity: dict[str, str],
                                                                        expected: str) -> None:  # fmt: skip
    """A record whose only severity is a CVSS vector is rated by that vector's base score (it was 'moderate',
    whatever the vector, when only GitHub's database_specific.severity was read)."""
    from worker.vendors.osv import advisory_of

    advisory = advisory_of(recorded_without_github_severity(**severity), "multer")
    assert advisory is not None
    assert advisory["severity"] == expected


def test_queries_and_answers_are_as_osv_documents_them(registry: LocalRegistry) -> None:
    """Every query opskeeper sends, and every result the stand-in answers, has only the fields OSV's querybatch
    document describes (tests/fixtures/contracts/osv.json), at most its limit of queries per batch."""
    from tests.contracts import contract

    rules = contract("osv")["querybatch"]
    registry.osv_page_size = 1
    ask(registry, {"multer": {"1.4.4", "2.0.0"}, "express": {"4.21.2"}})
    for batch in registry.osv_queries:
        assert set(batch) == {"queries"}
        assert len(batch["queries"]) <= rules["limit"]
        for query in batch["queries"]:
            assert set(query) <= set(rules["query"])
            assert set(query["package"]) <= set(rules["package"])
            assert query["package"]["ecosystem"] == "npm"
    assert set(registry.osv_answer_fields) <= set(rules["result"])

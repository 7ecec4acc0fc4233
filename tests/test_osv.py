"""OSV's querybatch as its published description pages it (google/osv.dev docs/api/post-v1-querybatch.md): a
result with `next_page_token` is asked again with it as the query's `page_token`, until none is left."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_dependencies import BULK_TODAY, LocalRegistry
from worker.http import HttpError
from worker.vendors import osv
from worker.vendors.osv import Osv


@pytest.fixture
def server() -> Iterator[LocalRegistry]:
    registry = LocalRegistry(BULK_TODAY)
    yield registry
    registry.server.shutdown()
    registry.server.server_close()


def ask(server: LocalRegistry, packages: dict[str, set[str]]) -> dict[str, list[dict[str, Any]]]:
    async def run() -> dict[str, list[dict[str, Any]]]:
        client = Osv(f"{server.url}/osv")
        try:
            return await client.advisories(packages)
        finally:
            await client.close()

    return asyncio.run(run())


def test_a_paged_answer_is_followed_to_its_end(server: LocalRegistry) -> None:
    """multer 1.4.4 has three advisories; answered one page at a time, all three are found, the later pages asked
    for with the tokens OSV gave, and only for the query that had more."""
    whole = ask(server, {"multer": {"1.4.4"}, "express": {"4.21.2"}})
    server.osv_queries.clear()
    server.osv_page_size = 1
    paged = ask(server, {"multer": {"1.4.4"}, "express": {"4.21.2"}})
    assert {a["id"] for a in paged["multer"]} == {a["id"] for a in whole["multer"]}
    assert len(paged["multer"]) == 3
    assert [[q.get("page_token") for q in batch["queries"]] for batch in server.osv_queries] == [
        [None, None], ["1"], ["2"]]  # fmt: skip
    assert server.osv_queries[1]["queries"][0]["package"]["name"] == "multer"


def test_paging_without_end_is_an_error_not_a_short_answer(server: LocalRegistry,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Past the round limit the source fails, saying so: a partial list is never given as the whole."""
    monkeypatch.setattr(osv, "MAX_ROUNDS", 2)
    server.osv_page_size = 1
    with pytest.raises(HttpError, match=r"still paging after 2 rounds \(1 queries with a next_page_token\)"):
        ask(server, {"multer": {"1.4.4"}})

"""The registry cache by the registry's own caching rules: a document inside its max-age is not asked for again,
one past it is revalidated with both validators, and what the headers forbid is never reused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_dependencies import LocalRegistry, local_registry
from worker.vendors.npm import Registry, freshness


@pytest.fixture
def registry() -> Iterator[LocalRegistry]:
    with local_registry() as server:
        yield server


NAMES = ("cors", "express")
SINCE = "Tue, 01 Dec 2026 10:00:00 GMT"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def fetch(server: LocalRegistry, cache: dict[str, Any], clock: Clock) -> tuple[dict[str, Any], dict[str, int]]:
    """One run of a Registry client over NAMES: (the documents, how they were had)."""

    async def run() -> tuple[dict[str, Any], dict[str, int]]:
        client = Registry(server.url, None, cache, clock=clock)
        try:
            return await client.packages(NAMES), client.answers
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        ({"cache-control": "public, max-age=300"}, 300.0),
        ({"cache-control": "public, max-age=300", "age": "120"}, 180.0),
        ({"cache-control": "max-age=300", "age": "400"}, 0.0),
        ({"cache-control": "public, s-maxage=600"}, 0.0),
        ({"cache-control": "no-cache, max-age=300"}, 0.0),
        ({"cache-control": "private, no-store"}, None),
        ({"cache-control": "max-age=soon"}, 0.0),
        ({}, 0.0),
    ],
)
def test_freshness_reads_cache_control_as_a_private_cache(headers: dict[str, str], lifetime: float | None) -> None:
    """max-age less Age; s-maxage is a shared cache's; no-cache means revalidate, no-store means keep nothing."""
    assert freshness(headers) == lifetime


def test_a_document_inside_its_max_age_is_not_asked_for_again(registry: LocalRegistry) -> None:
    """Within max-age the cached documents answer with no request; past it each is revalidated (304) and fresh
    again for another max-age."""
    registry.cache_control, registry.last_modified = "public, max-age=300", SINCE
    cache: dict[str, Any] = {}
    clock = Clock()
    first, answers = fetch(registry, cache, clock)
    assert answers == {"fetched": 2, "revalidated": 0, "fresh": 0}
    assert registry.gets == 2

    clock.now += 299
    again, answers = fetch(registry, cache, clock)
    assert (answers, registry.gets) == ({"fetched": 0, "revalidated": 0, "fresh": 2}, 2)
    assert again == first

    clock.now += 2  # 301 s after the first answers
    revalidated, answers = fetch(registry, cache, clock)
    assert answers == {"fetched": 0, "revalidated": 2, "fresh": 0}
    assert registry.not_modified == 2
    assert {since for _, since in registry.conditionals[-2:]} == {SINCE}
    assert all(etag for etag, _ in registry.conditionals[-2:])
    assert revalidated == first

    clock.now += 299  # the 304 renewed the lifetime
    _, answers = fetch(registry, cache, clock)
    assert answers["fresh"] == 2
    json.dumps(cache)  # the cache is kept in the ledger between runs: plain JSON


def test_age_shortens_the_lifetime(registry: LocalRegistry) -> None:
    """An answer that spent 250 of its 300 seconds in a CDN is fresh for 50 more, not 300."""
    registry.cache_control, registry.age = "public, max-age=300", "250"
    cache: dict[str, Any] = {}
    clock = Clock()
    fetch(registry, cache, clock)
    clock.now += 49
    assert fetch(registry, cache, clock)[1]["fresh"] == 2
    clock.now += 2
    assert fetch(registry, cache, clock)[1]["revalidated"] == 2


def test_no_cache_revalidates_every_time_and_no_store_keeps_nothing(registry: LocalRegistry) -> None:
    """`no-cache` documents are revalidated on every run; `no-store` ones are fetched whole every run."""
    registry.cache_control = "no-cache"
    cache: dict[str, Any] = {}
    clock = Clock()
    fetch(registry, cache, clock)
    assert fetch(registry, cache, clock)[1] == {"fetched": 0, "revalidated": 2, "fresh": 0}

    registry.cache_control = "no-store"
    stored: dict[str, Any] = {}
    fetch(registry, stored, clock)
    assert stored == {}
    assert fetch(registry, stored, clock)[1] == {"fetched": 2, "revalidated": 0, "fresh": 0}


def test_last_modified_alone_revalidates(registry: LocalRegistry) -> None:
    """A registry that sends no ETag, only Last-Modified, is revalidated with If-Modified-Since."""
    registry.etags, registry.last_modified = False, SINCE
    cache: dict[str, Any] = {}
    clock = Clock()
    fetch(registry, cache, clock)
    assert fetch(registry, cache, clock)[1] == {"fetched": 0, "revalidated": 2, "fresh": 0}
    assert registry.conditionals[-2:] == [(None, SINCE), (None, SINCE)]


def test_a_cached_abbreviated_document_does_not_answer_for_a_full_one(registry: LocalRegistry) -> None:
    """A release-age cutoff needs the full documents: a fresh abbreviated copy is not used in their place."""
    registry.cache_control = "public, max-age=300"
    cache: dict[str, Any] = {}
    clock = Clock()
    fetch(registry, cache, clock)

    async def full() -> dict[str, int]:
        client = Registry(registry.url, None, cache, clock=clock, full=True)
        try:
            await client.packages(NAMES)
            return client.answers
        finally:
            await client.close()

    assert asyncio.run(full()) == {"fetched": 2, "revalidated": 0, "fresh": 0}
    assert registry.conditionals[-2:] == [(None, None), (None, None)]

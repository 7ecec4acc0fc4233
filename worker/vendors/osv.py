"""OSV (reference §5, §12): a second advisory source for npm packages, for when the registry's bulk endpoint
is not served (private mirrors, some proxies) or by choice.

`POST /v1/querybatch` says which vulnerability ids affect each (package, version); each id's
record comes from `GET /v1/vulns/{id}`. Records are turned into the registry's shape
(`id`, `url`, `title`, `severity`, `vulnerable_versions`) so the check treats both alike,
with `aliases` (GHSA and CVE ids) to de-duplicate them against the registry's answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from worker.http import DEFAULT_TIMEOUT, AsyncApi, HttpError

OSV_API = "https://api.osv.dev"
BATCH = 1000  # querybatch's limit on queries per request
#: Rounds of next_page_token a check follows; more is an answer this project will not wait for (a gap, said).
MAX_ROUNDS = 20


class Osv:
    """An OSV client for one run."""

    def __init__(self, base: str = OSV_API, concurrency: int = 8, timeout: timedelta = DEFAULT_TIMEOUT) -> None:
        self._gate = asyncio.Semaphore(concurrency)
        self._api = AsyncApi("OSV", base.rstrip("/"), timeout=timeout, concurrency=concurrency)

    async def close(self) -> None:
        await self._api.close()

    async def advisories(self, packages: Mapping[str, Iterable[str]]) -> dict[str, list[dict[str, Any]]]:
        """Advisories affecting these package versions, by package; raises HttpError when OSV cannot answer."""
        pending: list[tuple[str, str, str | None]] = [
            (name, version, None) for name, versions in sorted(packages.items()) for version in sorted(versions)
        ]
        ids: dict[str, set[str]] = {}
        for _ in range(MAX_ROUNDS):
            # A query whose result carries next_page_token is asked again with it (docs/api/post-v1-querybatch.md:
            # past 1,000 vulnerabilities for one query, or 3,000 for the batch, only some results are whole).
            pending = [again for start in range(0, len(pending), BATCH)
                       for again in await self._batch(pending[start : start + BATCH], ids)]  # fmt: skip
            if not pending:
                break
        else:
            why = f"still paging after {MAX_ROUNDS} rounds ({len(pending)} queries with a next_page_token)"
            raise HttpError(self._api.vendor, "POST", f"{self._api.base_url}/v1/querybatch", why)
        records = await asyncio.gather(*(self._vuln(vuln_id) for vuln_id in sorted(ids)))
        found: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            for name in sorted(ids[str(record["id"])]):
                advisory = advisory_of(record, name)
                if advisory is not None:
                    found.setdefault(name, []).append(advisory)
        return found

    async def _batch(
        self, chunk: list[tuple[str, str, str | None]], ids: dict[str, set[str]]
    ) -> list[tuple[str, str, str | None]]:
        """One querybatch; the ids found go into `ids`, and the queries to ask again (with their page token)
        are returned."""
        body = {"queries": [{"package": {"name": n, "ecosystem": "npm"}, "version": v,
                             **({"page_token": token} if token else {})} for n, v, token in chunk]}  # fmt: skip
        async with self._gate:
            answer = self._api.parse(await self._api.request("POST", "/v1/querybatch", json=body))
        again: list[tuple[str, str, str | None]] = []
        for (name, version, _), result in zip(chunk, answer.get("results") or [], strict=False):
            for vuln in (result or {}).get("vulns") or []:
                ids.setdefault(str(vuln["id"]), set()).add(name)
            if (result or {}).get("next_page_token"):
                again.append((name, version, str(result["next_page_token"])))
        return again

    async def _vuln(self, vuln_id: str) -> dict[str, Any]:
        async with self._gate:
            record: dict[str, Any] = self._api.parse(await self._api.get(f"/v1/vulns/{quote(vuln_id, safe='')}"))
        return record


_SEVERITIES = {"low": "low", "moderate": "moderate", "medium": "moderate", "high": "high", "critical": "critical"}


def advisory_of(record: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """One OSV record as the registry states an advisory for `name`; None if it names no npm range for it. Pure."""
    ranges: list[str] = []
    for affected in record.get("affected") or []:
        package = affected.get("package") or {}
        if package.get("ecosystem") != "npm" or package.get("name") != name:
            continue
        for span in affected.get("ranges") or []:
            if span.get("type") in ("SEMVER", "ECOSYSTEM"):
                ranges += _intervals(span.get("events") or [])
        ranges += [str(v) for v in affected.get("versions") or []]
    if not ranges:
        return None
    aliases = [str(a) for a in record.get("aliases") or []]
    ghsa = next((i for i in [str(record["id"]), *aliases] if i.startswith("GHSA-")), None)
    label = str((record.get("database_specific") or {}).get("severity") or "").lower() or cvss_rating(record)
    # Malicious-package records (MAL-…) carry no severity; installing one is as bad as it gets.
    severity = _SEVERITIES.get(label, "critical" if str(record["id"]).startswith("MAL-") else "moderate")
    url = next((str(r["url"]) for r in record.get("references") or [] if r.get("type") == "ADVISORY"),
               f"https://osv.dev/vulnerability/{record['id']}")  # fmt: skip
    return {"id": ghsa or str(record["id"]), "url": f"https://github.com/advisories/{ghsa}" if ghsa else url,
            "title": str(record.get("summary") or str(record.get("details") or "")[:120]), "severity": severity,
            "vulnerable_versions": " || ".join(ranges), "aliases": sorted({str(record["id"]), *aliases}),
            "source": "osv"}  # fmt: skip


def cvss_rating(record: Mapping[str, Any]) -> str:
    """The qualitative rating of the record's CVSS vector (`severity[]`, as the OSV schema gives it: CVSS_V4,
    else V3, else V2), lower-case, a rating of None counted as low; "" when no vector parses. Only GitHub's
    records carry `database_specific.severity`: the others' severity is their vector. Computed by the `cvss`
    library (Red Hat's): a base score's rating is not ours to approximate."""
    vectors = {str(s.get("type")): str(s.get("score") or "") for s in record.get("severity") or []
               if isinstance(s, Mapping)}  # fmt: skip
    from cvss import CVSS2, CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    for kind, parse in (("CVSS_V4", CVSS4), ("CVSS_V3", CVSS3), ("CVSS_V2", CVSS2)):
        if vectors.get(kind):
            try:
                score = parse(vectors[kind])
            except (CVSSError, ValueError, KeyError):
                continue
            rating = score.severity if isinstance(score, CVSS4) else score.severities()[0]
            return "low" if str(rating).lower() == "none" else str(rating).lower()
    return ""


def _intervals(events: list[Mapping[str, Any]]) -> list[str]:
    """OSV's introduced/fixed/last_affected events as npm ranges: `>=1.0.0 <1.2.3`, `<=2.0.0`."""
    out, low = [], None
    for event in events:
        if "introduced" in event:
            low = str(event["introduced"])
        elif "fixed" in event or "last_affected" in event:
            high = f"<{event['fixed']}" if "fixed" in event else f"<={event['last_affected']}"
            out.append(high if low in (None, "0") else f">={low} {high}")
            low = None
    if low is not None:
        out.append("*" if low == "0" else f">={low}")
    return out

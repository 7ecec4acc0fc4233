"""Advisories: asking the sources, merging their answers, matching them to installed versions, ignoring them.

The rules an advisory follows from the sources' answers to a report live here, so that the next
fix to one of them is made in one place: which ids name the same advisory (`known_ids`), how
the sources' answers merge (`merge_advisories`), which versions one affects (`affects`, npm
audit's own test), where it is fixed (`fixed_in`), and what an ignore entry silences.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Literal, Protocol

from pydantic import model_validator

from jobs.dependencies import semver
from worker.http import HttpError
from worker.job import JobOptions
from worker.vendors.npm import Registry
from worker.vendors.osv import Osv


class AdvisorySettings(Protocol):
    """What asking the advisory sources needs of a job's options (`DependenciesOptions` has it all)."""

    @property
    def advisories(self) -> tuple[str, ...]: ...

    @property
    def advisory_fallback(self) -> str | None: ...

    @property
    def osv_url(self) -> str: ...

    @property
    def concurrency(self) -> int: ...


SEVERITIES = ("info", "low", "moderate", "high", "critical")
Severity = Literal["info", "low", "moderate", "high", "critical"]


class Ignore(JobOptions):
    """An advisory (by id) or a package not to fail on, with a reason and an optional expiry."""

    advisory: str | None = None
    package: str | None = None
    reason: str
    until: date | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Ignore:
        if (self.advisory is None) == (self.package is None):
            raise ValueError("an ignore entry names exactly one of advisory or package")
        return self

    def covers(self, advisory: Mapping[str, Any], today: date) -> bool:
        """Whether this entry silences the advisory on `today` (an expired entry silences nothing)."""
        if self.until is not None and today > self.until:
            return False
        if self.package is not None:
            return bool(advisory["package"] == self.package)
        return self.advisory in {str(advisory["id"]), *advisory.get("aliases", ())}


def fixed_in(vulnerable: str, current: str, versions: list[str]) -> str | None:
    """The first release after `current` outside the vulnerable range, when the registry knows one."""
    now = semver.parse(current)
    if now is None:
        return None
    later = sorted(((p, v) for v in versions if (p := semver.parse(v)) is not None and not p.prerelease
                    and p.compare(now) > 0), key=lambda pair: pair[0].key)  # fmt: skip
    return next((v for _, v in later if not semver.satisfies(v, vulnerable, include_prerelease=True)), None)


def affects(advisory: Mapping[str, Any], version: str) -> bool:
    """npm audit's test: satisfies(version, vulnerable_versions, {includePrerelease, loose}) (reference §12)."""
    return semver.satisfies(version, str(advisory.get("vulnerable_versions", "*")), include_prerelease=True)


def known_ids(advisory: Mapping[str, Any]) -> set[str]:
    """The GHSA (and other) ids an advisory is known by: its id, its aliases, the id in its URL."""
    ids = {str(advisory.get("id"))} | set(advisory.get("aliases") or [])
    match = re.search(r"(GHSA(?:-[23456789cfghjmpqrvwx]{4}){3})", str(advisory.get("url", "")))
    if match:
        ids.add(match[1])
    return {i for i in ids if i.startswith(("GHSA-", "CVE-", "MAL-"))}


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def merge_advisories(answers: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """One list per package from every source's answer, the same advisory (by GHSA id or alias) once, affecting
    every version any of its records names. Pure.

    npm's bulk endpoint answers one GHSA as several records, one per range (GHSA-c2qf-rxjj-qqgw on semver:
    `>=7.0.0 <7.5.2`, `>=6.0.0 <6.3.1`, `<5.7.2`); keeping only the first would call semver@5.7.1 clean, which
    `npm audit` flags. So the ranges of records that are one advisory are joined with `||`.
    """
    merged: dict[str, list[dict[str, Any]]] = {}
    for source, answer in answers.items():
        for package, advisories in answer.items():
            have = merged.setdefault(package, [])
            for advisory in advisories:
                ids = known_ids(advisory)
                same = next((a for a in have if ids & known_ids(a) or a["id"] == advisory["id"]), None)
                if same is None:
                    have.append({**advisory, "sources": [source]})
                    continue
                same["sources"] = sorted({*same.get("sources", []), source})
                ranges = str(same.get("vulnerable_versions", "*")).split(" || ")
                for extra in str(advisory.get("vulnerable_versions", "*")).split(" || "):
                    if extra not in ranges:
                        ranges.append(extra)
                same["vulnerable_versions"] = " || ".join(ranges)
                severity = max(same.get("severity", "info"), advisory.get("severity", "info"), key=_rank)
                same["severity"] = severity
                if "aliases" in advisory or "aliases" in same:
                    same["aliases"] = sorted({*(same.get("aliases") or []), *(advisory.get("aliases") or [])})
    return merged


def found_on(chains: Mapping[tuple[str, str], list[list[str]]], advisories: Mapping[str, list[dict[str, Any]]],
             metas: Mapping[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """The advisories that affect each installed (package, version), with the chains that install it and the first
    release that fixes it (from the package's registry document, in `metas`). Pure."""
    found: list[dict[str, Any]] = []
    for (package, version), via in sorted(chains.items()):
        for advisory in advisories.get(package, []):
            if not affects(advisory, version):
                continue
            known = list(((metas.get(package) or {}).get("versions") or {}).keys())
            found.append({
                "package": package, "version": version, "id": advisory["id"],
                "severity": advisory.get("severity", "info"), "title": advisory.get("title", ""),
                "url": advisory.get("url", ""), "sources": advisory.get("sources", ["registry"]),
                "aliases": sorted(known_ids(advisory) - {str(advisory["id"])}),
                "fixed_in": fixed_in(str(advisory.get("vulnerable_versions", "*")), version, known) if known else None,
                "via": sorted(via, key=len)[:5],
            })  # fmt: skip
    return found


#: A failed source's effect when the fallback answered in its place: noted, but nothing is left unchecked.
CHECKED_INSTEAD = "advisories were checked with OSV instead"


def source_gap(source: str, error: str, effect: str) -> dict[str, str]:
    """A source that could not be asked: which, why, and what that leaves unchecked (a report names each)."""
    return {"source": source, "error": error, "effect": effect}


def advisories_checked(project: Mapping[str, Any], gaps: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any advisory source answered for this project's report: the report says so (`advisories_checked`);
    a report from before it did is judged by what it found and its gaps (an advisory found was answered by someone;
    else a failed source and no fallback that answered instead means not checked)."""
    if "advisories_checked" in project:
        return bool(project["advisories_checked"])
    failed = [g for g in gaps if str(g.get("source", "")).startswith("advisories")]
    return bool(project.get("advisories")) or not failed or any(not leaves_gap(g) for g in failed)


def leaves_gap(gap: Mapping[str, Any]) -> bool:
    """Whether a source's failure left something unchecked (not when the fallback answered in its place)."""
    return gap.get("effect") != CHECKED_INSTEAD


async def advisory_answers(options: AdvisorySettings, registry: Registry, installed: dict[str, set[str]],
                           gaps: list[dict[str, str]]) -> dict[str, list[dict[str, Any]]] | None:  # fmt: skip
    """Every configured source's answer, merged; OSV when they all failed; None when no source answered."""
    if not installed:
        return {}
    answers: dict[str, Mapping[str, list[dict[str, Any]]]] = {}
    failed: list[str] = []
    for source in options.advisories:
        try:
            answers[source] = await _ask(source, options, registry, installed)
        except HttpError as exc:
            failed.append(source)
            gaps.append(source_gap(f"advisories ({source})", str(exc), "advisories not checked by this source"))
    if not answers and options.advisory_fallback == "osv" and "osv" not in options.advisories:
        try:
            answers["osv"] = await _ask("osv", options, registry, installed)
            for gap in gaps:
                if gap["source"] in {f"advisories ({s})" for s in failed}:
                    gap["effect"] = CHECKED_INSTEAD
        except HttpError as exc:
            gaps.append(source_gap("advisories (osv)", str(exc), "the fallback could not be asked either"))
    return merge_advisories(answers) if answers else None


async def _ask(source: str, options: AdvisorySettings, registry: Registry,
               installed: dict[str, set[str]]) -> Mapping[str, list[dict[str, Any]]]:  # fmt: skip
    if source == "registry":
        return await registry.advisories(installed)
    osv = Osv(options.osv_url, concurrency=min(options.concurrency, 8))
    try:
        return await osv.advisories(installed)
    finally:
        await osv.close()

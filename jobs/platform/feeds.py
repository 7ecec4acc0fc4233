"""A status page's incidents and maintenances, from Atlassian Statuspage's JSON API or an RSS/Atom feed. Pure.

Statuspage's JSON (`/api/v2/summary.json`, `incidents.json`, `incidents/unresolved.json`,
`scheduled-maintenances/*.json`) says everything in fields. A feed says it in each entry's
HTML: Statuspage writes the updates newest first, each as `<strong>Status</strong> - text`,
a maintenance opens with "THIS IS A SCHEDULED EVENT", and the affected components close it
("This incident affected: A, B."). Feeds are parsed by feedparser, never by hand.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

#: Statuses that end an incident or a maintenance.
ENDED = frozenset({"resolved", "postmortem", "completed"})
_MAINTENANCE = frozenset({"scheduled", "in progress", "in_progress", "verifying", "completed"})
_STATUS = re.compile(r"<strong>\s*(Investigating|Identified|Monitoring|Update|Resolved|Postmortem|Scheduled|"
                     r"In progress|Verifying|Completed)\s*</strong>", re.IGNORECASE)  # fmt: skip
_AFFECTED = re.compile(r"This (?:incident|scheduled maintenance) affected:\s*(.+?)\.?\s*$", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
_TEXT_KEPT = 2000


class FeedError(ValueError):
    """The document is neither Statuspage JSON nor a feed feedparser can read."""


@dataclass(frozen=True)
class Incident:
    """One incident or maintenance as the page told it."""

    id: str
    kind: Literal["incident", "maintenance"]
    name: str
    status: str
    """Incidents: investigating, identified, monitoring, resolved, postmortem.
    Maintenances: scheduled, in_progress, verifying, completed."""
    impact: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    scheduled_for: str | None = None
    scheduled_until: str | None = None
    link: str = ""
    components: tuple[str, ...] = ()
    text: str = ""
    """The newest update's words, for matching regions."""

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def active(self) -> bool:
        """Going on now: an unresolved incident, or a maintenance in progress."""
        if self.ended:
            return False
        return self.kind == "incident" or self.status in ("in_progress", "verifying")

    def affects(self, components: Sequence[str], regions: Sequence[str]) -> bool:
        """Whether it touches any configured component (by name, or named in its words) or region; all when none."""
        if not components and not regions:
            return True
        named = {c.lower() for c in self.components}
        words = " ".join([self.name, *self.components, self.text]).lower()

        def mentioned(term: str) -> bool:
            return re.search(rf"(?<![\w-]){re.escape(term.lower())}(?![\w-])", words) is not None

        return any(c.lower() in named or mentioned(c) for c in components) or any(mentioned(r) for r in regions)


@dataclass(frozen=True)
class Feed:
    """What one fetch of the page said."""

    items: tuple[Incident, ...]
    lists_every_active: bool
    """The document lists every unresolved incident (summary.json, unresolved.json): one it no longer lists has
    ended. A feed or a history list is a window, and says an end only in an entry's own status."""


def parse(body: bytes, content_type: str, url: str) -> Feed:
    """Incidents and maintenances from a fetched document, JSON or feed by its content. Raises FeedError."""
    head = body.lstrip()[:1]
    if head in (b"{", b"[") or "json" in content_type:
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise FeedError(f"{url}: not JSON ({exc})") from None
        return _statuspage(document, url)
    return _feed(body, url)


# --- Statuspage's JSON ---------------------------------------------------------------


def _names(raw: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(c["name"]) for c in raw if isinstance(c, Mapping) and c.get("name"))


def _latest_text(raw: Mapping[str, Any]) -> str:
    updates = raw.get("incident_updates") or []
    return str(updates[0].get("body") or "")[:_TEXT_KEPT] if updates and isinstance(updates[0], Mapping) else ""


def _statuspage(document: Any, url: str) -> Feed:
    if not isinstance(document, Mapping) or not ({"incidents", "scheduled_maintenances"} & set(document)):
        raise FeedError(f"{url}: JSON without `incidents` or `scheduled_maintenances`: not a Statuspage API answer")
    items = []
    try:
        for raw in document.get("incidents") or []:
            items.append(Incident(
                id=str(raw["id"]), kind="incident", name=str(raw.get("name") or ""), status=str(raw.get("status")),
                impact=str(raw.get("impact") or ""), started_at=raw.get("started_at") or raw.get("created_at"),
                ended_at=raw.get("resolved_at"), link=str(raw.get("shortlink") or ""),
                components=_names(raw.get("components") or []), text=_latest_text(raw),
            ))  # fmt: skip
        for raw in document.get("scheduled_maintenances") or []:
            items.append(Incident(
                id=str(raw["id"]), kind="maintenance", name=str(raw.get("name") or ""), status=str(raw.get("status")),
                impact=str(raw.get("impact") or "maintenance"), started_at=raw.get("started_at"),
                ended_at=raw.get("resolved_at"), scheduled_for=raw.get("scheduled_for"),
                scheduled_until=raw.get("scheduled_until"), link=str(raw.get("shortlink") or ""),
                components=_names(raw.get("components") or []), text=_latest_text(raw),
            ))  # fmt: skip
    except (KeyError, TypeError, AttributeError) as exc:
        raise FeedError(f"{url}: an incident without the Statuspage fields ({type(exc).__name__}: {exc})") from None
    path = url.split("?", 1)[0]
    complete = path.endswith(("/summary.json", "/incidents/unresolved.json"))
    return Feed(tuple(items), complete)


# --- RSS and Atom -------------------------------------------------------------------


def _when(entry: Any) -> str | None:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if not parsed:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).isoformat()


def _feed(body: bytes, url: str) -> Feed:
    import feedparser  # here, not at the top: it takes 66 ms to import (-X importtime), which no other command pays

    parsed = feedparser.parse(body)
    if not parsed.get("version") and not parsed.entries:  # feedparser names the format it recognised
        cause = f" ({parsed.get('bozo_exception')})" if parsed.get("bozo") else ""
        raise FeedError(f"{url}: neither Statuspage JSON nor an RSS/Atom feed{cause}")
    items = []
    for entry in parsed.entries:
        summary = str(entry.get("summary") or entry.get("description") or "")
        found = _STATUS.search(summary)
        word = found.group(1).lower() if found else "investigating"
        maintenance = "scheduled event" in summary.lower() or word in _MAINTENANCE
        status = word.replace(" ", "_") if maintenance else ("monitoring" if word == "update" else word)
        text = html.unescape(_TAGS.sub(" ", summary))
        affected = _AFFECTED.search(text)
        components = tuple(c.strip() for c in affected.group(1).split(",") if c.strip()) if affected else ()
        when = _when(entry)
        items.append(Incident(
            id=str(entry.get("id") or entry.get("link") or entry.get("title")), name=str(entry.get("title") or ""),
            kind="maintenance" if maintenance else "incident", status=status, started_at=when,
            ended_at=when if status in ENDED else None, link=str(entry.get("link") or ""),
            components=components, text=" ".join(text.split())[:_TEXT_KEPT],
        ))  # fmt: skip
    return Feed(tuple(items), False)

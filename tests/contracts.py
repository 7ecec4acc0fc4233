"""The vendors' published API descriptions, as recorded in tests/fixtures/contracts/, and the checks made
against them: a request must be a described operation (method, path, parameter names, body properties), and a
stand-in's answer must hold only described properties (the required ones present), as the vendor's would.

Every VendorAPI (tests/conftest.py) checks each exchange against the description of the vendor whose paths it
served, when the test ends; tests/test_contracts.py checks the clients' calls and the descriptions themselves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CONTRACTS = Path(__file__).resolve().parent / "fixtures" / "contracts"
#: Which recorded description answers for a path a stand-in served.
PREFIXES = {"/api/0/": "sentry", "/api/atlas/v2/": "atlas", "/v1/": "render", "/repos/": "github"}
#: Path parameters that may hold slashes (a file's path, a git ref such as heads/main).
_SLASHED = {"path", "ref"}
#: What a vendor's server URL adds before the paths its description writes (Render's is https://api.render.com/v1).
BASES = {"render": "/v1"}
#: Operations whose body is a partial update, though the description marks every field required: the
#: description's own words say so ("Only the attributes submitted are modified.").
PARTIAL = {("sentry", "PUT", "/api/0/organizations/{organization_id_or_slug}/issues/{issue_id}/")}
_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                       "boolean": (bool,), "array": (list,), "object": (dict,)}  # fmt: skip


@dataclass(frozen=True)
class Operation:
    vendor: str
    method: str
    path: str
    pattern: re.Pattern[str]
    spec: dict[str, Any]

    @property
    def query_names(self) -> set[str]:
        return {p["name"] for p in self.spec["parameters"] if p["in"] == "query"}


@cache
def contract(vendor: str) -> dict[str, Any]:
    """One vendor's recorded description."""
    return dict(json.loads((CONTRACTS / f"{vendor}.json").read_text(encoding="utf-8")))


@cache
def operations(vendor: str) -> tuple[Operation, ...]:
    found = []
    for spec in contract(vendor)["operations"]:
        # A path parameter is one segment; a Sentry release version may hold what a segment may (quoted).
        pattern = re.compile("^" + re.sub(r"\\\{([^/]+?)\\\}", lambda m: ".+" if m[1] in _SLASHED else "[^/]+",
                                          re.escape(spec["path"])) + "$")  # fmt: skip
        found.append(Operation(vendor, spec["method"], spec["path"], pattern, spec))
    # The most specific template first: `/snapshots/shardedClusters` before `/snapshots/{id}`-like ones.
    return tuple(sorted(found, key=lambda o: -len(o.path.replace("{", "").replace("}", ""))))


def vendor_of(path: str) -> str | None:
    return next((v for prefix, v in PREFIXES.items() if path.startswith(prefix)), None)


def find(vendor: str, method: str, path: str) -> Operation | None:
    path = path.removeprefix(BASES.get(vendor, ""))
    return next((o for o in operations(vendor) if o.method == method and o.pattern.match(path)), None)


def request_problems(vendor: str, method: str, path: str, query: dict[str, list[str]], body: Any,
                     headers: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """What in one request the vendor's description does not have (empty: it is a described call): the
    operation, its query parameters' names, its body's properties, and, where the answers are versioned media
    types (Atlas's `application/vnd.atlas.2023-01-01+json`), an Accept header naming one the operation has."""
    op = find(vendor, method, path)
    source = contract(vendor)["source"]["repository"]
    if op is None:
        return [f"{method} {path}: no such operation in {source}'s description"]
    where = f"{method} {op.path}"
    kinds = {kind for answer in op.spec["responses"].values() for kind in answer}
    accept = (headers or {}).get("accept")
    if accept is not None and any(".atlas." in k for k in kinds) and accept not in kinds:
        return [f"{where}: Accept {accept!r} is not one of its answers' media types ({', '.join(sorted(kinds))})"]
    problems = [f"{where}: query parameter {name!r} is not described" for name in sorted(query)
                if name not in op.query_names]  # fmt: skip
    schemas = list((op.spec.get("request") or {}).values())
    if body is not None and not schemas:
        problems.append(f"{where}: sends a body, and the operation takes none")
    elif body is not None:
        whole = (vendor, op.method, op.path) not in PARTIAL
        problems += [f"{where}: request {p}" for p in shape_problems(body, schemas[0], "body", required=whole)]
    return problems


def answer_problems(vendor: str, method: str, path: str, status: int, body: Any) -> list[str]:
    """What in a 2xx answer the description does not describe (a stand-in inventing fields), or lacks that the
    description requires."""
    op = find(vendor, method, path)
    if op is None or not 200 <= status < 300:
        return []
    answers = op.spec["responses"].get(str(status))
    if answers is None:
        return [f"{method} {op.path}: answers {status}, which the description does not list "
                f"({', '.join(op.spec['responses'])})"]  # fmt: skip
    schemas = list(answers.values())
    if not schemas:
        return []
    # A stand-in may leave out what the code does not read (Sentry requires forty fields of an issue); it may not
    # invent one, nor give a described one another type.
    return [f"{method} {op.path}: answer {p}" for p in shape_problems(body, schemas[0], "body", required=False)]


def shape_problems(value: Any, shape: dict[str, Any], where: str, *, required: bool = True) -> list[str]:
    """Where `value` does not fit a recorded shape: a wrong type, an undescribed property, a missing required one
    (when `required`)."""
    kind = shape.get("type")
    if kind in _TYPES and value is not None:
        fits = isinstance(value, _TYPES[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        if not fits:
            return [f"{where} is {type(value).__name__}, described as {kind}"]
    problems: list[str] = []
    if isinstance(value, dict) and "properties" in shape:
        described = shape["properties"]
        if not shape.get("additionalProperties"):
            problems += [f"{where}.{key} is not described" for key in sorted(value) if key not in described]
        if required:
            problems += [f"{where}.{key} is required and missing" for key in shape.get("required", [])
                         if key not in value]  # fmt: skip
        for key, sub in value.items():
            if key in described:
                problems += shape_problems(sub, described[key], f"{where}.{key}", required=required)
    if isinstance(value, list) and "items" in shape:
        for index, item in enumerate(value[:50]):
            problems += shape_problems(item, shape["items"], f"{where}[{index}]", required=required)
    return problems


def described(vendor: str, method: str, path: str, field: str) -> bool:
    """Whether a 2xx answer of the operation at `path` (its template) describes `field` (`results[].createdAt`)."""
    op = next(o for o in operations(vendor) if o.method == method and o.path == path)
    for answer in op.spec["responses"].values():
        for shape in answer.values():
            node: dict[str, Any] | None = shape
            for part in re.findall(r"[^.\[\]]+|\[\]", field):
                if node is None:
                    break
                node = node.get("items") if part == "[]" else (node.get("properties") or {}).get(part)
            if node is not None:
                return True
    return False


#: Sentry Crons' check-in rules, as Sentry documents and enforces them (its monitor consumer and validators:
#: getsentry/sentry src/sentry/monitors/, getsentry/relay relay-monitors; reference §11). Sentry publishes no
#: machine-readable description of the check-in item, so they are encoded once, here.
CHECKIN_STATUSES = frozenset({"in_progress", "ok", "error"})
INTERVAL_UNITS = frozenset({"minute", "hour", "day", "week", "month", "year"})
MAX_RUNTIME_MINUTES = 10080
_OWNER = re.compile(r"^(user|team):\d+$")  # the consumer reads int(owner[5:]): a slug is silently no owner
_SLUG = re.compile(r"^[a-z0-9_-]{1,50}$")


def checkin_problems(item: dict[str, Any]) -> list[str]:
    """What in one check-in item Sentry would refuse or silently drop."""
    slug = str(item.get("monitor_slug", ""))
    where = f"check-in {slug or '?'}"
    problems = []
    if not _SLUG.match(slug):
        problems.append(f"{where}: monitor_slug {slug!r} is not a Sentry slug (a-z, 0-9, _ and -, at most 50)")
    if item.get("status") not in CHECKIN_STATUSES:
        problems.append(f"{where}: status {item.get('status')!r} is not one of {sorted(CHECKIN_STATUSES)}")
    config = item.get("monitor_config")
    if config is None:
        return problems
    schedule = config.get("schedule") or {}
    if schedule.get("type") == "interval":
        if not isinstance(schedule.get("value"), int) or schedule["value"] < 1:
            problems.append(f"{where}: an interval's value must be a whole number of at least 1")
        if schedule.get("unit") not in INTERVAL_UNITS:
            problems.append(f"{where}: interval unit {schedule.get('unit')!r} is not one of {sorted(INTERVAL_UNITS)}")
    elif schedule.get("type") != "crontab" or not str(schedule.get("value", "")).strip():
        problems.append(f"{where}: schedule must be a crontab or an interval, got {schedule!r}")
    runtime = config.get("max_runtime")
    if runtime is not None and not (isinstance(runtime, int) and 1 <= runtime <= MAX_RUNTIME_MINUTES):
        problems.append(f"{where}: max_runtime {runtime!r} is not 1..{MAX_RUNTIME_MINUTES} minutes")
    for key in ("checkin_margin", "failure_issue_threshold", "recovery_threshold"):
        value = config.get(key)
        if value is not None and not (isinstance(value, int) and value >= 1):
            problems.append(f"{where}: {key} {value!r} is not a whole number of at least 1")
    owner = config.get("owner")
    if owner is not None and not _OWNER.match(str(owner)):
        problems.append(f"{where}: owner {owner!r} is not user:<id> or team:<id>, which is all Sentry resolves")
    return problems

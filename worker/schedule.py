"""The schedule file: YAML -> validated job specs, with every problem reported at once.

Each problem is one line, `FILE:LINE:COL: jobs[i] (id).field.path: message`, so an
operator can fix a whole file in one pass and editors can jump to each place.

Whatever the file holds, loading it either returns a schedule or raises ConfigError: the
file's size, its nesting depth, the number of values its YAML aliases expand to and the
number of jobs are capped before anything is built, so a hostile file costs little.

It is one piece, past 500 lines, because the YAML reader and the validator share each value's
place in the file (`_Positions`): every problem, whether from YAML, a variable or a job's
options, is reported at its line and column in one pass over one tree.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.job import ALERTABLE, JobOptions, Status
from worker.reporting.redact import url_secrets
from worker.settings import SECRET_ENV_NAME, SettingsError, read_secret_file
from worker.timespec import (
    CronSchedule,
    IntervalSchedule,
    format_duration,
    next_fire,
    parse_duration,
    parse_schedule,
)

Loc = tuple[str | int, ...]

# Values read from environment variables whose names say they are secret are kept
# apart so the log and Sentry redactors can mask them wherever they turn up.
SECRET_NAME = SECRET_ENV_NAME
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_VALUES = 100_000
"""Values after YAML aliases and merge keys are expanded (a "billion laughs" file stops here)."""
MAX_JOBS = 1000
MAX_TIMEOUT = timedelta(days=7)
"""Sentry Crons' max_runtime limit (10080 minutes): a longer run could never be reported."""
_INTERPOLATION = re.compile(r"\$\$|\$\{([^}:]*)(?::-([^}]*))?\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the schedule file, at its place."""

    line: int
    col: int
    where: str
    message: str
    file: str = field(compare=False, default="")

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.where}: {self.message}"


class ConfigError(Exception):
    """The schedule file is invalid; `problems` lists every reason, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --- field types -------------------------------------------------------------------


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration like 90s, 30m or 2h, got {type(value).__name__}")
    return parse_duration(str(value)[:100])


def _schedule(value: Any) -> CronSchedule | IntervalSchedule:
    if isinstance(value, CronSchedule | IntervalSchedule):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a cron expression, a preset or 'every <duration>', got {value!r}")
    parsed = parse_schedule(value)
    if isinstance(parsed, CronSchedule) and next_fire(parsed, datetime(2000, 1, 1, tzinfo=UTC), UTC) is None:
        raise ValueError(f"{value!r}: this date never occurs, so the job would never run")
    return parsed


def _status(value: Any) -> Status:
    try:
        return Status(value)
    except ValueError:
        allowed = ", ".join(s.value for s in ALERTABLE)
        raise ValueError(f"{value!r} is not a status; use one of {allowed}") from None


Duration = Annotated[timedelta, BeforeValidator(_duration)]
ScheduleValue = Annotated[CronSchedule | IntervalSchedule, PlainValidator(_schedule)]
AlertStatus = Annotated[Status, PlainValidator(_status)]
SLUG = r"^[a-z0-9][a-z0-9_-]{0,49}$"


class MonitorOptions(BaseModel):
    """How the job's Sentry Crons monitor is shaped (the `monitor:` block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """False: no check-ins at all for this job (each monitor takes a seat of the Sentry plan)."""
    upsert: bool = True
    """False: check-ins carry no monitor_config, so what the team set in Sentry's UI stands."""
    failure_issue_threshold: int = Field(default=1, ge=1, le=720)
    recovery_threshold: int = Field(default=1, ge=1, le=720)
    owner: Annotated[str, Field(pattern=r"^(user:\d+|team:[a-z0-9][a-z0-9_-]*)$")] | None = None
    """`user:ID`, `team:ID` or `team:SLUG`: who Sentry assigns the monitor's issues to. Sentry takes numeric ids
    only (its monitor consumer reads `int(owner[5:])`, and a slug leaves the monitor without an owner, silently),
    so a slug is looked up by the organization's teams (SENTRY_ORG, a SENTRY_AUTH_TOKEN with org:read)."""

    @property
    def team_slug(self) -> str | None:
        """The team slug to look up, when the owner names a team by slug rather than by id."""
        if self.owner and self.owner.startswith("team:") and not self.owner[5:].isdigit():
            return self.owner[5:]
        return None


def _timeout(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("a timeout must be longer than 0s")
    if value > MAX_TIMEOUT:
        raise ValueError(f"{format_duration(value)} is over the limit of 7d (Sentry Crons' longest max_runtime)")
    return value


class JobDefaults(BaseModel):
    """Settings every job shares unless it sets its own (the `defaults:` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("timeout")
    @classmethod
    def _timeout_fits(cls, value: timedelta) -> timedelta:
        return _timeout(value)

    enabled: bool = True
    timeout: Duration = timedelta(hours=1)
    misfire_grace: Duration = timedelta(minutes=10)
    jitter: Duration = timedelta(0)
    retries: int = Field(default=0, ge=0, le=10)
    retry_backoff: Duration = timedelta(seconds=5)
    alert_on: tuple[AlertStatus, ...] = (Status.FAIL, Status.ERROR)
    rerun_interrupted: bool | None = None
    """Run again at once when a deploy interrupted it; default: yes for backups, drills, checks and reviews."""
    monitor: MonitorOptions = MonitorOptions()
    traces_sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    """Share of runs sent as Sentry transactions; default: every run of a job scheduled hourly or slower,
    one an hour's worth of a more frequent one (an `every 1m` job: 1 in 60)."""


class JobSpec(JobDefaults):
    """One job of the schedule, validated; `options` is the kind's own model."""

    id: Annotated[str, Field(pattern=SLUG)]
    kind: str
    schedule: ScheduleValue
    options: Any = None

    @model_validator(mode="after")
    def _jitter_within_grace(self) -> JobSpec:
        if self.jitter and self.jitter >= self.misfire_grace:
            jitter, grace = format_duration(self.jitter), format_duration(self.misfire_grace)
            raise ValueError(f"jitter ({jitter}) must be shorter than misfire_grace ({grace}): "
                             "a run pushed past the grace is missed")  # fmt: skip
        return self


_TOP_KEYS = ["timezone", "defaults", "jobs"]


@dataclass(frozen=True)
class ScheduleConfig:
    """A whole, valid schedule file."""

    path: str
    timezone: zoneinfo.ZoneInfo
    jobs: tuple[JobSpec, ...]
    secrets: frozenset[str] = frozenset()

    def job(self, job_id: str) -> JobSpec:
        """The job with this id; KeyError names the ids that exist."""
        for job in self.jobs:
            if job.id == job_id:
                return job
        known = ", ".join(j.id for j in self.jobs) or "none"
        raise KeyError(f"no job {job_id!r} in {self.path}; jobs: {known}")


# --- YAML with positions -----------------------------------------------------------


@dataclass
class _Positions:
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def at(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """The closest known position: the exact place, else its nearest parent."""
        table = self.keys if key else self.values
        for end in range(len(loc), -1, -1):
            place = table.get(loc[:end]) or self.values.get(loc[:end])
            if place:
                return place
        return (1, 1)


class _Reader:
    """Builds plain Python values from a YAML node tree, remembering where each came from."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.positions = _Positions()
        self.problems: list[Problem] = []
        # Problems found while reading, by place; named once the job ids are known.
        self.located: list[tuple[int, int, Loc, str]] = []
        self.secrets: set[str] = set()

    def read(self, text: str) -> Any:
        loader = _Loader(text)
        try:
            try:
                node = loader.get_single_node()
            except _TooDeepError as exc:
                line, col = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark else (1, 1)
                self.problems.append(Problem(line, col, "yaml", f"nested deeper than {MAX_DEPTH} levels; a schedule "
                                             "needs far fewer", self.file))  # fmt: skip
                return None
            if node is None:
                return None
            if _expanded_size(node, {}, set()) > MAX_VALUES:
                message = f"the file expands to more than {MAX_VALUES} values through YAML aliases; write the jobs out"
                self.problems.append(Problem(1, 1, "yaml", message, self.file))
                return None
            return self._value(loader, node, ())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            self.problems.append(Problem(line, col, "yaml", f"invalid YAML: {message}", self.file))
            return None
        finally:
            loader.dispose()

    def _value(self, loader: _Loader, node: yaml.Node, loc: Loc) -> Any:
        self.positions.values[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # YAML merge keys (`<<: *defaults`)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self._problem(key_node, loc, "a key must be a plain word, not a list or mapping")
                    continue
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | bool | float) or key is None:
                    self._problem(key_node, loc, f"a key must be a plain word, got {key!r}")
                    continue
                child = (*loc, str(key))
                self.positions.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if str(key) in result:
                    self._problem(key_node, child, f"duplicate key {key!r}: each key may appear once")
                result[str(key)] = self._value(loader, value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._value(loader, item, (*loc, i)) for i, item in enumerate(node.value)]
        value = loader.construct_object(node, deep=True)
        if isinstance(value, str) and "$" in value:
            value = self._interpolate(node, loc, value)
        if isinstance(value, str) and "://" in value:
            # A URL written in the file (a backup's uri) lends its password and query credentials to the masks,
            # so a child that prints one alone, decoded, is masked too.
            self.secrets.update(url_secrets(value))
        return value

    def _interpolate(self, node: yaml.Node, loc: Loc, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if not _VAR_NAME.fullmatch(name):
                self._problem(node, loc, f"${{{name}}} is not a valid environment variable name")
                return ""
            value = self.env.get(name)
            from_file = value is None and bool(self.env.get(f"{name}_FILE"))
            if from_file:
                try:
                    value = read_secret_file(f"{name}_FILE", self.env[f"{name}_FILE"])
                except SettingsError as exc:
                    self._problem(node, loc, str(exc))
                    return ""
            secret = from_file or bool(SECRET_NAME.search(name))
            if secret and "argv" in loc:
                # Every user of the host can read a process's arguments (ps, /proc).
                self._problem(
                    node, loc, f"${{{name}}} is a secret and argv is visible in the process list; pass it "
                    f"in options.env and refer to it there (in a shell script as ${name})",
                )  # fmt: skip
            if value is None or (value == "" and default is not None):
                if default is None:
                    self._problem(
                        node, loc, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)"
                    )
                    return ""
                return default
            if secret:
                self.secrets.add(value)
            return value

        return _INTERPOLATION.sub(replace, text)

    def _problem(self, node: yaml.Node, loc: Loc, message: str) -> None:
        self.located.append((node.start_mark.line + 1, node.start_mark.column + 1, loc, message))


class _TooDeepError(Exception):
    def __init__(self, mark: Any) -> None:
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing to compose deeper than MAX_DEPTH (its composer recurses per level)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeepError(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for once every alias is expanded (shared nodes counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in open_nodes:
        return MAX_VALUES + 1  # an alias inside its own anchor: infinite
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo, open_nodes) + _expanded_size(value, memo, open_nodes)
            if size > MAX_VALUES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            size += _expanded_size(item, memo, open_nodes)
            if size > MAX_VALUES:
                break
    open_nodes.discard(id(node))
    memo[id(node)] = size
    return size


# --- validation --------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str],
    kinds: Mapping[str, type[JobOptions]],
    env: Mapping[str, str] | None = None,
) -> ScheduleConfig:
    """Read and validate a schedule file. Raises ConfigError listing every problem."""
    file = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError([Problem(1, 1, "(file)", f"the file has {size} bytes, over the limit of "
                                       f"{MAX_FILE_BYTES // 1024} KiB for a schedule", file)])  # fmt: skip
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(1, 1, "(file)", f"cannot read the schedule file: {reason}", file)]) from None
    return parse_config(text, file, kinds, os.environ if env is None else env)


def parse_config(text: str, file: str, kinds: Mapping[str, type[JobOptions]], env: Mapping[str, str]) -> ScheduleConfig:
    """Validate schedule-file text; `file` is only used to name places in errors.

    Raises ConfigError and nothing else, whatever the text: a daemon reloading a broken file
    keeps its schedule.
    """
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError([Problem(1, 1, "(file)", f"the text has {len(text)} characters, over the limit of "
                                   f"{MAX_FILE_BYTES // 1024} KiB for a schedule", file)])  # fmt: skip
    try:
        return _parse_config(text, file, kinds, env)
    except ConfigError:
        raise
    except (Exception, RecursionError, MemoryError) as exc:  # noqa: BLE001 - any failure is the file's, named
        message = f"cannot load the schedule: {type(exc).__name__}: {str(exc)[:200]}"
        raise ConfigError([Problem(1, 1, "(file)", message, file)]) from None


def _parse_config(
    text: str, file: str, kinds: Mapping[str, type[JobOptions]], env: Mapping[str, str]
) -> ScheduleConfig:
    reader = _Reader(file, env)
    data = reader.read(text)
    problems = reader.problems
    if problems and data is None:
        raise ConfigError(problems)
    if data is None:
        raise ConfigError([Problem(1, 1, "(file)", "the file is empty; it needs at least a 'jobs:' list", file)])
    if not isinstance(data, dict):
        message = f"the top level must be a mapping with 'timezone', 'defaults' and 'jobs', not a {_kind(data)}"
        raise ConfigError([*problems, Problem(1, 1, "(file)", message, file)])
    validator = _Validator(file, reader.positions, kinds, problems)
    validator.bad_locs = {loc for _, _, loc, _ in reader.located}
    config = validator.run(data, frozenset(reader.secrets))
    for line, col, loc, message in reader.located:
        problems.append(Problem(line, col, _where(loc, validator.ids), message, file))
    if problems or config is None:
        raise ConfigError(problems)
    return config


class _Validator:
    def __init__(
        self, file: str, positions: _Positions, kinds: Mapping[str, type[JobOptions]], problems: list[Problem]
    ) -> None:
        self.file = file
        self.positions = positions
        self.kinds = kinds
        self.problems = problems
        self.ids: dict[int, str] = {}
        # Places already reported (e.g. a missing ${VAR}); their follow-on errors are noise.
        self.bad_locs: set[Loc] = set()

    def run(self, data: dict[str, Any], secrets: frozenset[str]) -> ScheduleConfig | None:
        for key in data:
            if key not in _TOP_KEYS:
                close = difflib.get_close_matches(key, _TOP_KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(_TOP_KEYS)}"
                self._add((key,), f"unknown key {key!r}{hint}", key=True)
        tz_name = data.get("timezone", "UTC")
        tz = None
        if isinstance(tz_name, str):
            tz = self._timezone(tz_name)
        else:
            self._add(("timezone",), f"expected an IANA time zone name like 'Europe/Berlin', got {tz_name!r}")
        defaults = data.get("defaults") or {}
        if isinstance(defaults, dict):
            defaults = self._defaults(defaults)
        else:
            self._add(("defaults",), f"expected a mapping of job settings, got a {_kind(defaults)}")
            defaults = {}
        if "jobs" not in data:
            self._add((), "'jobs' is required: a list of jobs", name=("jobs",))
            return None
        raw_jobs = data["jobs"]
        if not isinstance(raw_jobs, list):
            self._add(("jobs",), f"expected a list of jobs, got a {_kind(raw_jobs)}")
            return None
        if len(raw_jobs) > MAX_JOBS:
            self._add(("jobs",), f"{len(raw_jobs)} jobs, over the limit of {MAX_JOBS}")
            return None
        for i, raw in enumerate(raw_jobs):
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                self.ids[i] = raw["id"]
        jobs: list[JobSpec] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_jobs):
            if not isinstance(raw, dict):
                self._add(("jobs", i), f"expected a job (a mapping with id, kind, schedule), got a {_kind(raw)}")
                continue
            job_id = self.ids.get(i)
            if job_id is not None and job_id in seen:
                self._add(("jobs", i, "id"), f"duplicate id {job_id!r}: jobs[{seen[job_id]}] already uses it")
                continue
            if job_id is not None:
                seen[job_id] = i
            merged = {**defaults, **raw}
            if isinstance(defaults.get("monitor"), dict) and isinstance(raw.get("monitor"), dict):
                merged["monitor"] = {**defaults["monitor"], **raw["monitor"]}  # a job refines the defaults' block
            spec = self._job(i, merged)
            if spec is not None:
                jobs.append(spec)
        self._references(raw_jobs)
        if tz is None:
            return None
        return ScheduleConfig(path=self.file, timezone=tz, jobs=tuple(jobs), secrets=secrets)

    def _references(self, raw_jobs: list[Any]) -> None:
        """An option naming another job (a drill's backup_job, a service's health job) must name one of that kind.

        Checked on the file's own values, so a reference is reported in the same pass as every other problem.
        """
        kinds: dict[str, str] = {}
        for raw in raw_jobs:
            if isinstance(raw, dict) and isinstance(raw.get("id"), str) and isinstance(raw.get("kind"), str):
                kinds.setdefault(raw["id"], raw["kind"])

        def check(loc: Loc, wanted: Any, kind: str) -> None:
            if isinstance(wanted, str) and kinds.get(wanted) != kind:
                have = ", ".join(repr(j) for j, k in kinds.items() if k == kind) or "none"
                self._add(loc, f"no {kind} job {wanted!r} in this schedule; {kind} jobs: {have}")

        for i, raw in enumerate(raw_jobs):
            options = raw.get("options") if isinstance(raw, dict) else None
            if not isinstance(options, dict) or not isinstance(raw.get("kind"), str) or raw["kind"] not in self.kinds:
                continue
            loc: Loc = ("jobs", i, "options")
            fields = self.kinds[raw["kind"]].model_fields
            if "backup_job" in fields:
                check((*loc, "backup_job"), options.get("backup_job"), "backup")
            if raw["kind"] == "change_capture":  # its `backup:` names the backup job whose databases it follows
                check((*loc, "backup"), options.get("backup"), "backup")
            services = options.get("services") if "services" in fields else None
            for n, service in enumerate(services if isinstance(services, list) else ()):
                if isinstance(service, dict):
                    check((*loc, "services", n, "health"), service.get("health"), "health")

    def _timezone(self, name: str) -> zoneinfo.ZoneInfo | None:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            close = difflib.get_close_matches(name, zoneinfo.available_timezones(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (use a name like 'Europe/Berlin' or 'UTC')"
            self._add(("timezone",), f"unknown IANA time zone {name!r}{hint}")
            return None

    def _defaults(self, raw: dict[str, Any]) -> dict[str, Any]:
        try:
            JobDefaults.model_validate(raw)
        except ValidationError as exc:
            self._pydantic(exc, ("defaults",), JobDefaults)
            return {}
        return raw

    def _job(self, i: int, raw: dict[str, Any]) -> JobSpec | None:
        loc: Loc = ("jobs", i)
        options_raw = raw.get("options", {})
        kind = raw.get("kind")
        options_model = self.kinds.get(kind) if isinstance(kind, str) else None
        if isinstance(kind, str) and options_model is None:
            close = difflib.get_close_matches(kind, self.kinds, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self._add((*loc, "kind"), f"unknown kind {kind!r}; {hint}known kinds: {', '.join(sorted(self.kinds))}")
        options = None
        if options_model is not None:
            if options_raw is None:
                options_raw = {}
            try:
                options = options_model.model_validate(options_raw)
            except ValidationError as exc:
                self._pydantic(exc, (*loc, "options"), options_model)
        try:
            spec = JobSpec.model_validate({**raw, "options": None})
        except ValidationError as exc:
            self._pydantic(exc, loc, JobSpec)
            return None
        if options is None:
            return None
        return spec.model_copy(update={"options": options})

    def _pydantic(self, exc: ValidationError, prefix: Loc, model: type[BaseModel]) -> None:
        errors = exc.errors(include_url=False)
        all_locs = [(*prefix, *e["loc"]) for e in errors]
        for error, loc in zip(errors, all_locs, strict=True):
            kind = error["type"]
            if any(loc[: len(bad)] == bad for bad in self.bad_locs):
                continue
            if any(len(other) > len(loc) and other[: len(loc)] == loc for other in all_locs):
                continue  # a deeper error says more precisely what is wrong
            if kind == "extra_forbidden":
                key = str(error["loc"][-1])
                known = _fields_at(model, error["loc"][:-1])
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
                self._add(loc, f"unknown key {key!r}{hint}", key=True)
            elif kind == "missing":
                self._add(loc[:-1], f"{loc[-1]!r} is required", name=loc)
            elif kind == "string_pattern_mismatch" and loc[-1] == "id":
                self._add(
                    loc,
                    f"{error['input']!r} is not a valid id: use 1-50 lowercase letters, digits, '-' or '_', "
                    "starting with a letter or digit (it becomes the Sentry monitor slug)",
                )
            elif kind == "string_type" and isinstance(error.get("input"), bool | int | float):
                value = error["input"]
                self._add(loc, f"expected a string, got {value!r}: YAML reads unquoted {str(value).lower()} as a "
                               f"{_kind(value)}; put it in quotes")  # fmt: skip
            elif kind == "value_error":
                self._add(loc, str(error["ctx"]["error"]))
            else:
                self._add(loc, f"{error['msg']}, got {error['input']!r}" if "input" in error else error["msg"])

    def _add(self, loc: Loc, message: str, *, key: bool = False, name: Loc | None = None) -> None:
        line, col = self.positions.at(loc, key=key)
        where = _where(name or loc, self.ids)
        self.problems.append(Problem(line, col, where, message, self.file))


def _where(loc: Loc, ids: Mapping[int, str] | None) -> str:
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
            if i == 1 and loc[0] == "jobs" and ids and part in ids:
                text += f" ({ids[part]})"
        else:
            text += f".{part}" if text else part
    return text or "(file)"


def _fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The keys a model allows at a nested location, for "did you mean" hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside `list[X]`, `X | None`, `Annotated[X, ...]`, if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )

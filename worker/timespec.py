"""Schedules and durations as operators write them, parsed into plain values.

Pure functions only: no clock and no APScheduler here (worker/scheduler.py turns these
values into triggers). Every error names the bad value and the rule it broke.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_MAX_DURATION_S = 10 * 366 * 86400


def parse_duration(text: str) -> timedelta:
    """Parse `90s`, `30m`, `2h`, `1d`, `1h30m` into a timedelta."""
    value = text.strip().lower()
    if not value:
        raise ValueError("empty duration: write it like 90s, 30m, 2h or 1d")
    if re.fullmatch(r"\d+(\.\d+)?", value):
        raise ValueError(f"{text!r}: a duration needs a unit, e.g. {value}s or {value}m")
    pos, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value):
        raise ValueError(f"{text!r}: not a duration; write it like 90s, 30m, 2h, 1d or 1h30m")
    if seconds > _MAX_DURATION_S:
        raise ValueError(f"{text!r} is longer than 10 years; no schedule setting needs that")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest readable form of a duration: 90 s -> '1m30s'."""
    total = delta.total_seconds()
    if total < 1:
        return f"{round(total * 1000)}ms"
    parts = []
    rest = int(total)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] is the value low + i
    hint: str = ""


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, " or jan-dec"),
    _Field("day-of-week", 0, 7, (*_DAYS, "sun"), " or sun-sat"),
)

PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 1,4,7,10 *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


@dataclass(frozen=True)
class CronSchedule:
    """A 5-field cron schedule with standard (Vixie cron) semantics.

    Each field is the sorted tuple of values it allows; day-of-week counts 0 = Sunday
    (7 is folded into 0). When both day fields are restricted, cron runs on a day that
    matches either of them (`days_or`), not both.
    """

    text: str
    crontab: str
    minute: tuple[int, ...]
    hour: tuple[int, ...]
    day_of_month: tuple[int, ...]
    month: tuple[int, ...]
    day_of_week: tuple[int, ...]
    days_or: bool


@dataclass(frozen=True)
class IntervalSchedule:
    """`every <duration>`: runs a fixed time apart, counted in elapsed seconds."""

    text: str
    every: timedelta


Schedule = CronSchedule | IntervalSchedule


def parse_schedule(text: str) -> Schedule:
    """Parse a cron expression, a preset such as `@daily`, or `every 90s`."""
    value = " ".join(str(text).split())
    if not value:
        raise ValueError("empty schedule: write a cron expression, a preset like @daily, or 'every 5m'")
    lowered = value.lower()
    if lowered.startswith("every"):
        rest = lowered[len("every") :].strip()
        try:
            every = parse_duration(rest)
        except ValueError as exc:
            raise ValueError(f"{text!r}: 'every' takes a duration like 90s, 5m or 1h ({exc})") from None
        if every.total_seconds() < 1:
            raise ValueError(f"{text!r}: the interval must be at least 1s")
        return IntervalSchedule(text=value, every=every)
    if lowered.startswith("@"):
        if lowered not in PRESETS:
            known = " ".join(sorted(set(PRESETS) - {"@midnight", "@annually"}))
            raise ValueError(f"{text!r}: unknown preset; known presets: {known}")
        return _parse_cron(value, PRESETS[lowered])
    return _parse_cron(value, value)


def _parse_cron(text: str, crontab: str) -> CronSchedule:
    parts = crontab.split(" ")
    if len(parts) != 5:
        raise ValueError(
            f"{text!r}: a cron expression has 5 fields "
            f"(minute hour day-of-month month day-of-week), this has {len(parts)}"
        )
    values = [_parse_field(text, spec, part) for spec, part in zip(_FIELDS, parts, strict=True)]
    return CronSchedule(
        text=text,
        crontab=crontab,
        minute=values[0],
        hour=values[1],
        day_of_month=values[2],
        month=values[3],
        day_of_week=tuple(sorted({d % 7 for d in values[4]})),
        # Vixie cron: a day field that starts with `*` (even `*/2`) does not take part
        # in the OR of day-of-month and day-of-week.
        days_or=not parts[2].startswith("*") and not parts[4].startswith("*"),
    )


def _parse_field(text: str, spec: _Field, part: str) -> tuple[int, ...]:
    """The sorted values one field allows."""
    allowed: set[int] = set()
    for item in part.lower().split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{text!r}: {spec.name}: step {step_text!r} must be a whole number of at least 1")
            step = int(step_text)
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _value(text, spec, first), _value(text, spec, last)
            if low > high:
                raise ValueError(f"{text!r}: {spec.name}: range {base!r} runs backwards ({low} > {high})")
        else:
            low = _value(text, spec, base)
            # `5/15` means "from 5 to the end, every 15" in Vixie cron.
            high = spec.high if slash else low
        allowed.update(range(low, high + 1, step))
    return tuple(sorted(allowed))


def _value(text: str, spec: _Field, token: str) -> int:
    if token.isdigit():
        number = int(token)
        if spec.low <= number <= spec.high:
            return number
        raise ValueError(
            f"{text!r}: {spec.name}: {number} is out of range; it must be {spec.low}-{spec.high}{spec.hint}"
        )
    if spec.names and token in spec.names:
        return spec.low + spec.names.index(token)
    if token in ("?", "l", "w") or (any(c in token for c in "lw#") and token[:1].isdigit()):
        raise ValueError(f"{text!r}: {spec.name}: {token!r} is Quartz syntax, not standard cron")
    expected = f"a number {spec.low}-{spec.high}{spec.hint}"
    raise ValueError(f"{text!r}: {spec.name}: {token!r} is not {expected}")


def describe(schedule: Schedule) -> str:
    """The schedule in words, for `opskeeper jobs`."""
    if isinstance(schedule, IntervalSchedule):
        return f"every {format_duration(schedule.every)}"
    s = schedule
    if len(s.minute) == 1 and len(s.hour) == 1:
        when = f"at {s.hour[0]:02d}:{s.minute[0]:02d}"
    elif len(s.minute) == 1 and len(s.hour) == 24:
        when = f"at minute {s.minute[0]} of every hour"
    elif len(s.minute) == 60 and len(s.hour) == 24:
        when = "every minute"
    elif len(s.hour) == 24:
        when = f"at minute {_list(s.minute)} of every hour"
    else:
        when = f"at minute {_list(s.minute)} past hour {_list(s.hour)}"
    days = []
    if len(s.day_of_month) < 31:
        days.append(f"on day {_list(s.day_of_month)} of the month")
    if len(s.day_of_week) < 7:
        days.append("on " + ", ".join(_DAY_NAMES[d] for d in s.day_of_week))
    day_text = (" or " if s.days_or else " and ").join(days) if days else "every day"
    month_text = "" if len(s.month) == 12 else " in " + ", ".join(_MONTHS[m - 1].title() for m in s.month)
    return f"{when}, {day_text}{month_text}"


_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


def _list(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


# How far ahead to look before deciding that a cron expression never fires
# (`0 0 30 2 *`); leap days recur within 8 years, so 9 covers every real schedule.
_SEARCH_DAYS = 9 * 366


def next_fire(schedule: CronSchedule, after: datetime, tz: tzinfo) -> datetime | None:
    """The first run strictly after `after`, in `tz`, or None if the schedule never fires.

    Wall-clock semantics as in Vixie cron: a time that happens twice when clocks go back
    runs once (the first time); a time skipped when clocks go forward runs at the moment
    the clock jumps, so a nightly job is never lost to DST.
    """
    start = after.astimezone(tz).replace(tzinfo=None, fold=0)
    day = start.date()
    for _ in range(_SEARCH_DAYS):
        if day.month in schedule.month and _day_matches(schedule, day):
            for hour in schedule.hour:
                for minute in schedule.minute:
                    wall = datetime.combine(day, time(hour, minute))
                    if wall < start - timedelta(hours=3):
                        continue  # cannot be after `after`, whatever the DST offset
                    instant = _resolve(wall, tz)
                    if instant > after:
                        return instant
        day += timedelta(days=1)
    return None


def _day_matches(schedule: CronSchedule, day: date) -> bool:
    in_month = day.day in schedule.day_of_month
    in_week = (day.weekday() + 1) % 7 in schedule.day_of_week
    return (in_month or in_week) if schedule.days_or else (in_month and in_week)


def _resolve(wall: datetime, tz: tzinfo) -> datetime:
    """The instant a wall-clock time means: its first occurrence, or the end of a DST gap."""
    candidate = wall.replace(tzinfo=tz, fold=0)
    round_trip = candidate.astimezone(UTC).astimezone(tz)
    if round_trip.replace(tzinfo=None) == wall:
        return round_trip
    # `wall` falls in a gap: the first wall time that exists is when the clock jumped.
    probe = wall
    for _ in range(24 * 60):
        probe += timedelta(minutes=1)
        exists = probe.replace(tzinfo=tz).astimezone(UTC).astimezone(tz)
        if exists.replace(tzinfo=None) == probe:
            return exists
    return round_trip


def upcoming(schedule: Schedule, tz: tzinfo, now: datetime, count: int) -> list[datetime]:
    """The next `count` run times after `now`, in `tz`, as a daemon started at `now` would run them."""
    runs: list[datetime] = []
    if isinstance(schedule, IntervalSchedule):
        start = now.astimezone(tz)
        # Elapsed time, not wall-clock time: `every 1h` stays 1 h apart across DST.
        return [(start.astimezone(UTC) + schedule.every * k).astimezone(tz) for k in range(1, count + 1)]
    moment: datetime | None = now
    while len(runs) < count and moment is not None:
        moment = next_fire(schedule, moment, tz)
        if moment is not None:
            runs.append(moment)
    return runs


def missed_slots(schedule: Schedule, tz: tzinfo, last: datetime, resumed: datetime, limit: int) -> list[datetime]:
    """The run times after `last` (the newest one recorded) that a daemon taking over at `resumed` will not run,
    at most `limit` of them, oldest first: those up to `resumed`. Pure.

    The new leader goes on from the next slot after `resumed`: a cron job's next time, and an interval job's
    next step counted from `last` (its schedule keeps its phase across leaders and restarts).
    """
    slots: list[datetime] = []
    if isinstance(schedule, IntervalSchedule):
        moment = last + schedule.every
        while moment <= resumed and len(slots) < limit:
            slots.append(moment)
            moment += schedule.every
        return slots
    at = last
    while len(slots) < limit:
        following = next_fire(schedule, at, tz)
        if following is None or following > resumed:
            break
        slots.append(following)
        at = following
    return slots


def following_slot(schedule: Schedule, tz: tzinfo, last: datetime, resumed: datetime) -> datetime | None:
    """The first run time after `resumed` of a schedule whose newest slot was `last`: an interval's next step
    from `last` (its phase kept), a cron's next time. Pure; with `missed_slots`, every slot is one or the other."""
    if isinstance(schedule, IntervalSchedule):
        steps = max(0, math.floor((resumed - last) / schedule.every)) + 1
        return last + schedule.every * steps
    return next_fire(schedule, resumed, tz)

"""Schedules and durations: standard cron semantics, presets, intervals, DST."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.timespec import describe, following_slot, missed_slots, parse_duration, parse_schedule, upcoming

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def runs(expr: str, now: datetime, tz: ZoneInfo = UTC, count: int = 4) -> list[datetime]:
    return upcoming(parse_schedule(expr), tz, now, count)


@pytest.mark.parametrize("expr", ["0 3 * * 0", "0 3 * * 7", "0 3 * * sun", "0 3 * * SUN", "@weekly"])
def test_sunday_spellings_fall_on_sunday(expr: str) -> None:
    """0, 7 and 'sun' all mean Sunday (APScheduler alone would read 0 as Monday)."""
    for moment in runs(expr, datetime(2026, 11, 26, 12, tzinfo=UTC)):
        assert moment.strftime("%A") == "Sunday"


def test_weekday_range_is_monday_to_friday() -> None:
    """`1-5` is Monday to Friday, as in crontab(5)."""
    days = {m.strftime("%a") for m in runs("0 9 * * 1-5", datetime(2026, 11, 26, tzinfo=UTC), count=10)}
    assert days == {"Mon", "Tue", "Wed", "Thu", "Fri"}


def test_quarterly_runs_on_the_four_quarter_days() -> None:
    """@quarterly is 00:00 on 1 January, April, July and October, in the configured zone."""
    got = runs("@quarterly", datetime(2026, 11, 26, tzinfo=BERLIN), BERLIN)
    assert [m.isoformat() for m in got] == [
        "2027-01-01T00:00:00+01:00",
        "2027-04-01T00:00:00+02:00",
        "2027-07-01T00:00:00+02:00",
        "2027-10-01T00:00:00+02:00",
    ]


def test_every_90s_is_90_seconds_apart() -> None:
    """`every 90s` runs 90 s after start, then every 90 s."""
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    got = runs("every 90s", now, count=3)
    assert [m - now for m in got] == [timedelta(seconds=90), timedelta(seconds=180), timedelta(seconds=270)]


def test_interval_counts_elapsed_time_across_spring_forward() -> None:
    """An interval that spans the March DST jump in Berlin stays 90 real seconds apart."""
    now = datetime(2026, 3, 29, 1, 58, 0, tzinfo=BERLIN)
    got = runs("every 90s", now, BERLIN, count=2)
    assert got[0].isoformat() == "2026-03-29T01:59:30+01:00"
    assert got[1].isoformat() == "2026-03-29T03:01:00+02:00"
    assert got[1].astimezone(UTC) - got[0].astimezone(UTC) == timedelta(seconds=90)


def test_sunday_3am_across_spring_forward_changes_offset() -> None:
    """Weekly Sunday 03:00 in Berlin keeps 03:00 local when CET becomes CEST."""
    got = runs("0 3 * * 0", datetime(2026, 3, 20, tzinfo=BERLIN), BERLIN, count=3)
    assert [m.isoformat() for m in got] == [
        "2026-03-22T03:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-04-05T03:00:00+02:00",
    ]


def test_time_skipped_by_spring_forward_runs_when_the_clock_jumps() -> None:
    """02:30 does not exist on 29 March 2026 in Berlin: that night's run happens at 03:00 CEST."""
    got = runs("30 2 * * *", datetime(2026, 3, 28, 12, tzinfo=BERLIN), BERLIN, count=3)
    assert [m.isoformat() for m in got] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_time_repeated_by_fall_back_runs_once() -> None:
    """02:30 happens twice on 25 October 2026 in Berlin: the job runs once, at the first."""
    got = runs("30 2 * * *", datetime(2026, 10, 24, 12, tzinfo=BERLIN), BERLIN, count=3)
    assert [m.isoformat() for m in got] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_after_first_occurrence_of_repeated_hour_next_is_tomorrow() -> None:
    """Asked during the second 02:xx hour, the next run is the following day, not a rerun."""
    second_pass = datetime(2026, 10, 25, 2, 45, tzinfo=BERLIN).replace(fold=1)
    got = runs("30 2 * * *", second_pass, BERLIN, count=1)
    assert got[0].isoformat() == "2026-10-26T02:30:00+01:00"


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    """Vixie cron ORs the day fields: `0 0 13 * 5` runs on every 13th and every Friday."""
    got = runs("0 0 13 * 5", datetime(2026, 11, 1, tzinfo=UTC), count=5)
    assert [m.date().isoformat() for m in got] == [
        "2026-11-06",
        "2026-11-13",
        "2026-11-20",
        "2026-11-27",
        "2026-12-04",
    ]


def test_star_step_day_field_keeps_and_semantics() -> None:
    """A day field starting with `*` does not switch to OR: `0 0 */2 * 1` is odd-day Mondays."""
    got = runs("0 0 */2 * 1", datetime(2026, 11, 1, tzinfo=UTC), count=3)
    assert all(m.day % 2 == 1 and m.strftime("%a") == "Mon" for m in got)


def test_leap_day_schedule_finds_next_leap_year() -> None:
    """`0 0 29 2 *` runs only in leap years."""
    assert runs("0 0 29 2 *", datetime(2026, 1, 1, tzinfo=UTC), count=1)[0].date().isoformat() == "2028-02-29"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 3 * * 8", "day-of-week: 8 is out of range; it must be 0-7 or sun-sat"),
        ("60 * * * *", "minute: 60 is out of range; it must be 0-59"),
        ("0 24 * * *", "hour: 24 is out of range; it must be 0-23"),
        ("0 0 0 * *", "day-of-month: 0 is out of range; it must be 1-31"),
        ("0 0 1 13 *", "month: 13 is out of range; it must be 1-12 or jan-dec"),
        ("0 3 * *", "a cron expression has 5 fields"),
        ("0 0 3 * * *", "this has 6"),
        ("0 3 ? * MON", "Quartz syntax"),
        ("*/0 * * * *", "step '0' must be a whole number of at least 1"),
        ("0 5-2 * * *", "range '5-2' runs backwards"),
        ("@reboot", "unknown preset"),
        ("every 5x", "'every' takes a duration"),
        ("every 0s", "at least 1s"),
        ("0 0 * * funday", "'funday' is not a number 0-7 or sun-sat"),
    ],
)
def test_bad_schedules_name_the_field_and_rule(expr: str, message: str) -> None:
    """Each bad schedule is rejected with the expression, the field and the broken rule."""
    with pytest.raises(ValueError, match=r"\S") as info:
        parse_schedule(expr)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{expr!r}: ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("500ms", 0.5), ("1w", 604800)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations read like 90s, 30m, 2h, and combine."""
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize(("text", "message"), [("30", "needs a unit"), ("3 hours", "not a duration"), ("", "empty")])
def test_bad_durations(text: str, message: str) -> None:
    """A number without unit or an unknown unit is an error that says how to write it."""
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_descriptions_read_as_words() -> None:
    """`opskeeper jobs` shows schedules in words."""
    assert describe(parse_schedule("0 3 * * 0")) == "at 03:00, on Sunday"
    assert describe(parse_schedule("every 90s")) == "every 1m30s"
    assert describe(parse_schedule("@quarterly")) == "at 00:00, on day 1 of the month in Jan, Apr, Jul, Oct"
    assert (
        describe(parse_schedule("*/5 * * * *"))
        == "at minute 0,5,10,15,20,25,30,35,40,45,50,55 of every hour, every day"
    )


def test_missed_slots_are_those_a_take_over_will_not_run() -> None:
    """After a vacancy of the lead: the slots after the newest recorded one up to the take-over (the new leader
    goes on from the next, an interval in the same phase); at most `limit`; none when nothing is owed."""
    utc = ZoneInfo("UTC")
    last = datetime(2026, 12, 3, 9, 0, 0, tzinfo=utc)
    every = parse_schedule("every 1s")
    assert missed_slots(every, utc, last, last + timedelta(seconds=4.9), 100) == [
        last + timedelta(seconds=s) for s in (1, 2, 3, 4)
    ]
    assert missed_slots(every, utc, last, last + timedelta(seconds=5), 100)[-1] == last + timedelta(seconds=5)
    assert missed_slots(every, utc, last, last + timedelta(seconds=0.9), 100) == []
    assert len(missed_slots(every, utc, last, last + timedelta(days=7), 101)) == 101
    hourly = parse_schedule("0 * * * *")
    assert missed_slots(hourly, utc, last, last + timedelta(hours=2, minutes=59), 100) == [
        last + timedelta(hours=1), last + timedelta(hours=2)
    ]  # fmt: skip
    assert missed_slots(hourly, utc, last, last + timedelta(minutes=59), 100) == []


def test_the_slot_after_a_take_over_keeps_an_intervals_phase() -> None:
    """The new leader's first run: an interval's next step counted from the newest recorded slot (so `every 24h`
    survives deploys more often than that), a cron's next time; together with missed_slots, no slot is skipped."""
    utc = ZoneInfo("UTC")
    last = datetime(2026, 12, 3, 9, 0, 0, tzinfo=utc)
    daily = parse_schedule("every 24h")
    assert following_slot(daily, utc, last, last + timedelta(hours=20)) == last + timedelta(hours=24)
    assert following_slot(daily, utc, last, last + timedelta(hours=50)) == last + timedelta(hours=72)
    every = parse_schedule("every 1s")
    resumed = last + timedelta(seconds=4.9)
    assert [*missed_slots(every, utc, last, resumed, 100), following_slot(every, utc, last, resumed)] == [
        last + timedelta(seconds=s) for s in range(1, 6)
    ]
    assert following_slot(parse_schedule("0 * * * *"), utc, last, last + timedelta(minutes=1)) == last + timedelta(
        hours=1
    )

"""Cron schedules as kube-controller-manager reads them: robfig/cron's standard parser (its
syntax and its error messages) and upstream's missed-time arithmetic, with upstream's cases."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest

from reconcilers.controllers.cronjob.schedule import (
    ConstantDelaySchedule,
    Missed,
    ScheduleError,
    UnknownTimeZoneError,
    load_location,
    most_recent_schedule_time,
    next_schedule_time,
    next_schedule_time_duration,
    parse_standard,
)

UTC = datetime.UTC
TOP = datetime.datetime(2016, 5, 19, 10, tzinfo=UTC)  # a Thursday


def at(**delta: float) -> datetime.datetime:
    return TOP + datetime.timedelta(**delta)


def utc(spec: str) -> list[datetime.datetime]:
    """The next five times of ``spec`` (in UTC) from TOP."""
    schedule = parse_standard(spec, local=UTC)
    times: list[datetime.datetime] = []
    when: datetime.datetime | None = TOP
    for _ in range(5):
        assert when is not None
        when = schedule.next(when)
        assert when is not None
        times.append(when)
    return times


@pytest.mark.parametrize(
    ("spec", "first", "second"),
    [
        ("* * * * *", at(minutes=1), at(minutes=2)),
        ("* * * * ?", at(minutes=1), at(minutes=2)),
        ("0 * * * *", at(hours=1), at(hours=2)),
        ("*/15 * * * *", at(minutes=15), at(minutes=30)),
        ("5/20 * * * *", at(minutes=5), at(minutes=25)),
        ("10-12 * * * *", at(minutes=10), at(minutes=11)),
        ("1,3 * * * *", at(minutes=1), at(minutes=3)),
        ("0 0 * * *", at(hours=14), at(hours=38)),
        ("@daily", at(hours=14), at(hours=38)),
        ("@midnight", at(hours=14), at(hours=38)),
        ("@hourly", at(hours=1), at(hours=2)),
        ("@weekly", at(days=2, hours=14), at(days=9, hours=14)),  # Sundays
        ("0 0 * * sun", at(days=2, hours=14), at(days=9, hours=14)),
        ("0 0 * * MON-tue", at(days=3, hours=14), at(days=4, hours=14)),
        (
            "@monthly",
            datetime.datetime(2016, 6, 1, tzinfo=UTC),
            datetime.datetime(2016, 7, 1, tzinfo=UTC),
        ),
        (
            "@yearly",
            datetime.datetime(2017, 1, 1, tzinfo=UTC),
            datetime.datetime(2018, 1, 1, tzinfo=UTC),
        ),
        (
            "@annually",
            datetime.datetime(2017, 1, 1, tzinfo=UTC),
            datetime.datetime(2018, 1, 1, tzinfo=UTC),
        ),
        (
            "0 0 1 jan,Jul *",
            datetime.datetime(2016, 7, 1, tzinfo=UTC),
            datetime.datetime(2017, 1, 1, tzinfo=UTC),
        ),
        # Day of month and day of week both restricted: either matches.
        ("0 0 1 * 5", at(hours=14), at(days=7, hours=14)),
        (
            "0 0 29 2 *",
            datetime.datetime(2020, 2, 29, tzinfo=UTC),
            datetime.datetime(2024, 2, 29, tzinfo=UTC),
        ),
        ("@every 90m", at(minutes=90), at(minutes=180)),
    ],
)
def test_the_standard_syntax_fires_where_robfig_cron_does(
    spec: str, first: datetime.datetime, second: datetime.datetime
) -> None:
    assert utc(spec)[:2] == [first, second]


def test_a_time_between_seconds_moves_to_the_next_whole_second_first() -> None:
    schedule = parse_standard("* * * * *", local=UTC)
    assert schedule.next(at(seconds=59.5)) == at(minutes=1)
    assert schedule.next(at(minutes=1)) == at(minutes=2)
    assert ConstantDelaySchedule(60).next(at(seconds=0.7)) == at(minutes=1)


def test_a_zone_in_the_schedule_or_as_local_sets_the_wall_clock() -> None:
    york = zoneinfo.ZoneInfo("America/New_York")
    (in_schedule,) = utc("TZ=America/New_York 0 9 * * *")[:1]
    assert in_schedule.astimezone(york).hour == 9
    assert parse_standard("CRON_TZ=Asia/Tokyo 0 9 * * *").next(TOP) == datetime.datetime(
        2016, 5, 20, 0, tzinfo=UTC
    )
    assert parse_standard("0 9 * * *", local=york).next(TOP) == datetime.datetime(
        2016, 5, 19, 13, tzinfo=UTC
    )


def test_a_wall_time_that_dst_skips_is_skipped_and_a_repeated_one_runs_twice() -> None:
    york = zoneinfo.ZoneInfo("America/New_York")
    schedule = parse_standard("30 2 * * *", local=york)
    spring = schedule.next(datetime.datetime(2024, 3, 9, 12, tzinfo=UTC))
    assert spring is not None
    assert spring.astimezone(york).isoformat() == "2024-03-11T02:30:00-04:00"
    hourly = parse_standard("30 1 * * *", local=york)
    fall = hourly.next(datetime.datetime(2024, 11, 3, 4, tzinfo=UTC))
    assert fall is not None
    assert fall.astimezone(york).isoformat() == "2024-11-03T01:30:00-04:00"
    after = hourly.next(fall)
    assert after is not None
    # robfig/cron runs again in the repeated hour (kcm does the same).
    assert after.astimezone(york).isoformat() == "2024-11-03T01:30:00-05:00"


def test_an_impossible_date_has_no_next_time() -> None:
    assert parse_standard("59 23 31 2 *", local=UTC).next(TOP) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty spec string"),
        ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
        ("obvious error schedule", "expected exactly 5 fields, found 3: [obvious error schedule]"),
        ("* * * * * *", "expected exactly 5 fields, found 6: [* * * * * *]"),
        ("60 * * * *", "end of range (60) above maximum (59): 60"),
        ("* 24 * * *", "end of range (24) above maximum (23): 24"),
        ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
        ("* * * 13 *", "end of range (13) above maximum (12): 13"),
        ("* * * * 7", "end of range (7) above maximum (6): 7"),
        ("5-1 * * * *", "beginning of range (5) beyond end of range (1): 5-1"),
        ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
        ("*/2/3 * * * *", "too many slashes: */2/3"),
        ("*/0 * * * *", "step of range should be a positive number: */0"),
        ("a * * * *", 'failed to parse int from a: strconv.Atoi: parsing "a": invalid syntax'),
        (
            "* * * * funday",
            'failed to parse int from funday: strconv.Atoi: parsing "funday": invalid syntax',
        ),
        ("@fortnightly", "unrecognized descriptor: @fortnightly"),
        (
            "@every 1d",
            'failed to parse duration @every 1d: time: unknown unit "d" in duration "1d"',
        ),
        ("@every 5", 'failed to parse duration @every 5: time: missing unit in duration "5"'),
        (
            "TZ=Mars/Olympus * * * * *",
            "provided bad location Mars/Olympus: unknown time zone Mars/Olympus",
        ),
        ("TZ=UTC", "invalid schedule format: runtime error: slice bounds out of range [:-1]"),
    ],
)
def test_a_bad_schedule_is_an_error_in_robfig_s_words(spec: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_standard(spec, local=UTC)
    assert str(caught.value) == message


def test_every_rounds_down_to_whole_seconds_and_at_least_one() -> None:
    assert parse_standard("@every 1.5s") == ConstantDelaySchedule(1)
    assert parse_standard("@every 100ms") == ConstantDelaySchedule(1)
    assert parse_standard("@every 1h30m") == ConstantDelaySchedule(5400)


def test_time_zones_load_as_go_loads_them() -> None:
    assert load_location("") is UTC
    assert load_location("UTC") is UTC
    assert load_location("Europe/Paris") == zoneinfo.ZoneInfo("Europe/Paris")
    with pytest.raises(UnknownTimeZoneError, match=r"^unknown time zone bad timezone$"):
        load_location("bad timezone")


# Upstream's TestMostRecentScheduleTime: (schedule, earliest, deadline, now) -> (earliest
# considered, most recent time, how many missed).
MOST_RECENT = [
    ("0 * * * *", TOP, None, at(seconds=30), TOP, None, Missed.NONE),
    ("0 * * * *", TOP, None, at(minutes=61), TOP, at(minutes=60), Missed.NONE),
    (
        "0 * * * *",
        at(seconds=10),
        None,
        at(minutes=301),
        at(seconds=10),
        at(minutes=300),
        Missed.FEW,
    ),
    (
        "30 6-16/4 * * 1-5",
        at(minutes=30),
        None,
        at(hours=24, minutes=31),
        at(minutes=30),
        at(hours=24, minutes=30),
        Missed.FEW,
    ),
    (
        "30 10,11,12 * * 1-5",
        at(minutes=30),
        None,
        at(hours=30, minutes=30),
        at(minutes=30),
        None,
        Missed.FEW,
    ),
    (
        "30 6-16/4 * * 1-5",
        at(minutes=30),
        None,
        at(hours=96, minutes=31),
        at(minutes=30),
        at(hours=96, minutes=30),
        Missed.FEW,
    ),
    (
        "30 6-16/4 * * 1-5",
        TOP,
        None,
        at(hours=24, minutes=31),
        TOP,
        at(hours=24, minutes=30),
        Missed.FEW,
    ),
    (
        "@every 1h",
        at(minutes=1),
        None,
        at(days=7),
        at(minutes=1),
        at(days=6, hours=23, minutes=1),
        Missed.MANY,
    ),
    ("0 * * * *", TOP, None, at(seconds=30), TOP, None, Missed.NONE),
    ("*/5 * * * *", at(minutes=30), None, at(minutes=31), at(minutes=30), None, Missed.NONE),
    ("*/5 * * * *", at(minutes=30), 60, at(minutes=31), at(minutes=30), None, Missed.NONE),
    ("*/5 * * * *", at(minutes=30), 60, at(minutes=32), at(minutes=31), None, Missed.NONE),
]


@pytest.mark.parametrize("case", MOST_RECENT)
def test_the_most_recent_missed_time_as_upstream_finds_it(
    case: tuple[
        str,
        datetime.datetime,
        int | None,
        datetime.datetime,
        datetime.datetime,
        datetime.datetime | None,
        str,
    ],
) -> None:
    spec, earliest, deadline, now, first, recent, missed = case
    schedule = parse_standard(spec, local=UTC)
    assert most_recent_schedule_time(earliest, now, schedule, deadline) == (first, recent, missed)


def test_a_schedule_that_never_comes_is_an_error() -> None:
    schedule = parse_standard("59 23 31 2 *", local=UTC)
    with pytest.raises(ScheduleError, match="less than 1 second"):
        most_recent_schedule_time(at(seconds=10), at(hours=1), schedule)
    with pytest.raises(ScheduleError):
        next_schedule_time(at(seconds=10), at(hours=1), schedule, None)
    assert next_schedule_time_duration(at(seconds=10), at(hours=1), schedule) is None


@pytest.mark.parametrize(
    ("spec", "earliest", "now", "wait"),
    [
        ("30 6-16/4 * * 1-5", at(minutes=30), at(hours=24, minutes=31), 3 * 3600 + 59 * 60),
        ("30 10,11,12 * * 1-5", at(minutes=30), at(hours=30, minutes=30), 66 * 3600),
        ("0 12 * * 4", at(hours=2), at(days=19, hours=1, minutes=30), 48 * 3600 + 30 * 60),
        ("0 12 * * 5", TOP, at(hours=6), 20 * 3600),
    ],
)
def test_the_requeue_is_just_after_the_next_time(
    spec: str, earliest: datetime.datetime, now: datetime.datetime, wait: float
) -> None:
    got = next_schedule_time_duration(earliest, now, parse_standard(spec, local=UTC))
    assert got == pytest.approx(wait + 0.1)


def test_next_schedule_time_is_due_only_once_past_and_within_the_deadline() -> None:
    hourly = parse_standard("0 * * * *", local=UTC)
    assert next_schedule_time(TOP, at(minutes=59), hourly, None) == (None, Missed.NONE)
    assert next_schedule_time(TOP, at(minutes=61), hourly, None) == (at(hours=1), Missed.NONE)
    # Far behind: the latest time counts, and more than 100 missed is "many".
    due, missed = next_schedule_time(TOP, at(days=10, minutes=1), hourly, None)
    assert (due, missed) == (at(days=10), Missed.MANY)
    # A short deadline looks back only that far.
    assert next_schedule_time(TOP, at(days=10, minutes=1), hourly, 600) == (
        at(days=10),
        Missed.NONE,
    )

"""Cron schedules as kube-controller-manager reads them: robfig/cron v3's standard parser, and
the arithmetic upstream's ``utils.go`` does with it (the most recent missed time, the wait for
the next one).

The parser takes five fields (minute, hour, day of month, month, day of week) with ``*`` or
``?``, ranges ``a-b``, steps ``/n``, lists ``a,b``, month and weekday names, the descriptors
``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``), ``@hourly``
and ``@every <duration>``, and a leading ``TZ=<zone>`` or ``CRON_TZ=<zone>``. The apiserver's
validation refuses ``TZ=`` in new CronJobs (``cannot use TZ or CRON_TZ in schedule, use timeZone
field instead``) but keeps it in old ones, and accepts ``@every``: the controller reads both.
Error messages are robfig's, since they end up in events users read.

Times are computed as Go computes them (whole seconds, wall clock fields read in the schedule's
zone, Go's rules for wall times a DST change skips or repeats), so a schedule fires at the same
instants as under kube-controller-manager. A schedule without a zone runs in the process's local
zone, as kcm's ``time.Local``.
"""

from __future__ import annotations

import datetime
import os
import re
import zoneinfo
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "LOCAL",
    "NEXT_SCHEDULE_DELTA",
    "ConstantDelaySchedule",
    "Missed",
    "Schedule",
    "ScheduleError",
    "SpecSchedule",
    "UnknownTimeZoneError",
    "load_location",
    "most_recent_schedule_time",
    "next_schedule_time",
    "next_schedule_time_duration",
    "parse_standard",
]

UTC: Final = datetime.UTC
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL: Final = datetime.date(1970, 1, 1).toordinal()
_STAR: Final = 1 << 63
# Upstream requeues this long after the next schedule time, so the sync sees that time passed.
NEXT_SCHEDULE_DELTA: Final = 0.1


class ScheduleError(ValueError):
    """The schedule does not parse, or has no usable times; the text is robfig's/upstream's."""


class UnknownTimeZoneError(ValueError):
    """Go's ``time.LoadLocation`` failed; the text is Go's."""


def load_location(name: str) -> datetime.tzinfo:
    """Go's ``time.LoadLocation``: ``""`` and ``UTC`` are UTC, ``Local`` the process's zone."""
    if name in ("", "UTC"):
        return UTC
    if name == "Local":
        return LOCAL
    try:
        return zoneinfo.ZoneInfo(name)
    except zoneinfo.ZoneInfoNotFoundError:
        raise UnknownTimeZoneError(f"unknown time zone {name}") from None
    except (ValueError, OSError):
        raise UnknownTimeZoneError("time: invalid location name") from None


def _local_zone() -> datetime.tzinfo:
    """Go's ``time.Local``: ``$TZ`` if set (empty: UTC), else ``/etc/localtime``, else UTC."""
    tz = os.environ.get("TZ")
    if tz is not None:
        if tz in ("", "UTC"):
            return UTC
        try:
            return zoneinfo.ZoneInfo(tz.removeprefix(":"))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            return UTC
    try:
        with open("/etc/localtime", "rb") as file:
            return zoneinfo.ZoneInfo.from_file(file, key="Local")
    except (OSError, ValueError):
        return UTC


LOCAL: Final = _local_zone()


# --- Go's time, on whole seconds --------------------------------------------------------------


def _seconds(when: datetime.datetime) -> int:
    """Unix seconds, rounded down (exact: no float)."""
    delta = when - _EPOCH
    return delta.days * 86400 + delta.seconds


def _wall(unix: int, loc: datetime.tzinfo) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, loc)


def _offset(unix: int, loc: datetime.tzinfo) -> int:
    offset = _wall(unix, loc).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _go_date(
    loc: datetime.tzinfo,
    year: int,
    month: int,
    day: int,
    *,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
) -> int:
    """Go's ``time.Date``: out-of-range fields carry over; a wall time that a DST change skips
    or repeats takes the offset Go's algorithm picks (the zone in force at the wall time read as
    UTC, corrected once)."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    days = datetime.date(year, month, 1).toordinal() - _EPOCH_ORDINAL + day - 1
    unix = days * 86400 + hour * 3600 + minute * 60 + second
    offset = _offset(unix, loc)
    if offset:
        if _offset(unix - offset, loc) != offset:
            offset = _offset(unix - offset, loc)
        unix -= offset
    return unix


class Schedule(Protocol):
    def next(self, when: datetime.datetime) -> datetime.datetime | None:
        """The first activation strictly after ``when``; None where Go returns the zero time
        (nothing within five years)."""


@dataclass(frozen=True)
class SpecSchedule:
    """Bit sets of the allowed seconds, minutes, hours, days, months and weekdays (bit 63: the
    field was ``*``/``?``, which changes how day of month and day of week combine)."""

    second: int
    minute: int
    hour: int
    dom: int
    month: int
    dow: int
    location: datetime.tzinfo

    def next(self, when: datetime.datetime) -> datetime.datetime | None:
        loc = self.location
        t = _seconds(when) + 1  # the next whole second
        added = False
        year_limit = _wall(t, loc).year + 5
        while True:  # robfig's WRAP label
            w = _wall(t, loc)
            if w.year > year_limit:
                return None
            wrapped = False
            while not (1 << w.month) & self.month:
                if not added:
                    added = True
                    t = _go_date(loc, w.year, w.month, 1)
                    w = _wall(t, loc)
                t = _go_date(
                    loc, w.year, w.month + 1, w.day, hour=w.hour, minute=w.minute, second=w.second
                )
                w = _wall(t, loc)
                if w.month == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not self._day_matches(w):
                if not added:
                    added = True
                    t = _go_date(loc, w.year, w.month, w.day)
                    w = _wall(t, loc)
                t = _go_date(
                    loc, w.year, w.month, w.day + 1, hour=w.hour, minute=w.minute, second=w.second
                )
                w = _wall(t, loc)
                # A DST change can leave the day at another hour than midnight: round to it.
                if w.hour != 0:
                    t += (24 - w.hour) * 3600 if w.hour > 12 else -w.hour * 3600
                    w = _wall(t, loc)
                if w.day == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.hour) & self.hour:
                if not added:
                    added = True
                    t = _go_date(loc, w.year, w.month, w.day, hour=w.hour)
                t += 3600
                w = _wall(t, loc)
                if w.hour == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.minute) & self.minute:
                if not added:
                    added = True
                    t -= t % 60
                t += 60
                w = _wall(t, loc)
                if w.minute == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.second) & self.second:
                added = True
                t += 1
                w = _wall(t, loc)
                if w.second == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            return datetime.datetime.fromtimestamp(t, UTC)

    def _day_matches(self, w: datetime.datetime) -> bool:
        dom = bool((1 << w.day) & self.dom)
        dow = bool((1 << ((w.weekday() + 1) % 7)) & self.dow)
        if self.dom & _STAR or self.dow & _STAR:
            return dom and dow
        return dom or dow


@dataclass(frozen=True)
class ConstantDelaySchedule:
    """``@every <duration>``: whole seconds after the previous time (at least one)."""

    delay: int  # seconds

    def next(self, when: datetime.datetime) -> datetime.datetime | None:
        return datetime.datetime.fromtimestamp(_seconds(when) + self.delay, UTC)


# --- the parser ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bounds:
    low: int
    high: int
    names: dict[str, int] | None = None


def _names(names: str, first: int) -> dict[str, int]:
    return {name: first + i for i, name in enumerate(names.split(" "))}


_MINUTES: Final = _Bounds(0, 59)
_HOURS: Final = _Bounds(0, 23)
_DOM: Final = _Bounds(1, 31)
_MONTHS: Final = _Bounds(
    1,
    12,
    _names("jan feb mar apr may jun jul aug sep oct nov dec", 1),
)
_DOW: Final = _Bounds(0, 6, _names("sun mon tue wed thu fri sat", 0))
_INT: Final = re.compile(r"[+-]?[0-9]+")
_INT64_MAX: Final = 2**63 - 1


def _bits(low: int, high: int, step: int) -> int:
    return sum(1 << i for i in range(low, high + 1, step))


def _all(bounds: _Bounds) -> int:
    return _bits(bounds.low, bounds.high, 1) | _STAR


def _parse_int(expr: str) -> int:
    if not _INT.fullmatch(expr):
        raise ScheduleError(
            f'failed to parse int from {expr}: strconv.Atoi: parsing "{expr}": invalid syntax'
        )
    number = int(expr)
    if abs(number) > _INT64_MAX:
        raise ScheduleError(
            f'failed to parse int from {expr}: strconv.Atoi: parsing "{expr}": value out of range'
        )
    if number < 0:
        raise ScheduleError(f"negative number ({number}) not allowed: {expr}")
    return number


def _int_or_name(expr: str, names: dict[str, int] | None) -> int:
    if names is not None and expr.lower() in names:
        return names[expr.lower()]
    return _parse_int(expr)


def _range(expr: str, bounds: _Bounds) -> int:
    range_and_step = expr.split("/")
    low_and_high = range_and_step[0].split("-")
    single = len(low_and_high) == 1
    extra = 0
    if low_and_high[0] in ("*", "?"):
        start, end, extra = bounds.low, bounds.high, _STAR
    else:
        start = _int_or_name(low_and_high[0], bounds.names)
        if len(low_and_high) == 1:
            end = start
        elif len(low_and_high) == 2:
            end = _int_or_name(low_and_high[1], bounds.names)
        else:
            raise ScheduleError(f"too many hyphens: {expr}")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        step = _parse_int(range_and_step[1])
        if single:
            end = bounds.high
        if step > 1:
            extra = 0
    else:
        raise ScheduleError(f"too many slashes: {expr}")
    if start < bounds.low:
        raise ScheduleError(f"beginning of range ({start}) below minimum ({bounds.low}): {expr}")
    if end > bounds.high:
        raise ScheduleError(f"end of range ({end}) above maximum ({bounds.high}): {expr}")
    if start > end:
        raise ScheduleError(f"beginning of range ({start}) beyond end of range ({end}): {expr}")
    if step == 0:
        raise ScheduleError(f"step of range should be a positive number: {expr}")
    return _bits(start, end, step) | extra


def _field(text: str, bounds: _Bounds) -> int:
    bits = 0
    for expr in (part for part in text.split(",") if part):
        bits |= _range(expr, bounds)
    return bits


_DURATION_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART: Final = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def _parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, in nanoseconds."""
    quoted = f'"{text}"'
    rest, sign = text, 1
    if rest[:1] in ("-", "+"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0
    while rest:
        match = _DURATION_PART.match(rest)
        number, unit = match.groups() if match else ("", "")
        if number in ("", "."):
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration {quoted}')
        whole, _, fraction = number.partition(".")
        scale = _DURATION_UNITS[unit]
        total += int(whole or "0") * scale
        if fraction:
            total += int(int(fraction) * scale / 10 ** len(fraction))
        rest = rest[len(number) + len(unit) :]
    return sign * total


def _descriptor(spec: str, loc: datetime.tzinfo) -> Schedule:
    one_second, one_minute, one_hour = 1 << 0, 1 << 0, 1 << 0
    if spec in ("@yearly", "@annually"):
        return SpecSchedule(one_second, one_minute, one_hour, 1 << 1, 1 << 1, _all(_DOW), loc)
    if spec == "@monthly":
        return SpecSchedule(
            one_second, one_minute, one_hour, 1 << 1, _all(_MONTHS), _all(_DOW), loc
        )
    if spec == "@weekly":
        return SpecSchedule(one_second, one_minute, one_hour, _all(_DOM), _all(_MONTHS), 1, loc)
    if spec in ("@daily", "@midnight"):
        return SpecSchedule(
            one_second, one_minute, one_hour, _all(_DOM), _all(_MONTHS), _all(_DOW), loc
        )
    if spec == "@hourly":
        return SpecSchedule(
            one_second, one_minute, _all(_HOURS), _all(_DOM), _all(_MONTHS), _all(_DOW), loc
        )
    if spec.startswith("@every "):
        try:
            nanoseconds = _parse_duration(spec[len("@every ") :])
        except ValueError as error:
            raise ScheduleError(f"failed to parse duration {spec}: {error}") from None
        return ConstantDelaySchedule(max(nanoseconds // 1_000_000_000, 1))
    raise ScheduleError(f"unrecognized descriptor: {spec}")


def parse_standard(spec: str, *, local: datetime.tzinfo | None = None) -> Schedule:
    """robfig's ``ParseStandard`` (as kcm's ``ParseCronScheduleWithPanicRecovery`` calls it);
    ``local``: the zone of a schedule that names none (default: :data:`LOCAL`)."""
    if not spec:
        raise ScheduleError("empty spec string")
    loc = LOCAL if local is None else local
    if spec.startswith(("TZ=", "CRON_TZ=")):
        space = spec.find(" ")
        if space < 0:
            # Go slices with -1 and panics; kcm recovers the panic into this error.
            raise ScheduleError(
                "invalid schedule format: runtime error: slice bounds out of range [:-1]"
            )
        name = spec[spec.index("=") + 1 : space]
        try:
            loc = load_location(name)
        except UnknownTimeZoneError as error:
            raise ScheduleError(f"provided bad location {name}: {error}") from None
        spec = spec[space:].strip()
    if spec.startswith("@"):
        return _descriptor(spec, loc)
    fields = spec.split()
    if len(fields) != 5:
        raise ScheduleError(f"expected exactly 5 fields, found {len(fields)}: [{' '.join(fields)}]")
    return SpecSchedule(
        second=1,
        minute=_field(fields[0], _MINUTES),
        hour=_field(fields[1], _HOURS),
        dom=_field(fields[2], _DOM),
        month=_field(fields[3], _MONTHS),
        dow=_field(fields[4], _DOW),
        location=loc,
    )


# --- upstream's utils.go ------------------------------------------------------------------------


class Missed:
    """How many start times were missed (upstream's ``missedSchedulesType``)."""

    NONE: Final = "none"
    FEW: Final = "few"
    MANY: Final = "many"  # more than 100: a warning event


def most_recent_schedule_time(
    earliest: datetime.datetime,
    now: datetime.datetime,
    schedule: Schedule,
    starting_deadline: int | None = None,
) -> tuple[datetime.datetime, datetime.datetime | None, str]:
    """The earliest time considered, the latest start time in (earliest, now] if any, and how
    many were missed. ``earliest``: lastScheduleTime, else creationTimestamp; a starting
    deadline moves it to ``now - deadline`` when that is later. Raises :class:`ScheduleError`
    when two consecutive times are less than a second apart (or never come)."""
    if starting_deadline is not None:
        deadline = now - datetime.timedelta(seconds=starting_deadline)
        earliest = max(earliest, deadline)
    t1 = schedule.next(earliest)
    if t1 is not None and now < t1:
        return earliest, None, Missed.NONE
    t2 = schedule.next(t1) if t1 is not None else None
    if t1 is not None and t2 is not None and now < t2:
        return earliest, t1, Missed.NONE
    between = round((t2 - t1).total_seconds()) if t1 is not None and t2 is not None else 0
    if t1 is None or between < 1:
        raise ScheduleError("time difference between two schedules is less than 1 second")
    elapsed = int((now - t1).total_seconds())
    missed = elapsed // between + 1
    # Step close to ``now`` at the average interval, then walk the last few times.
    most_recent: datetime.datetime | None = None
    t: datetime.datetime | None = schedule.next(
        t1 + datetime.timedelta(seconds=(missed - 2) * between)
    )
    while t is not None and t <= now:
        most_recent = t
        t = schedule.next(t)
    return earliest, most_recent, Missed.MANY if missed > 100 else Missed.FEW


def next_schedule_time(
    earliest: datetime.datetime,
    now: datetime.datetime,
    schedule: Schedule,
    starting_deadline: int | None,
) -> tuple[datetime.datetime | None, str]:
    """The start time to act on now (None: none is due), and how many were missed; raises
    :class:`ScheduleError` as :func:`most_recent_schedule_time` (upstream then returns no time
    and the error together)."""
    _, most_recent, missed = most_recent_schedule_time(earliest, now, schedule, starting_deadline)
    if most_recent is None or most_recent > now:
        return None, missed
    return most_recent, missed


def next_schedule_time_duration(
    earliest: datetime.datetime, now: datetime.datetime, schedule: Schedule
) -> float | None:
    """Seconds until just after the next start time (the requeue of every sync); None when
    the schedule has no next time (upstream's duration would be negative: an immediate sync
    that finds the schedule invalid and stops)."""
    try:
        first, most_recent, missed = most_recent_schedule_time(earliest, now, schedule)
    except ScheduleError:
        most_recent = now
    else:
        if most_recent is None:
            most_recent = first if missed == Missed.NONE else now
    following = schedule.next(most_recent)
    if following is None:
        return None
    return (following - now).total_seconds() + NEXT_SCHEDULE_DELTA

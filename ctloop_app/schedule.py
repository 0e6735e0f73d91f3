"""When `ctloop serve` runs the pipeline: the config's `schedule`, a cron or an interval.

A five-field cron ("0 * * * *": hourly, on the hour, in the machine's local time) is read by
APScheduler's CronTrigger, the same syntax a crontab takes. An interval ("every 30m", "every
2h", "every 90s", "every 1d") counts from the previous run's start, so a run that overruns its
interval is followed by the next at once rather than piling up: one run at a time. The first run
comes one interval after the service starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from ctloop.config import ConfigError

__all__ = ["Schedule", "parse_schedule"]

_INTERVAL = re.compile(r"every\s+(\d+)\s*([smhd])", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class Schedule:
    text: str
    interval: timedelta | None = None
    cron: CronTrigger | None = None

    def next_after(self, previous: datetime | None, now: datetime) -> datetime:
        """The next run's time: one interval after `previous` (the last run's start; `now` before the
        first), or the cron's next time after `now`. Times are timezone-aware."""
        if self.interval is not None:
            return max(now, (previous or now) + self.interval)
        return self.cron.get_next_fire_time(None, now)


def parse_schedule(text: str) -> Schedule:
    """Read the config's `schedule`; a ConfigError says what is wrong with it."""
    if match := _INTERVAL.fullmatch(text.strip()):
        interval = timedelta(**{_UNITS[match[2].lower()]: int(match[1])})
        if interval <= timedelta(0):
            raise ConfigError(f"schedule {text!r}: the interval must be longer than 0")
        return Schedule(text, interval=interval)
    try:
        return Schedule(text, cron=CronTrigger.from_crontab(text))
    except ValueError as error:
        raise ConfigError(f"schedule {text!r} is neither a five-field cron (e.g. '0 * * * *') nor an interval "
                          f"(e.g. 'every 30m'): {error}") from error

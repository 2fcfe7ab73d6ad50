"""Progress of long stages, for whoever watches: a terminal, a Dagster run's log.

A stage opens a tracker (``reporter.stage("embed", total=n, unit="rows")``), reports what it has
done with counters (``tracker.update(done, cache_hits=3)``) and closes it. Each sink decides how
often to show it: a tqdm bar on a terminal, a plain line every few percent elsewhere.

``mergeit run`` runs the Dagster assets in this process; it installs its terminal sink with
``console(sink)`` and the assets add it to their own (run log) sink via ``console_sinks()``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Protocol

Counter = int | float | str


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    done: int
    total: int | None
    unit: str
    elapsed_s: float
    counters: Mapping[str, Counter] = field(default_factory=dict)
    finished: bool = False

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(self.done / self.total, 1.0)

    @property
    def rate(self) -> float | None:
        """Units per second since the stage began."""
        return self.done / self.elapsed_s if self.done and self.elapsed_s > 0 else None

    @property
    def eta_s(self) -> float | None:
        if self.finished or not self.total or not self.rate:
            return None
        return max(self.total - self.done, 0) / self.rate

    def describe(self) -> str:
        """One line: ``embed 640/3,000 rows (21%) 45.2 rows/s ETA 52s; cache_hits 3``."""
        amount = f"{self.done:,}/{self.total:,}" if self.total is not None else f"{self.done:,}"
        parts = [f"{self.stage} {amount} {self.unit}"]
        if self.fraction is not None:
            parts.append(f"({self.fraction:.0%})")
        if self.rate:
            parts.append(f"{self.rate:.1f} {self.unit}/s")
        if self.finished:
            parts.append(f"done in {format_seconds(self.elapsed_s)}")
        elif self.eta_s is not None:
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        line = " ".join(parts)
        if self.counters:
            line += "; " + ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in self.counters.items())
        return line


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressSink(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


class StageProgress:
    """One stage's running tally; every update goes to every sink."""

    def __init__(self, sinks: tuple[ProgressSink, ...], stage: str, total: int | None, unit: str) -> None:
        self._sinks = sinks
        self.stage = stage
        self.total = total
        self.unit = unit
        self.done = 0
        self.counters: dict[str, Counter] = {}
        self._started = time.monotonic()
        self._finished = False
        self._emit()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def update(self, done: int, **counters: Counter) -> None:
        self.done = done
        self.counters.update(counters)
        self._emit()

    def advance(self, step: int = 1, **counters: Counter) -> None:
        self.update(self.done + step, **counters)

    def finish(self, **counters: Counter) -> None:
        if self._finished:
            return
        self.counters.update(counters)
        if self.total is not None:
            self.done = max(self.done, self.total)
        self._finished = True
        self._emit()

    def _emit(self) -> None:
        event = ProgressEvent(
            self.stage, self.done, self.total, self.unit, self.elapsed_s, dict(self.counters), self._finished
        )
        for sink in self._sinks:
            sink(event)

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.finish()


class ProgressReporter:
    """Hands stages their trackers; with no sinks it reports to nobody."""

    def __init__(self, *sinks: ProgressSink) -> None:
        self._sinks = sinks

    def stage(self, stage: str, total: int | None, unit: str) -> StageProgress:
        return StageProgress(self._sinks, stage, total, unit)


NO_PROGRESS = ProgressReporter()


class LineSink:
    """Writes ``event.describe()`` when a stage starts and ends, each time it passes another
    ``every_percent``, and at least every ``every_s`` seconds so a slow stage still shows life."""

    def __init__(self, write: Callable[[str], None], *, every_percent: float = 10.0, every_s: float = 30.0) -> None:
        self._write = write
        self._every = every_percent / 100
        self._every_s = every_s
        self._next: dict[str, float] = {}
        self._last_line_at: dict[str, float] = {}

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        fraction = event.fraction
        starting = event.stage not in self._next
        # At 100% the stage is only writing up: its "done" line follows.
        due = starting or event.finished or (fraction is not None and fraction < 1.0 and (
            fraction >= self._next[event.stage] or now - self._last_line_at[event.stage] >= self._every_s
        ))
        if not due:
            return
        if event.finished:
            self._next.pop(event.stage, None)
            self._last_line_at.pop(event.stage, None)
        else:
            steps_reached = int((fraction or 0.0) / self._every + 1e-9) if self._every > 0 else 0
            self._next[event.stage] = (steps_reached + 1) * self._every - 1e-9
            self._last_line_at[event.stage] = now
        self._write(event.describe())


class TqdmSink:
    """One tqdm bar per stage, on a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = stream
        self._bars: dict[str, object] = {}

    def __call__(self, event: ProgressEvent) -> None:
        bar = self._bars.get(event.stage)
        if bar is None:
            bar = self._bars[event.stage] = self._tqdm(
                total=event.total, desc=event.stage, unit=f" {event.unit}", file=self._stream, dynamic_ncols=True
            )
        bar.total = event.total
        bar.n = event.done
        bar.set_postfix({name.replace("_", " "): value for name, value in event.counters.items()}, refresh=False)
        bar.refresh()
        if event.finished:
            bar.close()
            del self._bars[event.stage]


def terminal_sink(stream: IO[str] | None = None) -> ProgressSink:
    """A tqdm bar where ``stream`` is a terminal and tqdm is installed, plain lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        try:
            return TqdmSink(stream)
        except ImportError:
            pass
    return LineSink(lambda line: print(f"[mergeit] {line}", file=stream, flush=True))


_console_sinks: list[ProgressSink] = []


@contextmanager
def console(sink: ProgressSink) -> Iterator[None]:
    """While the block runs, stages run in this process also report to ``sink``."""
    _console_sinks.append(sink)
    try:
        yield
    finally:
        _console_sinks.remove(sink)


def console_sinks() -> tuple[ProgressSink, ...]:
    return tuple(_console_sinks)

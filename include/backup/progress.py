"""Progress of long work (dump, encrypt, checksum, upload, verify, restore, PITR replay):
bytes done, rate and, where the total is known or estimated, percent and ETA.

One helper for every step. A step makes a :class:`Progress` and calls :meth:`Progress.add`
where its bytes flow; the cost per call is an add and a compare (the clock is read at
most once per ``check_bytes``). Where the lines go is the caller's choice, set around the
work with :func:`reporting`:

- task logs (the default): :class:`LogSink`, one line every 30 s or every 10 %, whichever
  comes first, never more than one line per 5 s, and a final line at 100 %;
- the CLI on a terminal: a live ``rich`` bar (:class:`RichSink`); ``--quiet``: nothing.

Work whose size is only estimated (``pg_database_size`` for a dump) shows at most 99 %
until it finishes. Steps that read a file through code they do not own (a target's
upload) register the file with :func:`counting_reads`; :func:`open_counted` and the
target streams then count what they read of it, from whatever thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

log = logging.getLogger("include.backup.progress")

Clock = Callable[[], float]

LOG_EVERY_S = 30.0  # a line at least this often while bytes flow...
LOG_EVERY_PERCENT = 10.0  # ...or at each 10 % reached, whichever comes first...
LOG_MIN_GAP_S = 5.0  # ...but never more than one line per 5 s
CHECK_BYTES = 1 << 20  # read the clock at most once per MiB


@dataclass(frozen=True)
class Snapshot:
    """Where a piece of work stands."""

    what: str
    done: int
    total: int | None
    elapsed: float
    final: bool = False
    detail: str = ""

    @property
    def rate(self) -> float:
        """Bytes per second since the start."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def percent(self) -> float | None:
        """Percent done; an estimate that turned out low shows 99 % until the end."""
        if self.final:
            return 100.0
        if not self.total:
            return None
        return min(100.0 * self.done / self.total, 99.0)

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far, where the total is known."""
        if self.final or not self.total or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    def line(self) -> str:
        """One log line: ``restore b1: 1.5 GiB of 10.0 GiB (15 %), 120.0 MiB/s, ETA 1m 11s``."""
        parts = [fmt_bytes(self.done) + (f" of {fmt_bytes(self.total)}" if self.total else "")]
        if self.percent is not None:
            parts[0] += f" ({self.percent:.0f} %)"
        parts.append(f"{fmt_bytes(self.rate)}/s")
        if self.final:
            parts.append(f"done in {fmt_seconds(self.elapsed)}")
        elif self.eta is not None:
            parts.append(f"ETA {fmt_seconds(self.eta)}")
        if self.detail:
            parts.append(self.detail)
        return f"{self.what}: " + ", ".join(parts)


def fmt_bytes(n: float) -> str:
    """``1.5 GiB``: binary units, one decimal above bytes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_seconds(s: float) -> str:
    """``1h 02m``, ``3m 20s``, ``12s``."""
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


# --- where the lines go ------------------------------------------------------------------


class Sink(Protocol):
    """Told of progress: ``update`` at most once per ``check_bytes`` (cheap: it decides from
    the tracker's counters whether to build a snapshot), ``close`` once, at the end."""

    def update(self, progress: Progress, now: float) -> None: ...

    def close(self, snap: Snapshot, now: float) -> None: ...


class LogSink:
    """Task-log lines: every 30 s or every 10 %, whichever first, at most one per 5 s,
    and the final line (the policy of docs/progress.md)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._last: float | None = None  # when the last line was written (or the start)
        self._next_percent = LOG_EVERY_PERCENT

    def update(self, progress: Progress, now: float) -> None:
        gap = now - (self._last if self._last is not None else progress.started)
        if gap < LOG_MIN_GAP_S:
            return
        total = progress.total  # an estimate passed shows 99 % (Snapshot.percent): no line for it
        if gap >= LOG_EVERY_S or (total and min(100.0 * progress.done / total, 99.0) >= self._next_percent):
            self._write(progress.snapshot(now=now), now)

    def close(self, snap: Snapshot, now: float) -> None:
        self._write(snap, now)

    def _write(self, snap: Snapshot, now: float) -> None:
        self._last = now
        if snap.percent is not None:  # the next 10 % mark above where we are
            self._next_percent = (snap.percent // LOG_EVERY_PERCENT + 1) * LOG_EVERY_PERCENT
        self._log.info("progress %s", snap.line())


class NullSink:
    """``--quiet``: nothing."""

    def update(self, progress: Progress, now: float) -> None:
        pass

    def close(self, snap: Snapshot, now: float) -> None:
        pass


class RichSink:
    """A live ``rich`` progress bar on stderr (the CLI on a terminal); one bar per piece
    of work, left on screen when it finishes."""

    def __init__(self, what: str, total: int | None, console: Any = None) -> None:
        import rich.progress as rp  # lazy: rich only where a terminal shows the bar

        self._bar = rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.DownloadColumn(binary_units=True),
            rp.TransferSpeedColumn(),
            rp.TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._bar.add_task(what, total=total)
        self._bar.start()
        self._shown = float("-inf")

    def update(self, progress: Progress, now: float) -> None:
        if now - self._shown >= 0.1:  # the bar redraws ten times a second anyway
            self._shown = now
            self._bar.update(self._task, completed=progress.done, description=_described(progress))

    def close(self, snap: Snapshot, now: float) -> None:
        self._bar.update(self._task, completed=snap.done, total=snap.done, description=_described(snap))
        self._bar.stop()


def _described(work: Snapshot | Progress) -> str:
    return f"{work.what} ({work.detail})" if work.detail else work.what


SinkFactory = Callable[[str, int | None], Sink]
_SINKS: ContextVar[SinkFactory | None] = ContextVar("backup_progress_sinks", default=None)
_CLOCK: ContextVar[Clock | None] = ContextVar("backup_progress_clock", default=None)


@contextlib.contextmanager
def reporting(factory: SinkFactory | None) -> Iterator[None]:
    """Send the progress of the work inside to sinks made by ``factory(what, total)``
    (None: the task-log lines, the default)."""
    token = _SINKS.set(factory)
    try:
        yield
    finally:
        _SINKS.reset(token)


@contextlib.contextmanager
def clock(fake: Clock) -> Iterator[None]:
    """The clock of every Progress made inside (tests drive time with it)."""
    token = _CLOCK.set(fake)
    try:
        yield
    finally:
        _CLOCK.reset(token)


def quiet() -> contextlib.AbstractContextManager[None]:
    """No progress at all inside (``--quiet``)."""
    return reporting(lambda what, total: NullSink())


def live_bars(stream: Any = None) -> contextlib.AbstractContextManager[None]:
    """A live ``rich`` bar per piece of work inside, on ``stream`` (default stderr)."""
    import rich.console  # lazy: rich only where a terminal shows the bar

    console = rich.console.Console(file=stream, stderr=stream is None)
    return reporting(lambda what, total: RichSink(what, total, console))


@contextlib.contextmanager
def log_lines_to(stream: Any) -> Iterator[None]:
    """The task-log lines inside, written to ``stream`` (the CLI on a pipe: stderr) and
    nowhere else."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


# --- the tracker -------------------------------------------------------------------------


class Progress:
    """Progress of one piece of work; use as a context manager, or call :meth:`finish`.

    ``total`` may be None (unknown) or an estimate; ``clock`` (default: the one set with
    :func:`clock`, else ``time.monotonic``) is injectable for tests.
    :meth:`add` may be called from several threads (a lost increment only delays a line;
    the final line is exact where ``finish(done=...)`` is given)."""

    __slots__ = ("what", "total", "done", "detail", "_clock", "_start", "_next", "_step", "_sink", "_closed")

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        clock: Clock | None = None,
        sink: Sink | None = None,
        check_bytes: int = CHECK_BYTES,
    ) -> None:
        self.what = what
        self.total = total if total and total > 0 else None
        self.done = 0
        self.detail = ""
        self._clock = clock or _CLOCK.get() or time.monotonic
        self._start = self._clock()
        self._step = max(check_bytes, 1)
        self._next = self._step
        factory = _SINKS.get()
        self._sink: Sink = sink or (factory(what, self.total) if factory else LogSink())
        self._closed = False

    @property
    def started(self) -> float:
        """The clock's reading when the work started."""
        return self._start

    def add(self, n: int) -> None:
        """``n`` more bytes done: an add and a compare, the clock only every ``check_bytes``."""
        self.done += n
        if self.done >= self._next:
            self._next = self.done + self._step
            self._sink.update(self, self._clock())

    def set(self, done: int, detail: str | None = None) -> None:
        """Where the work stands now (a position polled rather than bytes counted)."""
        if detail is not None:
            self.detail = detail
        self.done = done
        self._next = done + self._step
        self._sink.update(self, self._clock())

    def snapshot(self, final: bool = False, now: float | None = None) -> Snapshot:
        now = self._clock() if now is None else now
        return Snapshot(self.what, self.done, self.total, now - self._start, final, self.detail)

    def finish(self, done: int | None = None, detail: str | None = None) -> None:
        """The final line (100 %); once."""
        if self._closed:
            return
        self._closed = True
        if done is not None:
            self.done = done
        if detail is not None:
            self.detail = detail
        self._sink.close(self.snapshot(final=True), self._clock())

    def stop(self, reason: str) -> None:
        """The work failed: one line saying where it stopped (no 100 %)."""
        if self._closed:
            return
        self._closed = True
        snap = self.snapshot()
        log.info("progress %s: stopped after %s (%s)", self.what, fmt_bytes(snap.done), reason)
        if not isinstance(self._sink, LogSink):
            self._sink.close(snap, self._clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.stop(exc_type.__name__)


# --- counting reads of registered files (code we do not own reads them) -----------------

_WATCHED: dict[str, Progress] = {}
_WATCHED_LOCK = threading.Lock()


def _key(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


@contextlib.contextmanager
def counting_reads(paths: list[Path], progress: Progress) -> Iterator[Progress]:
    """Count into ``progress`` what :func:`open_counted`, :func:`counted` and the target
    streams read of ``paths`` while inside (an upload through a target's own code)."""
    keys = [_key(p) for p in paths]
    with _WATCHED_LOCK:
        _WATCHED.update(dict.fromkeys(keys, progress))
    try:
        yield progress
    finally:
        with _WATCHED_LOCK:
            for k in keys:
                if _WATCHED.get(k) is progress:
                    del _WATCHED[k]


def watcher(path: str | os.PathLike[str]) -> Progress | None:
    """The Progress counting reads of ``path``, if any (one dict look-up per open)."""
    if not _WATCHED:
        return None
    return _WATCHED.get(_key(path))


class _CountingReader:
    """A file object whose reads count into a Progress; everything else passes through.
    A client that seeks back and reads again (a checksum pass, a retried request) counts
    the bytes once: only reads past the furthest position count."""

    def __init__(self, f: BinaryIO, progress: Progress) -> None:
        self._f = f
        self._progress = progress
        self._pos = 0
        self._furthest = 0

    def _count(self, n: int) -> None:
        self._pos += n
        if self._pos > self._furthest:
            self._progress.add(self._pos - self._furthest)
            self._furthest = self._pos

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._count(len(data))
        return data

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b) or 0  # type: ignore[attr-defined]
        self._count(n)
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = self._f.seek(offset, whence)
        return self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._f)

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


def counted(f: BinaryIO, progress: Progress | None) -> BinaryIO:
    """``f`` with its reads counted into ``progress`` (``f`` itself when None)."""
    return f if progress is None else _CountingReader(f, progress)  # type: ignore[return-value]


def open_counted(path: str | os.PathLike[str]) -> BinaryIO:
    """``open(path, "rb")``, counting reads when :func:`counting_reads` watches ``path``."""
    f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    return counted(f, watcher(path))


def file_sizes(paths: list[Path]) -> int:
    """The bytes of ``paths`` that exist (a total for a progress)."""
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total

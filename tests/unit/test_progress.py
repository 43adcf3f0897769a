"""Progress reporting (include/backup/progress.py): the task-log policy (every 30 s or every
10 %, whichever first, at most one line per 5 s, a final 100 % line), estimates, counting
reads once, and the pipeline steps that report through it. Time is a fake clock."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import pytest

from include.backup import progress as prog
from include.backup.pipeline.crypto import encrypt_stream
from include.backup.pipeline.hashing import sha256_file
from include.backup.pipeline.stream import seal
from include.backup.progress import LogSink, Progress

MIB = 1 << 20
LINE = re.compile(r"progress (?P<what>.+?): (?P<done>[\d.]+) (?P<unit>[KMGT]?i?B)(?: of [\d.]+ \S+)?"
                  r"(?: \((?P<pct>\d+) %\))?")


class Ticking:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float = 1.0) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Manual:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Lines:
    """A sink that records what a LogSink writes, with the time of each line."""

    def __init__(self, clock: Manual) -> None:
        self.clock = clock
        self.records: list[tuple[float, str]] = []
        logger = logging.getLogger(f"test-progress-{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(self)  # type: ignore[arg-type]
        self.sink = LogSink(logger)

    # a logging.Handler's interface, enough for Logger.callHandlers
    level = logging.INFO

    def handle(self, record: logging.LogRecord) -> None:
        self.records.append((self.clock.now, record.getMessage()))


def _bytes(line: str) -> float:
    m = LINE.search(line)
    assert m, line
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[m["unit"]]
    return float(m["done"]) * scale


def _pct(line: str) -> int | None:
    m = LINE.search(line)
    assert m, line
    return int(m["pct"]) if m["pct"] else None


def test_slow_stream_logs_every_30_s_and_a_final_line() -> None:
    clock = Manual()
    lines = Lines(clock)
    p = Progress("dump b1", None, clock=clock, sink=lines.sink, check_bytes=MIB)
    for _ in range(120):  # 1 MiB every 2 s for 240 s, no total: time-driven lines only
        clock.now += 2
        p.add(MIB)
    p.finish()
    times = [t for t, _ in lines.records]
    assert times[:-1] == [30, 60, 90, 120, 150, 180, 210, 240][: len(times) - 1]
    assert len(times) == 9
    assert "done in 4m 00s" in lines.records[-1][1] and "(100 %)" in lines.records[-1][1]


def test_fast_stream_logs_each_10_percent_but_never_twice_in_5_s() -> None:
    clock = Manual()
    lines = Lines(clock)
    total = 100 * MIB
    p = Progress("encrypt b1", total, clock=clock, sink=lines.sink, check_bytes=MIB)
    for _ in range(100):  # 1 MiB per second: 10 % every 10 s
        clock.now += 1
        p.add(MIB)
    p.finish()
    pcts = [_pct(m) for _, m in lines.records]
    assert pcts == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]

    clock2 = Manual()
    lines2 = Lines(clock2)
    p2 = Progress("encrypt b2", total, clock=clock2, sink=lines2.sink, check_bytes=MIB)
    for _ in range(100):  # 8 MiB per second: 10 % every 1.25 s, but at most one line per 5 s
        clock2.now += 0.125
        p2.add(MIB)
    p2.finish()
    times = [t for t, _ in lines2.records]
    assert all(b - a >= 5 - 1e-9 for a, b in zip(times, times[1:-1], strict=False))
    assert [_pct(m) for _, m in lines2.records] == [40, 80, 100]


def test_estimate_that_is_too_low_shows_99_until_the_end() -> None:
    clock = Manual()
    lines = Lines(clock)
    p = Progress("dump pg", 10 * MIB, clock=clock, sink=lines.sink, check_bytes=MIB)
    for _ in range(30):
        clock.now += 6
        p.add(MIB)
    p.finish()
    pcts = [_pct(m) for _, m in lines.records]
    assert max(pcts[:-1]) == 99 and pcts[-1] == 100  # type: ignore[type-var]
    assert "ETA" not in lines.records[-2][1] or "ETA 0s" in lines.records[-2][1]


def test_line_text() -> None:
    snap = prog.Snapshot("restore b1 into db", 3 * MIB // 2, 10 * MIB, 2.0)
    assert snap.line() == "restore b1 into db: 1.5 MiB of 10.0 MiB (15 %), 768.0 KiB/s, ETA 11s"
    final = prog.Snapshot("restore b1 into db", 10 * MIB, 10 * MIB, 125.0, final=True)
    assert final.line() == "restore b1 into db: 10.0 MiB of 10.0 MiB (100 %), 81.9 KiB/s, done in 2m 05s"


def test_failed_work_says_where_it_stopped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="include.backup.progress")
    with pytest.raises(OSError), Progress("upload b1 to s3", 10 * MIB, clock=Manual()) as p:
        p.add(3 * MIB)
        raise OSError("disk gone")
    text = caplog.text
    assert "upload b1 to s3: stopped after 3.0 MiB (OSError)" in text
    assert "100 %" not in text


def test_quiet_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="include.backup.progress")
    with prog.quiet(), Progress("checksum b1", MIB, clock=Ticking()) as p:
        p.add(MIB)
    assert "checksum b1" not in caplog.text


def test_reads_counted_once_when_a_client_reads_again(tmp_path: Path) -> None:
    f = tmp_path / "payload"
    f.write_bytes(os.urandom(3 * MIB))
    clock = Manual()
    lines = Lines(clock)
    p = Progress("upload b1", 3 * MIB, clock=clock, sink=lines.sink)
    with prog.counting_reads([f], p), prog.open_counted(f) as body:
        body.read()  # a checksum pass...
        body.seek(0)
        body.read()  # ...then the send
    assert p.done == 3 * MIB
    with prog.open_counted(f) as body:  # no longer watched
        body.read()
    assert p.done == 3 * MIB


def _lines_of(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"progress {what}")]


def assert_monotonic_to_100(lines: list[str]) -> None:
    assert len(lines) >= 3, lines
    done = [_bytes(m) for m in lines]
    assert done == sorted(done), lines
    pcts = [p for p in (_pct(m) for m in lines) if p is not None]
    assert pcts == sorted(pcts) and pcts[-1] == 100, lines


def test_pipeline_steps_report_monotonic_lines_ending_at_100(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="include.backup.progress")
    data = os.urandom(24 * MIB)
    src = tmp_path / "dump"
    src.write_bytes(data)
    with prog.clock(Ticking(5.0)):  # every clock read is 5 s later: several reporting intervals
        with Progress("encrypt b1", len(data)) as p, open(src, "rb") as fin:
            encrypt_stream(fin, io.BytesIO(), b"k" * 32, "k1", progress=p)
        with Progress("seal b1", len(data)) as p, open(src, "rb") as fin:
            seal(fin, io.BytesIO(), kek=b"k" * 32, key_id="k1", progress=p)
        with Progress("checksum b1", len(data)) as p:
            sha256_file(src, progress=p)
    for what in ("encrypt b1", "seal b1", "checksum b1"):
        assert_monotonic_to_100(_lines_of(caplog, what))


def test_terminal_bar_shows_the_work_and_ends_complete() -> None:
    import rich.console

    out = io.StringIO()
    console = rich.console.Console(file=out, force_terminal=True, width=120)
    bars = prog.reporting(lambda what, total: prog.RichSink(what, total, console))
    with bars, Progress("restore b1 into db", 8 * MIB, clock=Ticking()) as p:
        for _ in range(8):
            p.add(MIB)
    text = out.getvalue()
    assert "restore b1 into db" in text
    assert "8.0/8.0 MiB" in text  # the bar's last state: all of it

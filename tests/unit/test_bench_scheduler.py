"""The pure computations of bench/bench_scheduler.py: overhead and its parts from a fixed set
of REST API timestamps, the marks inside a task from its log, percentiles, /proc parsing."""

from __future__ import annotations

import importlib.util
import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scheduler", ROOT / "bench" / "bench_scheduler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scheduler"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def at(seconds: float) -> str:
    """An API timestamp ``seconds`` after T0, in the API's "Z" form."""
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ti(task_id: str, sched: float | None, queued: float | None, start: float, end: float) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "dag_run_id": "r1",
        "map_index": -1,
        "try_number": 1,
        "state": "success",
        "scheduled_when": at(sched) if sched is not None else None,
        "queued_when": at(queued) if queued is not None else None,
        "start_date": at(start),
        "end_date": at(end),
        "duration": end - start,
    }


def make_run(tis: list[dict[str, Any]], queued: float = 0.0, start: float = 0.5, end: float = 6.0) -> Any:
    run = {
        "dag_id": "backup__s0000",
        "dag_run_id": "r1",
        "state": "success",
        "queued_at": at(queued),
        "start_date": at(start),
        "end_date": at(end),
    }
    return bench.run_from_api(run, [bench.task_from_api(t) for t in tis])


def test_linear_chain_overhead_splits_exactly() -> None:
    # run queued 0, running 0.5; task a 1.0–3.0, task b 4.2–5.2; run ends 6.0
    run = make_run([ti("b", 3.8, 3.9, 4.2, 5.2), ti("a", 0.6, 0.7, 1.0, 3.0)])
    b = bench.run_breakdown(run)
    assert b["wall"] == pytest.approx(6.0)
    assert b["task_time"] == pytest.approx(3.0)
    assert b["overhead"] == pytest.approx(3.0)
    assert b["run_queued_to_running"] == pytest.approx(0.5)
    assert b["ready_to_scheduled"] == pytest.approx(0.1 + 0.8)  # after run start, after a ended
    assert b["scheduled_to_queued"] == pytest.approx(0.2)
    assert b["queued_to_start"] == pytest.approx(0.6)
    assert b["tail"] == pytest.approx(0.8)
    assert b["unaccounted"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(b["work"])  # no log marks were given


def test_missing_scheduled_and_queued_times_count_as_start_latency() -> None:
    run = make_run([ti("a", None, None, 1.0, 3.0)], end=3.5)
    b = bench.run_breakdown(run)
    assert b["ready_to_scheduled"] == 0.0
    assert b["scheduled_to_queued"] == 0.0
    assert b["queued_to_start"] == pytest.approx(0.5)
    assert b["unaccounted"] == pytest.approx(0.0, abs=1e-9)


def test_overlapping_tasks_leave_the_difference_unaccounted() -> None:
    # two mapped uploads side by side: the chain assumption does not hold
    run = make_run([ti("up0", 0.5, 0.5, 1.0, 3.0), ti("up1", 0.5, 0.5, 1.0, 3.0)], end=3.0)
    b = bench.run_breakdown(run)
    assert b["overhead"] == pytest.approx(3.0 - 4.0)
    assert all(b[p] >= 0 for p in bench.PARTS)
    assert b["unaccounted"] == pytest.approx(b["overhead"] - sum(b[p] for p in bench.PARTS))


def test_unfinished_run_is_refused_with_its_id() -> None:
    with pytest.raises(ValueError, match="run r1 is not finished"):
        bench.run_from_api(
            {"dag_id": "d", "dag_run_id": "r1", "state": "running", "queued_at": at(0),
             "start_date": at(1), "end_date": None},
            [],
        )


def test_log_marks_split_a_task_duration() -> None:
    events = [
        {"event": "::group::Log message source details"},
        {"timestamp": at(1.1), "event": "::group::Pre Execute"},
        {"timestamp": at(1.5), "event": "Worker startup parse complete", "dag_file_parse_ms": 250},
        {"timestamp": at(1.6), "event": "::endgroup::"},
        {"timestamp": at(1.7), "event": "dumped src (FULL)"},
        {"timestamp": at(1.9), "event": "Done. Returned value was: {'backup_id': 'x'}"},
        {"timestamp": at(1.9), "event": "::group::Post Execute"},
        {"timestamp": at(2.2), "event": "::endgroup::"},
    ]
    marks = bench.log_marks(events, T0 + timedelta(seconds=1.0), T0 + timedelta(seconds=2.0))
    assert marks is not None
    assert marks.startup == pytest.approx(0.6)
    assert marks.parse == pytest.approx(0.25)
    assert marks.work == pytest.approx(0.3)
    assert marks.finish == pytest.approx(0.1)
    assert marks.startup + marks.work + marks.finish == pytest.approx(1.0)


def test_log_without_marks_gives_none() -> None:
    events = [
        {"timestamp": at(1.1), "event": "::group::Pre Execute"},
        {"timestamp": at(1.2), "event": "boom"},
    ]
    assert bench.log_marks(events, T0, T0 + timedelta(seconds=2)) is None


def test_marks_add_up_per_run_only_when_every_task_has_them() -> None:
    a = bench.task_from_api(ti("a", 0.6, 0.7, 1.0, 2.0), bench.LogMarks(0.5, 0.2, 0.4, 0.1))
    b = bench.task_from_api(ti("b", 2.5, 2.6, 3.0, 4.0), bench.LogMarks(0.6, 0.3, 0.3, 0.1))
    start, end = T0 + timedelta(seconds=0.5), T0 + timedelta(seconds=5)
    run = bench.RunTiming("d", "r", "success", T0, start, end, (a, b))
    out = bench.run_breakdown(run)
    assert out["startup"] == pytest.approx(1.1)
    assert out["work"] == pytest.approx(0.7)


def test_percentile_and_summary() -> None:
    assert bench.percentile([3.0, 1.0, 2.0], 95) == 3.0
    assert bench.percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert bench.percentile([4.0], 50) == 4.0
    assert math.isnan(bench.percentile([], 95))
    parts = {**dict.fromkeys((*bench.PARTS, "unaccounted"), 0.0), **dict.fromkeys(bench.IN_TASK, math.nan)}
    runs = [{"wall": w, "task_time": 1.0, "overhead": w - 1.0, **parts} for w in (2.0, 4.0, 3.0)]
    s = bench.summarize(runs)
    assert s["overhead_median"] == 2.0
    assert s["overhead_p95"] == 3.0
    assert math.isnan(s["work_mean"])  # never measured: no made-up zero


def test_throughput_from_first_queued_to_last_end() -> None:
    runs = [make_run([], queued=0.0, start=0.1, end=30.0), make_run([], queued=1.0, start=1.1, end=60.0)]
    assert bench.throughput_per_min(runs) == pytest.approx(2.0)


def test_proc_stat_with_parentheses_in_the_command_name() -> None:
    fields = ["S", "41", "40", "40", "0", "-1", "4194560", "1", "0", "0", "0", "120", "30", "7", "3"]
    line = "1234 (airflow (worker) x) " + " ".join(fields) + " 20 0 1 0"
    assert bench.parse_proc_stat(line) == (41, 40, 150, 10)


def test_cpu_delta_puts_the_rest_of_the_machine_apart() -> None:
    before = {"scheduler": 1.0, "api-server": 2.0, "machine": 100.0}
    after = {"scheduler": 3.0, "api-server": 2.5, "task processes": 4.0, "machine": 110.0}
    d = bench.cpu_delta(before, after)
    assert d["scheduler"] == pytest.approx(2.0)
    assert d["task processes"] == pytest.approx(4.0)
    assert d["rest of the machine"] == pytest.approx(10.0 - 6.5)
    assert "machine" not in d


def test_generated_config_is_valid_with_one_dag_per_schedule(tmp_path: Path) -> None:
    from include.backup.config.loader import load_config

    (tmp_path / "c.yaml").write_text(bench.backup_config(tmp_path, 3))
    loaded = load_config(tmp_path / "c.yaml")
    assert not loaded.issues
    assert [s.dag_id for s in loaded.config.schedules] == [bench.dag_id("backup", i) for i in range(3)]


def test_a_failed_round_names_the_failed_tasks_last_log_lines(tmp_path: Path) -> None:
    run = {"dag_id": "noop__s0000", "dag_run_id": "bench-warm-noop-noop__s0000"}
    task_dir = tmp_path / "dag_id=noop__s0000" / "run_id=bench-warm-noop-noop__s0000" / "task_id=dump"
    task_dir.mkdir(parents=True)
    (task_dir / "attempt=1.log").write_text(
        '{"level": "info", "event": "::group::Pre Execute"}\n'
        '{"level": "error", "event": "Task failed with exception", "error_detail": "ReadTimeout"}\n'
        "not json\n"
    )
    detail = bench.failure_detail(tmp_path, run)
    assert "--- task_id=dump/attempt=1.log" in detail
    assert "error Task failed with exception ReadTimeout" in detail
    assert "not json" in detail
    assert "no task log under" in bench.failure_detail(tmp_path, {**run, "dag_run_id": "other"})

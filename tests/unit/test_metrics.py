"""Metric names (StatsD segments, Airflow's validation) and what each emitter hands to
Airflow's metrics facade, with a recording backend in place of StatsD/OTel."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk._shared.observability.metrics.validators import (
    stat_name_default_handler,
    stat_name_otel_handler,
)
from airflow.sdk.observability import stats

from include.backup import metrics
from include.backup.catalog.manifest import MANIFEST_NAME, Manifest
from include.backup.dr.monitor import run_monitor
from include.backup.dr.restore import RestoreResult
from include.backup.targets.local import LocalTarget
from tests.unit.test_monitor import NOW, make_config, passing_dr_test, put_backup, ring, targets


class Recorder:
    """A metrics backend that remembers what it was given (the facade's backend API)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict[str, Any] | None]] = []

    def gauge(self, stat: str, value: float, *, tags: dict[str, Any] | None = None, **_: Any) -> None:
        self.calls.append(("gauge", stat, value, tags))

    def timing(self, stat: str, dt: float, *, tags: dict[str, Any] | None = None) -> None:
        self.calls.append(("timing", stat, dt, tags))

    def incr(self, stat: str, count: int = 1, *, tags: dict[str, Any] | None = None, **_: Any) -> None:
        self.calls.append(("incr", stat, count, tags))

    def values(self, kind: str) -> dict[str, float]:
        return {name: value for k, name, value, _ in self.calls if k == kind}


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    stats.initialize(factory=lambda: rec, export_legacy_names=False)
    yield rec
    metrics.reinitialize()  # back to what the test config says (metrics off)


# --- names -----------------------------------------------------------------------------


def test_segment_keeps_the_statsd_hierarchy() -> None:
    assert metrics.segment("events_pg") == "events_pg"
    assert metrics.segment("events.pg") == "events__pg"  # one level, not two
    assert metrics.segment("s3-eu") == "s3-eu"
    assert metrics.segment("a b/c") == "a_b_c"


def test_long_names_are_shortened_and_stay_distinct() -> None:
    a, b = "x" * 99 + "a", "x" * 99 + "b"
    sa, sb = metrics.segment(a), metrics.segment(b)
    assert len(sa) == metrics.SEGMENT_MAX and len(sb) == metrics.SEGMENT_MAX
    assert sa != sb


def test_empty_name_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="cannot be empty"):
        metrics.segment("")


# The longest names the config accepts (NAME_PATTERN: 100 characters), dots included.
WORST = ["s" * 100, "a." * 49 + "zz", "0-_." * 25]


@pytest.mark.parametrize("name", WORST)
def test_every_name_passes_airflows_statsd_and_otel_validation(name: str) -> None:
    built = [
        metrics.source_metric(name, "stored_bytes", name),
        metrics.source_metric(name, "last_good_age_seconds"),
        metrics.schedule_metric(name, "last_backup_age_seconds"),
        metrics.target_metric(name, "free_bytes"),
        metrics.run_metric(name, "duration"),
        metrics.restore_metric(name, "rto_seconds"),
        metrics.alerts_metric("DR_TEST_OVERDUE"),
    ]
    for stat in built:
        # Airflow's checks (validators.py), with its default prefix in front.
        assert stat_name_default_handler(f"airflow.{stat}") == f"airflow.{stat}"
        assert stat_name_otel_handler("airflow", stat) == f"airflow.{stat}"
        assert len(stat) <= metrics.MAX_NAME_LENGTH


# --- emitters --------------------------------------------------------------------------


def test_monitor_report_gauges(tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalTarget, "free_bytes", lambda self: 1 << 40)
    cfg = make_config(tmp_path)
    ts = targets(tmp_path)
    put_backup(ts["local"], NOW - timedelta(minutes=30), size=1000, minutes=5)
    put_backup(ts["local"], NOW - timedelta(hours=3), size=500, minutes=3, verified=False)
    passing_dr_test(ts["local"], NOW - timedelta(days=3))
    report = run_monitor(cfg, NOW, targets=ts, keyring=ring(), staging=tmp_path / "staging")

    assert metrics.emit_monitor_report(report, rto_hours=0.25) == len(recorder.calls)
    g = recorder.values("gauge")
    assert g["backup.source.events_pg.last_good_age_seconds"] == 1800
    assert g["backup.source.events_pg.rpo_seconds"] == 3600
    assert g["backup.source.events_pg.rpo_violation"] == 0
    assert g["backup.source.events_pg.success_rate"] == 0.5
    assert g["backup.source.events_pg.avg_duration_seconds"] == 240
    assert g["backup.source.events_pg.stored_bytes.local"] == 1500
    assert g["backup.source.events_pg.last_dr_test_age_seconds"] == 3 * 86400
    assert g["backup.source.events_pg.dr_test_rto_seconds"] == 1200
    assert g["backup.source.events_pg.rto_violation"] == 1  # 1200 s measured > 0.25 h
    assert g["backup.schedule.hourly.late"] == 0
    assert g["backup.schedule.hourly.running_seconds"] == 0
    assert g["backup.target.local.stored_bytes"] == 1500
    assert g["backup.target.nas.backups"] == 0
    assert g["backup.target.local.free_bytes"] == 1 << 40
    assert g["backup.alerts.rpo_missed"] == 0 and g["backup.alerts.backup_slow"] == 0
    assert g["backup.alerts.total"] == len(report.alerts)
    tags = {name: t for _, name, _, t in recorder.calls}
    assert tags["backup.source.events_pg.stored_bytes.local"] == {"source": "events_pg", "target": "local"}


def test_unknown_figures_are_left_out(tmp_path: Path, recorder: Recorder) -> None:
    cfg = make_config(tmp_path)
    report = run_monitor(cfg, NOW, targets=targets(tmp_path), keyring=ring(), staging=tmp_path / "staging")
    metrics.emit_monitor_report(report)
    g = recorder.values("gauge")
    assert "backup.source.events_pg.last_good_age_seconds" not in g  # no backup: no age, not 0
    assert "backup.source.events_pg.rto_violation" not in g  # no RTO given
    assert g["backup.source.events_pg.rpo_violation"] == 1
    assert g["backup.alerts.rpo_missed"] == 1


def test_backup_run_figures(tmp_path: Path, recorder: Recorder) -> None:
    stage = tmp_path / "hourly-20250310T110000Z-abcdef"
    stage.mkdir()
    m = put_backup(LocalTarget("local", tmp_path / "t"), NOW - timedelta(minutes=1))
    (stage / MANIFEST_NAME).write_bytes(Manifest.model_validate(m.model_dump()).to_json())
    sent = metrics.emit_backup_run({"backup_id": m.backup_id, "staging": str(stage)}, "hourly", stage)
    assert sent == 5
    assert recorder.values("timing")["backup.run.hourly.duration"] > 0
    assert recorder.values("gauge")["backup.run.hourly.stored_bytes"] == 1000
    assert recorder.values("gauge")["backup.run.hourly.last_run_ok"] == 1
    assert recorder.values("incr") == {"backup.run.hourly.success": 1}
    assert recorder.calls[0][3] == {"schedule": "hourly", "source": "events_pg", "type": "FULL"}


def test_failure_counts_tasks_and_sets_last_run_ok(recorder: Recorder) -> None:
    metrics.emit_backup_failure("hourly", task_failed=True)
    metrics.emit_backup_failure("hourly", task_failed=False)  # the DAG callback of the same run
    assert [c[:3] for c in recorder.calls] == [
        ("gauge", "backup.run.hourly.last_run_ok", 0),
        ("incr", "backup.run.hourly.failure", 1),
        ("gauge", "backup.run.hourly.last_run_ok", 0),
    ]


def test_restore_figures(recorder: Recorder) -> None:
    result = RestoreResult("b1", "local", "/restore", ["b1"], 90.0, source="events.pg")
    assert metrics.emit_restore(result, rto_hours=1) == 4
    assert recorder.values("timing") == {"backup.restore.events__pg.duration": 90_000.0}
    assert recorder.values("gauge") == {
        "backup.restore.events__pg.rto_seconds": 90.0,
        "backup.restore.events__pg.rto_met": 1,
    }


def test_a_broken_backend_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Recorder):
        def gauge(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("statsd socket gone")

    stats.initialize(factory=Broken, export_legacy_names=False)
    try:
        assert metrics.emit_backup_failure("hourly", task_failed=True) == 1  # the counter got through
    finally:
        metrics.reinitialize()
    assert "metric backup.run.hourly.last_run_ok not emitted" in caplog.text

"""The backup figures as Airflow metrics: through Airflow's own metrics facade, so the
deployment's ``[metrics]`` section decides where they go (``statsd_on`` / ``otel_on`` /
``statsd_datadog_enabled``, host, port, prefix, allow and block lists). docs/metrics.md.

Emitted by:

- :func:`emit_monitor_report`: the ``dr_monitor`` task, every round (gauges per source,
  schedule, target, and open alerts per kind);
- :func:`emit_backup_run`: the ``cleanup`` step of a backup run (duration, sizes,
  success), :func:`emit_backup_failure`: the backup DAGs' failure callback;
- :func:`emit_restore`: the ``restore`` task (measured RTO).

Names are stable and documented; the entity is part of the name (plain StatsD has no
tags) and is also given as tags (``source``, ``schedule``, ``target``) for backends that
take them (OpenTelemetry attributes, DogStatsD, InfluxDB-style StatsD)::

    backup.source.<source>.last_good_age_seconds     backup.run.<schedule>.duration
    backup.schedule.<schedule>.running_seconds       backup.restore.<source>.rto_seconds
    backup.target.<target>.stored_bytes              backup.alerts.<kind>

Airflow accepts only ``[A-Za-z0-9_.-/]`` and at most 250 characters (255 with the prefix
for OpenTelemetry), and StatsD uses ``.`` as the hierarchy separator: :func:`segment`
turns a config name into one segment (``.`` -> ``__`` as Airflow does for task ids in
legacy names; a segment over 60 characters is shortened with a hash), so every name
built here stays under :data:`MAX_NAME_LENGTH`.

Emission never fails the caller: every error is logged and swallowed. Outside an Airflow
task process (where the task runner has already initialised the facade from the config)
the facade is initialised here on first use, from the same config.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from include.backup.catalog.manifest import MANIFEST_NAME, Manifest
from include.backup.dr.monitor.report import MONITOR_KINDS, MonitorReport

if TYPE_CHECKING:
    from include.backup.dr.restore import RestoreResult

log = logging.getLogger(__name__)

ROOT = "backup"
SEGMENT_MAX = 60  # a config name may be 100 characters; two of them must fit in one metric name
MAX_NAME_LENGTH = 200  # Airflow's limit is 250 (OTel: 255 with the prefix): room for the prefix
_SEGMENT_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

Kind = Literal["gauge", "timing", "incr"]


# --- names -----------------------------------------------------------------------------


def segment(name: str) -> str:
    """A config name (source, schedule, target) as one StatsD path segment: ``.`` becomes
    ``__`` (so ``events.pg`` cannot read as two levels), anything else outside
    ``[A-Za-z0-9_-]`` becomes ``_``; over :data:`SEGMENT_MAX` characters it is cut and
    ends with 8 hex digits of its SHA-256, so distinct names stay distinct."""
    if not name:
        raise ValueError("a metric name segment cannot be empty (a source, schedule or target name)")
    s = _SEGMENT_CHARS.sub("_", name.replace(".", "__"))
    if len(s) > SEGMENT_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        s = f"{s[: SEGMENT_MAX - 9]}-{digest}"
    return s


def metric_name(scope: str, entity: str | None, figure: str, *detail: str) -> str:
    """``backup.<scope>[.<entity>].<figure>[.<detail>…]``, entity and details as segments.

    >>> metric_name("source", "events.pg", "stored_bytes", "s3-eu")
    'backup.source.events__pg.stored_bytes.s3-eu'
    """
    parts = [ROOT, scope]
    if entity is not None:
        parts.append(segment(entity))
    parts.append(figure)
    parts.extend(segment(d) for d in detail)
    name = ".".join(parts)
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        raise ValueError(f"metric name {name!r} is not a valid StatsD/OpenTelemetry name")
    return name


def source_metric(source: str, figure: str, *detail: str) -> str:
    return metric_name("source", source, figure, *detail)


def schedule_metric(schedule: str, figure: str) -> str:
    return metric_name("schedule", schedule, figure)


def target_metric(target: str, figure: str) -> str:
    return metric_name("target", target, figure)


def run_metric(schedule: str, figure: str) -> str:
    return metric_name("run", schedule, figure)


def restore_metric(source: str, figure: str) -> str:
    return metric_name("restore", source, figure)


def alerts_metric(kind: str) -> str:
    return metric_name("alerts", None, kind.lower())


# --- the facade ------------------------------------------------------------------------


def _facade_initialised() -> bool:
    try:
        from airflow.sdk._shared.observability.metrics import (
            stats as shared,  # lazy: Airflow: not loaded by the CLI and config checks
        )
    except ImportError:  # pragma: no cover - a layout change: initialise ourselves
        return False
    return getattr(shared, "_factory", None) is not None


def reinitialize() -> None:
    """(Re)build Airflow's metrics backend from the current ``[metrics]`` config, as the
    task runner does at start. For processes that are not Airflow task processes (the CLI,
    tests); a task process is already initialised and needs nothing."""
    from airflow.sdk.configuration import conf  # lazy: Airflow: not loaded by the CLI and config checks
    from airflow.sdk.observability import stats  # lazy: Airflow: not loaded by the CLI and config checks
    from airflow.sdk.observability.metrics import (
        stats_utils,  # lazy: Airflow: not loaded by the CLI and config checks
    )

    stats.initialize(
        factory=stats_utils.get_stats_factory(),
        export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=True),
    )


def _emit(kind: Kind, name: str, value: float, tags: Mapping[str, str] | None = None) -> bool:
    """One metric through Airflow's facade; False (and a log line) when it failed."""
    try:
        from airflow.sdk.observability import stats  # lazy: Airflow: not loaded by the CLI and config checks

        if not _facade_initialised():
            reinitialize()
        t = dict(tags) if tags else None
        if kind == "gauge":
            stats.gauge(name, value, tags=t)
        elif kind == "timing":
            stats.timing(name, value, tags=t)  # milliseconds, what StatsD and Airflow use
        else:
            stats.incr(name, int(value), tags=t)
        return True
    except Exception:  # noqa: BLE001 - a metric must never fail a backup
        log.warning("metric %s not emitted", name, exc_info=True)
        return False


def _flag(value: bool) -> int:
    return 1 if value else 0


def _seconds_since(moment: Any, now: datetime) -> float | None:
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (now - moment).total_seconds())


# --- what is emitted -------------------------------------------------------------------


Figure = tuple[str, float, dict[str, str]]  # (name, value, tags)


class _Figures(list[Figure]):
    """Collects figures; an unknown value (None) is left out rather than sent as 0."""

    def add(self, name: str, value: float | None, **tags: str) -> None:
        if value is not None:
            self.append((name, float(value), tags))


def _source_figures(out: _Figures, report: MonitorReport, rto_hours: float | None) -> None:
    now = report.generated_at
    alerted = {(a.kind.value, a.subject) for a in report.alerts}
    for name, st in report.sources.items():
        tag = {"source": name}
        out.add(source_metric(name, "rpo_seconds"), st.rpo_hours * 3600, **tag)
        age = _seconds_since(st.last_good_backup_at, now)
        out.add(source_metric(name, "last_good_age_seconds"), age, **tag)
        out.add(source_metric(name, "rpo_violation"), _flag(("RPO_MISSED", name) in alerted), **tag)
        out.add(source_metric(name, "backups"), st.backups_count, **tag)
        out.add(source_metric(name, "verified_backups"), st.verified_count, **tag)
        out.add(source_metric(name, "failed_runs"), st.failed_runs_count, **tag)
        if st.success_rate is not None:  # verified over every run, failed ones included
            out.add(source_metric(name, "success_rate"), st.success_rate, **tag)
        out.add(source_metric(name, "avg_duration_seconds"), st.avg_duration_seconds, **tag)
        out.add(source_metric(name, "last_duration_seconds"), st.last_backup_duration_seconds, **tag)
        for target, size in st.stored_bytes_per_target.items():
            out.add(source_metric(name, "stored_bytes", target), size, source=name, target=target)
        dr_age = _seconds_since(st.last_successful_dr_test_at, now)
        out.add(source_metric(name, "last_dr_test_age_seconds"), dr_age, **tag)
        out.add(source_metric(name, "dr_test_overdue"), _flag(("DR_TEST_OVERDUE", name) in alerted), **tag)
        measured = (st.last_dr_test or {}).get("measured_rto_seconds")
        out.add(source_metric(name, "dr_test_rto_seconds"), measured, **tag)
        if rto_hours is not None:
            missed = measured is not None and measured > rto_hours * 3600
            out.add(source_metric(name, "rto_violation"), _flag(missed), **tag)


def _schedule_and_target_figures(out: _Figures, report: MonitorReport) -> None:
    now = report.generated_at
    for name, sc in report.schedules.items():
        age = _seconds_since(sc.last_backup_at, now)
        out.add(schedule_metric(name, "last_backup_age_seconds"), age, schedule=name)
        out.add(schedule_metric(name, "late"), _flag(sc.late), schedule=name)
        out.add(schedule_metric(name, "running_seconds"), sc.running_seconds or 0, schedule=name)
        out.add(schedule_metric(name, "usual_duration_seconds"), sc.usual_seconds, schedule=name)
        out.add(schedule_metric(name, "slow"), _flag(sc.slow), schedule=name)
    for name, t in report.targets.items():
        out.add(target_metric(name, "reachable"), _flag(t.reachable), target=name)
        if t.reachable:
            out.add(target_metric(name, "stored_bytes"), t.stored_bytes, target=name)
            out.add(target_metric(name, "backups"), t.backups, target=name)
        out.add(target_metric(name, "free_bytes"), t.free_bytes, target=name)


def monitor_figures(report: MonitorReport, *, rto_hours: float | None = None) -> list[Figure]:
    """The gauges of one monitor round, as ``(name, value, tags)``. Figures that are
    unknown (no backup yet, free space not reported) are left out rather than sent as 0."""
    out = _Figures()
    _source_figures(out, report, rto_hours)
    _schedule_and_target_figures(out, report)
    counts = {k.value: 0 for k in MONITOR_KINDS}  # 0 too: a cleared alert must read 0
    for a in report.alerts:
        counts[a.kind.value] = counts.get(a.kind.value, 0) + 1
    for kind, n in counts.items():
        out.add(alerts_metric(kind), n)
    out.add(alerts_metric("total"), len(report.alerts))
    return list(out)


def emit_monitor_report(report: MonitorReport, *, rto_hours: float | None = None) -> int:
    """Gauges for one ``dr_monitor`` round (:func:`monitor_figures`). Returns how many
    were handed to Airflow's facade; never raises."""
    try:
        figures = monitor_figures(report, rto_hours=rto_hours)
    except Exception:  # noqa: BLE001 - the monitor's mails matter more than its gauges
        log.warning("monitor metrics not emitted", exc_info=True)
        return 0
    return sum(_emit("gauge", name, value, tags) for name, value, tags in figures)


def emit_backup_run(meta: Mapping[str, Any], schedule: str, stage: Path | None = None) -> int:
    """Figures of a backup run that got through verification (called by ``cleanup``):
    ``backup.run.<schedule>.duration`` (timer, ms, from the dump's start to now),
    ``raw_bytes``, ``stored_bytes``, ``success`` (counter) and ``last_run_ok`` = 1.

    The start time comes from the manifest in the staging directory ``stage`` (gone on a
    retried cleanup: then no duration is sent). Never raises."""
    try:
        tags = {"schedule": schedule}
        sent = 0
        manifest = None
        if stage is not None and (stage / MANIFEST_NAME).exists():
            manifest = Manifest.from_json((stage / MANIFEST_NAME).read_bytes())
        if manifest is not None:
            tags["source"] = manifest.source
            tags["type"] = manifest.backup_type
            elapsed = _seconds_since(manifest.started_at, datetime.now(UTC)) or 0.0
            sent += _emit("timing", run_metric(schedule, "duration"), elapsed * 1000, tags)
        raw = manifest.raw_size if manifest is not None else meta.get("raw_size")
        stored = manifest.stored_size if manifest is not None else meta.get("stored_size")
        if raw is not None:
            sent += _emit("gauge", run_metric(schedule, "raw_bytes"), float(raw), tags)
        if stored is not None:
            sent += _emit("gauge", run_metric(schedule, "stored_bytes"), float(stored), tags)
        sent += _emit("incr", run_metric(schedule, "success"), 1, tags)
        sent += _emit("gauge", run_metric(schedule, "last_run_ok"), 1, tags)
        return sent
    except Exception:  # noqa: BLE001 - never fail the cleanup for a metric
        log.warning("backup run metrics of %s not emitted", schedule, exc_info=True)
        return 0


def emit_backup_failure(schedule: str, *, task_failed: bool) -> int:
    """A backup run failed: ``last_run_ok`` = 0, and ``failure`` +1 for each failed task
    (``task_failed``: the task-level callback; the DAG-level one only sets the gauge, so a
    run is not counted twice for one failed task). Never raises."""
    try:
        tags = {"schedule": schedule}
        sent = int(_emit("gauge", run_metric(schedule, "last_run_ok"), 0, tags))
        if task_failed:
            sent += _emit("incr", run_metric(schedule, "failure"), 1, tags)
        return sent
    except Exception:  # noqa: BLE001
        log.warning("backup failure metric of %s not emitted", schedule, exc_info=True)
        return 0


def emit_restore(result: RestoreResult, *, rto_hours: float | None = None) -> int:
    """A finished restore: ``backup.restore.<source>.duration`` (timer, ms),
    ``rto_seconds`` (gauge: the measured RTO), ``rto_met`` (0/1, with ``rto_hours``) and
    ``success`` (counter). Never raises."""
    try:
        source = result.source or "unknown"
        tags = {"source": source, "target": result.target}
        seconds = float(result.seconds)
        sent = int(_emit("timing", restore_metric(source, "duration"), seconds * 1000, tags))
        sent += _emit("gauge", restore_metric(source, "rto_seconds"), seconds, tags)
        if rto_hours is not None:
            met = seconds <= timedelta(hours=rto_hours).total_seconds()
            sent += _emit("gauge", restore_metric(source, "rto_met"), _flag(met), tags)
        sent += _emit("incr", restore_metric(source, "success"), 1, tags)
        return sent
    except Exception:  # noqa: BLE001 - the restore itself succeeded
        log.warning("restore metrics not emitted", exc_info=True)
        return 0

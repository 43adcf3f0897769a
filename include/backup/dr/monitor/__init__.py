"""What deadline alerts cannot see, checked by the ``dr_monitor`` DAG every 15 minutes.

:func:`run_monitor` reads every target of the config (its catalog and its DR test
reports: the targets alone, not Airflow's database), the key ring's dates and the targets'
free space, and returns a :class:`MonitorReport`: per-source figures for the DR page and
the metrics API, plus the :class:`~include.backup.alerts.notify.Alert` s to mail. The
``check_*`` functions are the pure rules, one per alert kind.

The package: :mod:`.report` (the report's data types and how figures are written),
:mod:`.running` (backups in progress, from the staging area), :mod:`.checks` (the rules),
:mod:`.run` (one round: gathering, checking, mailing). Every name is re-exported here.

Rules (docs/alerts.md):

- RPO_MISSED (per source with an active schedule): the newest backup *verified* at any
  target, SCHEMA backups excepted (they hold no data), started more than ``dr.rpo_hours``
  ago — or there is none. The age counts from ``started_at``: a dump is a snapshot of the
  source as of its start. Exactly ``rpo_hours`` old is still within the objective.
- BACKUP_LATE (per active schedule): its newest backup at any target (verified or not:
  this is about runs happening) is older than twice the schedule's cron interval (the
  interval between its last two fire times before now), or it never produced one.
- DR_TEST_OVERDUE (per source with an active schedule): the newest *successful* DR test
  report at any target finished more than ``dr.test_frequency_days`` ago, or there is none.
- KEY_ROTATION_DUE: the active key is older than ``encryption.key_rotation_days`` (from
  the key ring's ``created`` dates). A ring that cannot be loaded, or an undated active key,
  is a report issue, not a crash.
- STORAGE_LOW (per target that can tell its free space): free space below
  ``dr.storage_min_free_gb`` GiB, or below twice the largest backup the target holds.
- TARGET_UNREACHABLE (critical, per target): listing the target failed.
- BACKUP_SLOW (warning, per active schedule, :func:`check_slow`): a backup of the schedule
  is in progress and has run longer than ``max(SLOW_FACTOR × usual, usual + SLOW_FLOOR)``
  (3 × and 10 minutes), where *usual* is the median duration of the schedule's newest
  ``SLOW_HISTORY`` (20) finished backups at the targets, and only once there are at least
  ``SLOW_MIN_HISTORY`` (3) of them. A finished backup's duration runs from its
  ``started_at`` to the last ``verified_at`` recorded at its targets (else ``finished_at``),
  the span an in-progress run is measured over too.
  *In progress* is read from the staging area (``settings.staging_root``), not Airflow's
  database: a directory ``<schedule>-<stamp>-<hash>`` whose draft manifest gives
  ``started_at`` (while the dump is still running there is no draft yet: the directory's
  mtime, set when the dump created its partial file, stands for the start). It is *not*
  in progress when the backup is verified at every target of the schedule (only cleanup
  is left), when a later backup of the schedule reached a target (the runs of a schedule
  are serial: this staging was abandoned), or when the failure callback marked it failed
  (``FAILED_MARKER``) and nothing in it was written or touched since. The monitor sees only backups
  staged where it runs: the staging directory must be shared by the workers (the
  docker-compose file mounts one volume), else runs on other workers are invisible. The
  alert clears when the backup finishes (cleanup removes the staging). A finished backup
  that took long raises nothing (it is a backup; the RPO and late rules cover the effect):
  its duration is on the DR page and in the ``backup.run.<schedule>.duration`` metric.
"""

from include.backup.dr.monitor.checks import (
    GIB,
    LATE_FACTOR,
    NO_DATA_TYPES,
    SLOW_FACTOR,
    SLOW_FLOOR,
    SLOW_MIN_HISTORY,
    STORAGE_HEADROOM_BACKUPS,
    check_dr_test,
    check_key_rotation,
    check_rpo,
    check_schedule,
    check_slow,
    check_storage,
    check_target_reachable,
    cron_interval,
    slow_after,
    storage_threshold,
)
from include.backup.dr.monitor.report import (
    MONITOR_KINDS,
    KeyStatus,
    MonitorReport,
    ScheduleStatus,
    SourceStatus,
    TargetStatus,
    fmt_age,
    fmt_bytes,
    fmt_duration,
    fmt_time,
)
from include.backup.dr.monitor.run import notify_report, run_monitor, sweep_targets
from include.backup.dr.monitor.running import (
    SLOW_HISTORY,
    StagedBackup,
    in_progress,
    read_stage,
    run_seconds,
    staged_backups,
    usual_durations,
)
from include.backup.staging import FAILED_MARKER

__all__ = [
    "FAILED_MARKER",
    "GIB",
    "LATE_FACTOR",
    "MONITOR_KINDS",
    "NO_DATA_TYPES",
    "SLOW_FACTOR",
    "SLOW_FLOOR",
    "SLOW_HISTORY",
    "SLOW_MIN_HISTORY",
    "STORAGE_HEADROOM_BACKUPS",
    "KeyStatus",
    "MonitorReport",
    "ScheduleStatus",
    "SourceStatus",
    "StagedBackup",
    "TargetStatus",
    "check_dr_test",
    "check_key_rotation",
    "check_rpo",
    "check_schedule",
    "check_slow",
    "check_storage",
    "check_target_reachable",
    "cron_interval",
    "fmt_age",
    "fmt_bytes",
    "fmt_duration",
    "fmt_time",
    "in_progress",
    "notify_report",
    "read_stage",
    "run_monitor",
    "sweep_targets",
    "run_seconds",
    "slow_after",
    "staged_backups",
    "storage_threshold",
    "usual_durations",
]

"""Typed schema of the backup config (DESIGN.md "Config contract").

Field names and ranges follow the source documents: RTO 0.5–72 h, RPO 0.25–24 h,
retention 7–365 days, DR test frequency 30–365 days. Unknown keys are rejected so that a
typo never silently turns into a default.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import Enum
from functools import lru_cache
from typing import Annotated, ClassVar, Literal

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped]
from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    field_validator,
    model_validator,
)

from include.backup.dr.destinations import check_destination
from include.backup.errors import RestoreRefused
from include.backup.targets import TARGET_TYPES
from include.backup.targets.tiers import DEFAULT_ARCHIVE_CLASS, HOT_CLASS, is_colder

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
"""Names become DAG ids and storage paths: letters, digits, ``_ . -``, at most 100."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackupType(str, Enum):  # noqa: UP042 - StrEnum would change str() of the members
    FULL = "FULL"
    INCREMENTAL = "INCREMENTAL"
    TRANSACTION_LOG = "TRANSACTION_LOG"
    SCHEMA = "SCHEMA"


class FailoverSwitch(Strict):
    """What "switch to the secondary" does for one source (docs/dr.md):

    - ``command``: run ``command`` (a list: no shell) with BACKUP_FAILOVER_SOURCE,
      BACKUP_FAILOVER_SECONDARY and BACKUP_FAILOVER_BACKUP_ID in its environment, e.g.
      ``[/usr/bin/ssh, standby, pg_ctl, promote, -D, /var/lib/postgresql/data]``.
    - ``airflow_variable``: set the Airflow Variable ``variable`` to ``value`` (default:
      the secondary, e.g. ``conn:events_pg_standby``).
    - ``airflow_connection``: record that connection ``conn_id`` is now the one to use, in
      the Airflow Variable ``backup_failover__<source>`` (a task cannot write connections
      through Airflow 3's Task SDK; readers use ``Variable.get`` with the primary's id as
      the default).
    - ``promote_standby``: promote the PostgreSQL hot standby behind the Airflow Postgres
      connection ``conn_id`` (``pg_promote(wait => true, wait_seconds => timeout_seconds)``)
      after recording how far its replay was behind (``last_replayed_at``,
      ``replay_lag_seconds``). A server out of recovery on timeline 1 was never a standby:
      refused. One out of recovery on a later timeline is taken as already promoted (a
      retry of the task succeeds without doing anything). The standby holds the data, so
      the failover does not restore a backup over it: it checks the promoted server
      instead. The secondary is that standby (``conn:<conn_id>``, the default).
    """

    kind: Literal["command", "airflow_variable", "airflow_connection", "promote_standby"]
    command: list[str] | None = None
    timeout_seconds: int = Field(default=600, ge=1, le=86400)
    variable: str | None = None
    value: str | None = None
    conn_id: str | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> FailoverSwitch:
        if self.kind == "command" and not self.command:
            raise ValueError("switch kind command needs command: [program, arg, ...] (no shell)")
        if self.kind == "airflow_variable" and not self.variable:
            raise ValueError("switch kind airflow_variable needs variable: <Variable key>")
        if self.kind == "airflow_connection" and not self.conn_id:
            raise ValueError(
                "switch kind airflow_connection needs conn_id: the connection to use from now on"
            )
        if self.kind == "promote_standby":
            if not self.conn_id:
                raise ValueError(
                    "switch kind promote_standby needs conn_id: the Airflow Postgres connection "
                    "to the hot standby to promote (e.g. conn_id: events_pg_standby)"
                )
            stray = [k for k in ("command", "variable", "value") if getattr(self, k) is not None]
            if stray:
                raise ValueError(
                    f"switch kind promote_standby takes conn_id and timeout_seconds only; "
                    f"remove {', '.join(stray)}"
                )
        return self


class FailoverSettings(Strict):
    """Failover of one source (``dr.failover.<source>``): where its latest backup is
    restored (``secondary``: a database name, ``conn:<conn_id>``, or a directory), the
    switch action, and the environment FAILOVER_TEST DR tests rehearse against."""

    secondary: str | None = None
    switch: FailoverSwitch | None = None
    target: str | None = None  # restore from this target (default: the first holding it)
    test_environment: str | None = None  # default target_environment of FAILOVER_TEST

    @model_validator(mode="after")
    def _secondary_is_the_standby(self) -> FailoverSettings:
        # Promoting a standby makes that standby the new primary: a different secondary
        # would be a second, contradictory answer to "where does production go".
        sw = self.switch
        if (
            sw is not None
            and sw.kind == "promote_standby"
            and self.secondary is not None
            and self.secondary.strip() not in (sw.conn_id, f"conn:{sw.conn_id}")
        ):
            raise ValueError(
                f"secondary {self.secondary!r} is not the standby the switch promotes "
                f"(conn_id {sw.conn_id!r}): set secondary: conn:{sw.conn_id} or leave it out"
            )
        return self


class DrillSettings(Strict):
    """A scheduled DR drill of one source (``dr.drills.<source>``, include/backup/dr/drills.py):
    ``dr_monitor`` triggers ``dr_test`` into this scratch destination when a drill is due."""

    into: str = Field(min_length=1, description="scratch destination: conn:<id>, database or directory")
    test_type: Literal["RESTORE_TEST", "RECOVERY_TIME_TEST"] = "RECOVERY_TIME_TEST"
    smoke_queries: list[str] = Field(default_factory=list)
    target: str | None = None  # restore from this target (default: the first holding the backup)
    # A scratch destination is reused by every drill: each restores over the previous one.
    overwrite: bool = True

    @field_validator("into")
    @classmethod
    def _into_shape(cls, value: str) -> str:
        try:
            return check_destination(value.strip(), "into")
        except RestoreRefused as exc:  # a pydantic error with the key path, not a crash
            raise ValueError(str(exc)) from None


class DRSettings(Strict):
    rto_hours: float = Field(default=4, ge=0.5, le=72, description="Recovery time objective, hours")
    rpo_hours: float = Field(default=1, ge=0.25, le=24, description="Recovery point objective, hours")
    backup_retention_days: int = Field(default=30, ge=7, le=365)
    test_frequency_days: int = Field(default=90, ge=30, le=365)
    auto_failover: bool = False
    notification_emails: list[EmailStr] = Field(default_factory=list)
    # Alerts (docs/alerts.md): the Airflow SMTP connection mails go through, and the free
    # space below which a target raises STORAGE_LOW. Targets report free bytes, not their
    # size, so the threshold is absolute; it is raised to twice the largest backup the
    # target holds when that is bigger (room for two more backups).
    smtp_conn_id: str = "smtp_default"
    storage_min_free_gb: float = Field(default=10, ge=0, description="STORAGE_LOW below this, GiB")
    # Audit records (docs/audit.md) older than this are removed by dr_monitor's sweep;
    # apart from backup retention: the trail outlives the backups it names.
    audit_retention_days: int = Field(default=400, ge=30, le=3650, description="audit trail kept, days")
    # Per source: how the failover DAG switches to the secondary (docs/dr.md).
    failover: dict[str, FailoverSettings] = Field(default_factory=dict)
    # Scheduled drills (include/backup/dr/drills.py): dr_monitor triggers dr_test into
    # dr.drills.<source>.into when the last successful test is older than test_frequency_days,
    # or when drill_cron fired since the last test of the source.
    drill_cron: str | None = None
    drills: dict[str, DrillSettings] = Field(default_factory=dict)
    # Auto-failover (include/backup/dr/autofailover.py): this many consecutive failed checks
    # of a primary with a dr.failover entry make it down (at least 2: one blip is no outage).
    failover_after_checks: int = Field(default=3, ge=2, le=100)
    # Access control (docs/security.md#access-control): role names of the auth manager,
    # matched case-insensitively. None leaves the decision to the auth manager alone.
    operator_roles: list[str] | None = None  # may trigger restore, failover, dr_test
    reader_roles: list[str] | None = None  # may read the DR page and /dr/api/
    audit_roles: list[str] | None = Field(default_factory=lambda: ["admin"])  # may read /dr/api/audit

    @field_validator("operator_roles", "reader_roles", "audit_roles")
    @classmethod
    def _role_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [str(v).strip() for v in value]
        if not names or not all(names):
            raise ValueError(
                "give at least one non-empty role name (e.g. [OP, ADMIN]), or leave the key out "
                "to let Airflow's auth manager alone decide"
            )
        return names

    @field_validator("drill_cron")
    @classmethod
    def _drill_cron(cls, value: str | None) -> str | None:
        problem = cron_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


class EncryptionSettings(Strict):
    # The keys themselves live in an Airflow connection (or any secrets backend that serves
    # connections), never in this file: see docs/keys.md.
    key_conn_id: str = "backup_encryption"
    key_rotation_days: int = Field(default=30, ge=1, le=365)
    # dr_monitor rotates the key itself once it is due, where the key ring's store is
    # writable from the monitor's worker (a key file; see docs/keys.md); else it warns.
    auto_rotate: bool = False


class PipelineSettings(Strict):
    compression: Literal["zstd", "gzip"] = "zstd"
    compression_level: int = Field(default=3, ge=1, le=19)
    # Plaintext bytes per AES-GCM chunk; 1 MiB keeps memory flat and the 16-byte tag
    # overhead at 0.0015 %.
    chunk_size: int = Field(default=1 << 20, ge=4096, le=64 << 20)


# --- targets ---------------------------------------------------------------------------


def _absolute_path(path: str) -> str:
    # Resolved on whichever worker runs the task: a relative path would depend on that
    # worker's working directory.
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must be absolute (start with /)")
    return path


_TIER_KEYS = ("storage_class", "archive_after_days", "archive_storage_class", "thaw_tier")


def _no_tiers(data: object) -> object:
    """A storage class on a disk or file server would be silently ignored: refuse it
    with the kinds that have classes (instead of a bare "unknown key")."""
    if isinstance(data, dict):
        given = [k for k in _TIER_KEYS if k in data]
        if given:
            raise ValueError(
                f"{', '.join(given)}: {data.get('type')} targets have no storage classes; remove "
                f"{'it' if len(given) == 1 else 'them'} (storage classes and archive_after_days "
                "apply to s3, azure_blob and gcs targets only)"
            )
    return data


class LocalTarget(Strict):
    type: Literal["local"]
    path: str
    offsite: bool = False

    _absolute = field_validator("path")(_absolute_path)
    _tiers = model_validator(mode="before")(_no_tiers)


def _plain_prefix(prefix: str) -> str:
    # Object keys are not paths, but every store and tool shows them as paths: a prefix
    # with ".." or "." parts, a leading "/" or a backslash would put the backups somewhere
    # else than the config seems to say (or outside a bucket policy's prefix).
    problem = (
        "starts with '/'" if prefix.startswith("/")
        else "contains a backslash" if "\\" in prefix
        else "has a '..' or '.' part" if any(p in (".", "..") for p in prefix.split("/"))
        else None
    )
    if problem:
        raise ValueError(
            f"prefix {prefix!r} {problem}; use plain folder names separated by '/', e.g. "
            "'event-manager/'"
        )
    return prefix


# Storage classes (include/backup/targets/tiers.py), warmest first.
S3Class = Literal["STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"]
AzureTier = Literal["Hot", "Cool", "Cold", "Archive"]
GCSClass = Literal["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"]
ArchiveAfterDays = Field(default=None, ge=1, le=3650)


class TieredTarget(Strict):
    """The archive-tier keys every object store shares (docs/targets.md, "Archive tiers"):
    payloads are uploaded in ``storage_class`` (default: the store's hot class) and, with
    ``archive_after_days``, moved to ``archive_storage_class`` (default: the store's
    coldest usual archive class) once that many days old."""

    store_kind: ClassVar[str] = ""  # "s3", "azure_blob", "gcs": set by each subclass

    def upload_class(self) -> str:
        return getattr(self, "storage_class", None) or HOT_CLASS[self.store_kind]

    def archive_class(self) -> str | None:
        """Where archive_after_days moves payloads, or None when nothing is archived."""
        if getattr(self, "archive_after_days", None) is None:
            return None
        return getattr(self, "archive_storage_class", None) or DEFAULT_ARCHIVE_CLASS[self.store_kind]

    @model_validator(mode="after")
    def _archive_is_colder(self) -> TieredTarget:
        given = getattr(self, "archive_storage_class", None)
        if given is not None and getattr(self, "archive_after_days", None) is None:
            raise ValueError(
                "archive_storage_class needs archive_after_days: the age in days after which "
                f"payloads move to {given} (e.g. archive_after_days: 30)"
            )
        archive = self.archive_class()
        if archive is not None and not is_colder(self.store_kind, archive, self.upload_class()):
            raise ValueError(
                f"archive_storage_class {archive} is not colder than storage_class "
                f"{self.upload_class()}: archive_after_days would move nothing; set a colder "
                "archive_storage_class, or remove archive_after_days"
            )
        return self


class S3Target(TieredTarget):
    store_kind: ClassVar[str] = "s3"
    type: Literal["s3"]
    conn_id: str
    bucket: str
    prefix: str = ""
    offsite: bool = True
    storage_class: S3Class | None = None
    archive_after_days: int | None = ArchiveAfterDays
    archive_storage_class: S3Class | None = None
    # S3 restore tier of a thaw: Expedited (minutes, GLACIER only), Standard, Bulk.
    thaw_tier: Literal["Expedited", "Standard", "Bulk"] = "Standard"

    _prefix = field_validator("prefix")(_plain_prefix)


class AzureBlobTarget(TieredTarget):
    store_kind: ClassVar[str] = "azure_blob"
    type: Literal["azure_blob"]
    conn_id: str
    container: str
    prefix: str = ""
    offsite: bool = True
    storage_class: AzureTier | None = None
    archive_after_days: int | None = ArchiveAfterDays
    archive_storage_class: AzureTier | None = None
    # Azure rehydrate priority of a thaw: Standard (up to 15 h) or High.
    thaw_tier: Literal["Standard", "High"] = "Standard"

    _prefix = field_validator("prefix")(_plain_prefix)


class GCSTarget(TieredTarget):
    store_kind: ClassVar[str] = "gcs"
    type: Literal["gcs"]
    conn_id: str
    bucket: str
    prefix: str = ""
    offsite: bool = True
    storage_class: GCSClass | None = None
    archive_after_days: int | None = ArchiveAfterDays
    archive_storage_class: GCSClass | None = None

    _prefix = field_validator("prefix")(_plain_prefix)


class SFTPTarget(Strict):
    type: Literal["sftp"]
    conn_id: str
    path: str
    offsite: bool = True

    _tiers = model_validator(mode="before")(_no_tiers)


class FTPTarget(Strict):
    type: Literal["ftp"]
    conn_id: str
    path: str
    offsite: bool = True

    _tiers = model_validator(mode="before")(_no_tiers)


TargetConfig = Annotated[
    LocalTarget | S3Target | AzureBlobTarget | GCSTarget | SFTPTarget | FTPTarget,
    Field(discriminator="type"),
]

# --- sources ---------------------------------------------------------------------------


DEFAULT_RESTORE_SETTINGS = {"maintenance_work_mem": "256MB"}
_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_GUC_VALUE = re.compile(r"[A-Za-z0-9_.:+-]+")


class PostgresSource(Strict):
    type: Literal["postgres"]
    conn_id: str
    database: str | None = None  # defaults to the connection's schema (database) field
    format: Literal["custom", "directory"] = "custom"
    jobs: int = Field(default=1, ge=1, le=32, description="pg_dump -j, directory format only")
    # pg_restore -j of a restore into a new database, either format (custom: from a
    # spooled file); default: jobs. Restores into an existing database run as one transaction.
    restore_jobs: int | None = Field(default=None, ge=1, le=32, description="pg_restore -j")
    # Server settings for pg_restore's sessions (PGOPTIONS "-c name=value"), after any
    # "options" of the connection. PostgreSQL's advice for bulk loads ("Populating a
    # Database"): a larger maintenance_work_mem sorts the restore's index builds and
    # foreign-key checks in memory. {} leaves the server's own settings.
    restore_settings: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_RESTORE_SETTINGS))
    # Row counts in the manifest (a DR test compares them): "exact" count(*) in the dump's
    # snapshot, "estimate" the planner's (pg_class.reltuples, no extra scan), "auto" exact
    # below 1 GiB of database.
    row_counts: Literal["auto", "exact", "estimate"] = "auto"
    # logical: pg_dump (FULL, SCHEMA). physical: pg_basebackup + WAL from the archive spool
    # (FULL, INCREMENTAL, TRANSACTION_LOG, point-in-time recovery; SCHEMA via pg_dump).
    method: Literal["logical", "physical"] = "logical"
    # physical: the directory the server's archive_command copies WAL segments into.
    wal_archive_dir: str | None = None
    # physical: delete spool segments already held by a stored backup (default keep them).
    prune_wal_archive: bool = False

    _absolute_spool = field_validator("wal_archive_dir")(
        lambda v: None if v is None else _absolute_path(v)
    )

    @field_validator("restore_settings")
    @classmethod
    def _settings_are_plain(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _GUC_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a PostgreSQL setting name "
                    "(letters, digits, '_' and '.', e.g. maintenance_work_mem)"
                )
            if not _GUC_VALUE.fullmatch(str(value)):
                raise ValueError(
                    f"{name}: {value!r} must be one word without spaces or quotes (e.g. 512MB, off, 0)"
                )
        return v

    @model_validator(mode="after")
    def _jobs_need_directory(self) -> PostgresSource:
        if self.jobs > 1 and self.format != "directory":
            raise ValueError("jobs > 1 needs format: directory (pg_dump -j only works with -Fd)")
        if self.method == "physical" and not self.wal_archive_dir:
            raise ValueError(
                "method: physical needs wal_archive_dir: the directory the server's "
                "archive_command copies WAL segments into (see docs/postgres.md)"
            )
        if self.method == "logical" and (self.wal_archive_dir or self.prune_wal_archive):
            raise ValueError("wal_archive_dir and prune_wal_archive only apply to method: physical")
        return self


class MongoSource(Strict):
    type: Literal["mongo"]
    conn_id: str
    database: str | None = None
    collections: list[str] = Field(default_factory=list)


class FilesSource(Strict):
    type: Literal["files"]
    paths: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    # What a file or folder that vanishes, or changes while it is read, does to the run:
    # "fail" it (the backup would not match the source), or "warn": publish the backup
    # marked incomplete, with the paths in its warnings.
    on_changed: Literal["fail", "warn"] = "fail"

    @field_validator("paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for p in paths:
            _absolute_path(p)
        return paths


SourceConfig = Annotated[
    PostgresSource | MongoSource | FilesSource, Field(discriminator="type")
]

# Which backup types each source kind implements in this version. Validation refuses the
# rest with a message instead of generating a DAG that fails at run time.
SUPPORTED_TYPES: dict[str, set[BackupType]] = {
    "postgres": {BackupType.FULL, BackupType.SCHEMA},
    "files": {BackupType.FULL, BackupType.INCREMENTAL},
    "mongo": {BackupType.FULL, BackupType.INCREMENTAL, BackupType.TRANSACTION_LOG, BackupType.SCHEMA},
}
# PostgreSQL with method: physical (base backups + WAL). INCREMENTAL there means the WAL
# since the last base backup (server-side incremental base backups need PostgreSQL 17).
POSTGRES_PHYSICAL_TYPES: set[BackupType] = {
    BackupType.FULL,
    BackupType.INCREMENTAL,
    BackupType.TRANSACTION_LOG,
    BackupType.SCHEMA,
}


def supported_types(source: object) -> set[BackupType]:
    """The backup types a configured source implements (depends on postgres' method)."""
    kind = getattr(source, "type", None)
    if kind == "postgres" and getattr(source, "method", "logical") == "physical":
        return POSTGRES_PHYSICAL_TYPES
    return SUPPORTED_TYPES.get(str(kind), set())


# The target types this version implements: the registry's (include/backup/targets), not a
# second list kept by hand.
IMPLEMENTED_TARGETS: set[str] = set(TARGET_TYPES)


# --- schedules -------------------------------------------------------------------------


class GFSRetention(Strict):
    daily: int = Field(default=7, ge=0, le=3650)
    weekly: int = Field(default=4, ge=0, le=520)
    monthly: int = Field(default=12, ge=0, le=240)
    yearly: int = Field(default=7, ge=0, le=100)


class CleanupRules(Strict):
    """The source guide's cleanup rules, per schedule (include/backup/retention.py)."""

    # INCREMENTAL backups older than this go (unless a kept backup depends on them).
    incremental_max_age_days: int = Field(default=7, ge=1, le=3650)
    # FULL/SCHEMA backups older than this keep only their monthly and yearly GFS reasons.
    full_max_age_days: int = Field(default=30, ge=1, le=3650)
    # The newest this many backups of the schedule (at each target) are never deleted.
    min_backups: int = Field(default=1, ge=1, le=1000)


# Airflow's presets (airflow.utils.dates.cron_presets) plus the two croniter aliases it also
# accepts; each is checked as the expression it stands for.
CRON_PRESETS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
CRON_FIELDS: tuple[tuple[str, str], ...] = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
)
_CRON_HELP = (
    "use 5 fields (minute hour day-of-month month day-of-week), e.g. '0 2 * * *', "
    "or one of " + ", ".join(CRON_PRESETS)
)


@lru_cache(maxsize=4096)  # every DAG parse validates every schedule's cron; schedules share crons
def cron_problem(cron: str) -> str | None:
    """Why ``cron`` cannot be a DAG schedule, or None if it can.

    Stricter than croniter alone: croniter also takes 6-field (seconds) expressions, which
    Airflow cannot schedule, and random ``R`` fields, which would move the schedule on
    every DAG parse; and it accepts dates that never occur (31 February), which would make
    a backup DAG that silently never runs.
    """
    expr = CRON_PRESETS.get(cron, cron)
    fields = expr.split()
    if len(fields) != 5:
        return f"{cron!r} is not a valid cron expression: it has {len(fields)} fields; {_CRON_HELP}"
    valid = croniter.is_valid(expr)
    for i, (field, allowed) in enumerate(CRON_FIELDS):
        if any(part == "R" or part.startswith("R(") for part in fields[i].split(",")):
            return (
                f"{cron!r} is not a valid cron expression: random (R) {field} fields are not "
                "supported because the schedule would change on every DAG parse; pick a fixed value"
            )
        if valid:
            continue
        # Check each field alone so the message can say which one is wrong.
        probe = ["*"] * 5
        probe[i] = fields[i]
        if not croniter.is_valid(" ".join(probe)):
            return (
                f"{cron!r} is not a valid cron expression: {field} field {fields[i]!r} is "
                f"invalid; the {field} field takes {allowed}, combined with * , - /"
            )
    if not valid:
        return f"{cron!r} is not a valid cron expression; {_CRON_HELP}"
    try:
        croniter(expr, datetime(2024, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        return (
            f"{cron!r} never fires (the day-of-month and month fields name a date that does "
            "not exist, e.g. 31 February); fix the day-of-month or month field"
        )
    return None


class Schedule(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    source: str
    type: BackupType = BackupType.FULL
    cron: str
    active: bool = True
    targets: list[str] = Field(min_length=1)
    retention: GFSRetention | None = None
    retention_days: int | None = Field(default=None, ge=1, le=3650)
    cleanup_rules: CleanupRules = Field(default_factory=CleanupRules)
    description: str = ""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        problem = cron_problem(cron)
        if problem:
            raise ValueError(problem)
        return cron

    @model_validator(mode="after")
    def _one_retention(self) -> Schedule:
        if self.retention is not None and self.retention_days is not None:
            raise ValueError("give either retention (GFS tiers) or retention_days, not both")
        return self

    @property
    def dag_id(self) -> str:
        return f"backup__{self.name}"


class BackupConfig(Strict):
    """A fully valid config. Built by :func:`include.backup.config.loader.load_config`."""

    dr: DRSettings = Field(default_factory=DRSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    staging_dir: str | None = None  # default: $BACKUP_STAGING_DIR or $AIRFLOW_HOME/backup-staging
    targets: dict[str, TargetConfig] = Field(default_factory=dict)
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    schedules: list[Schedule] = Field(default_factory=list)

    @field_validator("staging_dir")
    @classmethod
    def _absolute_staging(cls, path: str | None) -> str | None:
        return None if path is None else _absolute_path(path)

    def schedule(self, name: str) -> Schedule:
        for s in self.schedules:
            if s.name == name:
                return s
        raise KeyError(f"no schedule named {name!r}; known: {[s.name for s in self.schedules]}")

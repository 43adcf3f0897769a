"""Config → DAGs. The files in ``dags/`` call :func:`register_backup_dags` and
:func:`raise_config_errors`; nothing here touches a source, a target or a connection at
parse time: the config file is the only thing read.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from include.backup.alerts.deadlines import deadlines_for
from include.backup.assets import backup_asset_uri
from include.backup.config.loader import LoadedConfig, config_path, load_config
from include.backup.config.schema import BackupConfig, GFSRetention, Schedule
from include.backup.dag_defaults import dag_defaults, on_backup_failure
from include.backup.errors import ConfigError
from include.backup.gc_pause import gc_paused


def _doc_md(config: BackupConfig, schedule: Schedule, config_path: Path) -> str:
    """What the schedule does, for the DAG's docs in the UI. Conn ids only: never a secret
    (the config holds none, credentials live in Airflow connections)."""
    source = config.sources[schedule.source]
    targets = "\n".join(
        f"| `{name}` | {config.targets[name].type} | {'yes' if config.targets[name].offsite else 'no'} |"
        for name in schedule.targets
    )
    if schedule.retention_days is not None:
        retention = f"keep every backup for {schedule.retention_days} days"
    else:
        r = schedule.retention or config_retention_default()
        retention = f"GFS: {r.daily} daily, {r.weekly} weekly, {r.monthly} monthly, {r.yearly} yearly"
    return f"""### Backup schedule `{schedule.name}`
{schedule.description}

| | |
|---|---|
| source | `{schedule.source}` ({source.type}) |
| type | {schedule.type.value} |
| cron | `{schedule.cron}` |
| retention | {retention} |
| config | `{config_path.name}` |

| target | type | off-site |
|---|---|---|
{targets}

Tasks: **dump** (stream the source through {config.pipeline.compression}) → **encrypt**
(AES-256-GCM, fresh data key) → **checksum** (SHA-256, manifest) → **upload** (one mapped
task per target; manifest last) → **verify** (read back and re-hash at each target) →
**cleanup** (staging, retention).
"""


BACKUP_ASSET_ALIAS = "backup"
"""The asset alias the backup DAGs' cleanup task emitted through before it declared its
source's asset itself (assets.backup_asset_uri); kept for importers."""


def config_retention_default() -> Any:
    return GFSRetention()


def deadline_alerts_enabled() -> bool:
    """Deadline alerts on by default. `airflow dags test` in Airflow 3.3.2 crashes after a
    successful run of any DAG with a deadline (apache/airflow#73428), so the demo and the
    tests that use it set BACKUP_DEADLINE_ALERTS=off; the scheduler is not affected."""
    return os.environ.get("BACKUP_DEADLINE_ALERTS", "on").lower() not in {"off", "0", "false", "no"}


@functools.cache
def _steps() -> SimpleNamespace:
    """The six step tasks, decorated once per process and called in every backup DAG:
    decorating them per schedule cost a signature inspection each (bench/bench_parse.py).
    Each task resolves the config (and the schedule) once and calls its step (tasks.py);
    the steps hand each other one dict each through XCom (multiple_outputs=False: no XCom
    per key besides it)."""
    from airflow.sdk import (  # lazy: Airflow: not loaded by the CLI and config checks
        Asset,
        get_current_context,
        task,
    )

    @task(task_id="dump", multiple_outputs=False)
    def dump(schedule_name: str) -> dict[str, Any]:
        from include.backup import runtime, tasks  # lazy: DAG parse time (sources, crypto, zstandard)

        ctx = get_current_context()
        # The backup id is named by when the run started (fixed for the run: every retry
        # gets the same id), not by its logical date; the manifest keeps both.
        when = tasks.run_started_at(ctx)
        config = runtime.load_config()
        schedule = tasks.resolve_schedule(config, schedule_name, "dump")
        run_id = ctx["run_id"]
        return tasks.dump(
            config, schedule, run_id, when, logical_date=ctx.get("logical_date"), dag_run_id=run_id
        ).to_xcom()

    @task(task_id="encrypt", multiple_outputs=False)
    def encrypt(meta: dict[str, Any]) -> dict[str, Any]:
        from include.backup import runtime, tasks  # lazy: DAG parse time (sources, crypto, zstandard)

        return tasks.encrypt(runtime.load_config(), tasks.BackupMeta.from_xcom(meta)).to_xcom()

    @task(task_id="checksum", multiple_outputs=False)
    def checksum(meta: dict[str, Any]) -> dict[str, Any]:
        from include.backup import runtime, tasks  # lazy: DAG parse time (sources, crypto, zstandard)

        return tasks.checksum(runtime.load_config(), tasks.BackupMeta.from_xcom(meta)).to_xcom()

    @task(task_id="upload", map_index_template="{{ target_name }}", multiple_outputs=False)
    def upload(meta: dict[str, Any], target_name: str) -> dict[str, Any]:
        from include.backup import runtime, tasks  # lazy: DAG parse time (sources, crypto, zstandard)

        # An extra context key for map_index_template, as Airflow documents.
        get_current_context()["target_name"] = target_name  # type: ignore[typeddict-unknown-key]
        return tasks.upload(runtime.load_config(), tasks.BackupMeta.from_xcom(meta), target_name)

    @task(task_id="verify", map_index_template="{{ target_name }}", multiple_outputs=False)
    def verify(meta: dict[str, Any], target_name: str) -> dict[str, Any]:
        from include.backup import runtime, tasks  # lazy: DAG parse time (sources, crypto, zstandard)

        # An extra context key for map_index_template, as Airflow documents.
        get_current_context()["target_name"] = target_name  # type: ignore[typeddict-unknown-key]
        return tasks.verify(runtime.load_config(), tasks.BackupMeta.from_xcom(meta), target_name)

    @task(task_id="cleanup", multiple_outputs=False)  # outlets: per DAG, build_backup_dag
    def cleanup(meta: dict[str, Any], schedule_name: str) -> dict[str, Any]:
        from include.backup import runtime, tasks  # lazy: DAG parse time (sources, crypto, zstandard)

        config, backup = runtime.load_config(), tasks.BackupMeta.from_xcom(meta)
        result = tasks.cleanup(config, backup, schedule_name)
        # One asset event per verified backup (cleanup runs after every verify passed).
        uri, extra = tasks.backup_event(config, backup, schedule_name)
        get_current_context()["outlet_events"][Asset(uri)].extra = extra
        return result

    steps = SimpleNamespace(
        dump=dump, encrypt=encrypt, checksum=checksum, upload=upload, verify=verify, cleanup=cleanup
    )
    for decorated in vars(steps).values():
        _pin_signature(decorated.function)
    _pin_base_operator_signature()
    return steps


def _pin_base_operator_signature() -> None:
    """Every ``expand`` (two per backup DAG) computes ``inspect.signature(BaseOperator)``
    afresh (60 parameters): a fifth of the time building 500 backup DAGs took
    (bench/bench_parse.py). Pinned on the ``__init__`` wrapper that Airflow's metaclass
    puts on BaseOperator, ``inspect`` returns the same signature at once (an operator
    class that defines ``__init__`` gets a wrapper of its own, unaffected)."""
    from airflow.sdk import BaseOperator  # lazy: Airflow: not loaded by the CLI and config checks

    init = BaseOperator.__init__
    if "__signature__" not in vars(init):
        _pin_signature(init)


def _pin_signature(fn: Any) -> None:
    """Airflow inspects a task's callable 4 to 5 times for every task it builds from it
    (10,000 inspections for 500 schedules, about 0.3 s of bench/bench_parse.py);
    ``inspect.signature`` returns a function's ``__signature__`` at once when it is set."""
    fn.__signature__ = inspect.signature(fn)


def build_backup_dag(config: BackupConfig, schedule: Schedule, config_path: Path) -> Any:
    from airflow.sdk import DAG, Asset  # lazy: Airflow: not loaded by the CLI and config checks

    source_type = config.sources[schedule.source].type
    # Late runs and missed RPOs page on-call through deadline alerts (Airflow 3's SLAs);
    # failures through the failure callback, once per run whichever task failed.
    deadline = deadlines_for(config, schedule) if deadline_alerts_enabled() else None
    step = _steps()

    with DAG(
        dag_id=schedule.dag_id,
        schedule=schedule.cron,
        on_failure_callback=on_backup_failure,
        deadline=deadline or None,
        doc_md=_doc_md(config, schedule, config_path),
        description=f"{schedule.type.value} backup of {schedule.source} to {', '.join(schedule.targets)}",
        **dag_defaults(
            f"source:{schedule.source}", f"type:{schedule.type.value}", source_type, retries=2, backoff=True
        ),
    ) as dag:
        # TaskFlow: an XComArg stands for the upstream return value (apache/airflow#39514).
        meta = step.checksum(step.encrypt(step.dump(schedule.name)))
        uploaded = step.upload.partial(meta=meta).expand(target_name=list(schedule.targets))
        verified = step.verify.partial(meta=meta).expand(target_name=list(schedule.targets))
        uploaded >> verified
        cleanup = step.cleanup
        if running_task_id() in (None, "cleanup"):
            cleanup = cleanup.override(outlets=[Asset(backup_asset_uri(schedule.source))])
        verified >> cleanup(meta, schedule.name)
    return dag


def build_dags(loaded: LoadedConfig, only: str | None = None) -> dict[str, Any]:
    """The DAG of every active schedule, or only the one whose dag_id is ``only``.

    The garbage collector is paused while they are built: each DAG is hundreds of new,
    long-lived containers, and the collector's passes over them were a fifth of the time
    building 500 backup DAGs took (bench/bench_parse.py)."""
    with gc_paused():
        return {
            s.dag_id: build_backup_dag(loaded.config, s, loaded.path)
            for s in loaded.config.schedules
            if s.active and (only is None or s.dag_id == only)
        }


def running_dag_id() -> str | None:
    """The DAG a task process was started for, else None (dag-processor, DagBag, CLI).

    A task process parses its DAG file again to find its task; building all the other
    schedules' DAGs there cost 1.9 s of the 2.8 s start-up of every task with 50 schedules
    (bench/bench_scheduler.py), so it builds only its own (Airflow's parsing context)."""
    from airflow.sdk import get_parsing_context  # lazy: Airflow: not loaded by the CLI and config checks

    return get_parsing_context().dag_id


def running_task_id() -> str | None:
    """The task a task process was started for, else None (dag-processor, DagBag, CLI).

    Only the dag-processor (which registers the asset) and the ``cleanup`` task (which
    emits its event) need cleanup's outlet. Building an ``Asset`` with a scheme of our own
    makes Airflow load every installed provider's asset URI handlers, and with them the S3
    and GCS hooks: 1.1 of the 1.5 s a task process took to parse its backup DAG, on every
    task (`python bench/bench_task_start.py`); with 30 runs at once on 2 cores those parses
    went past Airflow's 30 s DAG import timeout."""
    from airflow.sdk import get_parsing_context  # lazy: Airflow: not loaded by the CLI and config checks

    return get_parsing_context().task_id


_CACHE: dict[tuple[str, int, int], LoadedConfig] = {}


def _load(path: str | Path | None) -> LoadedConfig:
    """load_config, once per version of the file per process: both DAG files read the same
    config, and a DagBag imports them in one process."""

    resolved = Path(path) if path is not None else config_path()
    try:
        st = resolved.stat()
    except OSError:
        return load_config(resolved)  # raises the loader's clear "not found" error
    key = (str(resolved.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_config(resolved)
    return _CACHE[key]


def register_backup_dags(namespace: dict[str, Any], path: str | Path | None = None) -> None:
    """Put one DAG per active, valid schedule into ``namespace`` (a DAG file's globals).

    A config that cannot be read at all raises here, so it shows as an import error.
    Broken schedules are skipped here and reported by :func:`raise_config_errors`."""
    loaded = _load(path)
    namespace.update(build_dags(loaded, only=running_dag_id()))


def raise_config_errors(path: str | Path | None = None) -> None:
    """Raise a ConfigError listing every broken schedule, target or source, so that the
    Airflow UI shows it as an import error while the valid schedules keep running."""
    loaded = _load(path)
    if loaded.issues:
        raise ConfigError(str(loaded.path), loaded.issues)

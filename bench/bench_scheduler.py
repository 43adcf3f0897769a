"""Scheduler overhead per backup run with real Airflow components (run on demand).

    python bench/bench_scheduler.py [--runs 1 50] [--repeat 3] [--repeat-many 1] [--parallelism 8]
                                    [--raw timings.json] [--keep-logs DIR]
                                    [--executor local|celery] [--workers 2] [--kinds noop backup]

``--executor celery --workers W``: the same rounds first on LocalExecutor with
``[core] parallelism`` P, then on the CeleryExecutor (Redis broker, W workers of P/W slots
each: the same total parallelism), in the same run, and the ratios celery/local of runs per
minute and overhead per run at each N. CPU of the workers' process groups is counted per
worker (their task processes included), Redis' with the rest of the machine.

Starts api-server, scheduler, dag-processor and triggerer with LocalExecutor and a
PostgreSQL 15 metadata database on 127.0.0.1 (include/backup/testing/airflow_stack.py), with
a DAGs folder that holds only what is measured: one backup DAG per schedule of a generated
config (files sources of 24 small files each, one local target, cron "0 0 1 1 *" and
``[scheduler] use_job_schedule = False`` so nothing runs on its own), and the baseline: as
many DAGs of the same shape (dump → encrypt → checksum → upload[target] → verify[target] →
cleanup, TaskFlow tasks passing a small dict through XCom, mapped over the one target) whose
tasks do nothing, i.e. Airflow's own cost per run. Heartbeats and DAG re-parse intervals are
Airflow's defaults (the e2e fixture shortens them), and the concurrency settings are printed.

For each N in ``--runs``, rounds alternate baseline then backup: N runs triggered at once
through the REST API v2, polled to completion, then read back from the REST API (dagRuns:
queued_at, start_date, end_date; taskInstances: scheduled_when, queued_when, start_date,
end_date, duration; each task's log for the marks inside a task). Per run:

    wall      = run end_date - queued_at
    task time = sum of the task durations
    overhead  = wall - task time

and the overhead split into: run queued → running, and for each task (in order; the chain
is linear with one target) upstream done → scheduled (the scheduler's dependency check),
scheduled → queued (executor slots), queued → start_date (LocalExecutor worker pick-up,
fork of the task process); then last task end → run end. Inside a task's duration, from its
log: start-up (start call to the API server, imports, DAG file parse), the task's own code,
and the finish (XCom push, state report). CPU seconds per run are read from /proc for each
component's process group (task processes are counted through their supervisor, the
LocalExecutor worker that reaps them), and the rest of the machine's busy time is shown
as noise. The first round of each kind is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CRON = "0 0 1 1 *"
TARGET = "local"
FILES_PER_SOURCE = 24
POLL_S = 2.0
DONE_STATES = ("success", "failed")
KINDS = ("noop", "backup")
"""Baseline first in every pair of rounds."""
PRODUCTION_INTERVALS = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "5",
    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "5",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "5",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "300",
}
PARTS = ("run_queued_to_running", "ready_to_scheduled", "scheduled_to_queued", "queued_to_start", "tail")
IN_TASK = ("startup", "parse", "work", "finish")


# --- pure computations (tests/unit/test_bench_scheduler.py) -------------------------------


def parse_ts(value: str | None) -> datetime | None:
    """An API timestamp ("...Z" or "+00:00") as an aware datetime."""
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _s(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


@dataclass(frozen=True)
class LogMarks:
    """Where a task's duration goes, from its log (seconds)."""

    startup: float  # start_date → end of "Pre Execute": start call, imports, DAG file parse
    parse: float  # of which the DAG file parse in the task process
    work: float  # → "Done. Returned value was": the task's own code
    finish: float  # → end_date: XCom push, state report


@dataclass(frozen=True)
class TaskTiming:
    task_id: str
    map_index: int
    try_number: int
    scheduled: datetime | None
    queued: datetime | None
    start: datetime
    end: datetime
    duration: float
    marks: LogMarks | None = None


@dataclass(frozen=True)
class RunTiming:
    dag_id: str
    run_id: str
    state: str
    queued_at: datetime
    start: datetime
    end: datetime
    tasks: tuple[TaskTiming, ...] = field(default_factory=tuple)


def task_from_api(ti: Mapping[str, Any], marks: LogMarks | None = None) -> TaskTiming:
    start, end = parse_ts(ti["start_date"]), parse_ts(ti["end_date"])
    if start is None or end is None:
        raise ValueError(
            f"task {ti['task_id']} of {ti['dag_run_id']} has no start or end date (state {ti['state']})"
        )
    duration = ti["duration"] if ti["duration"] is not None else _s(start, end)
    return TaskTiming(
        task_id=ti["task_id"],
        map_index=int(ti["map_index"]),
        try_number=int(ti["try_number"]),
        scheduled=parse_ts(ti["scheduled_when"]),
        queued=parse_ts(ti["queued_when"]),
        start=start,
        end=end,
        duration=float(duration),
        marks=marks,
    )


def run_from_api(run: Mapping[str, Any], tasks: Iterable[TaskTiming]) -> RunTiming:
    queued, start, end = parse_ts(run["queued_at"]), parse_ts(run["start_date"]), parse_ts(run["end_date"])
    if queued is None or start is None or end is None:
        raise ValueError(f"run {run['dag_run_id']} is not finished (state {run['state']})")
    return RunTiming(run["dag_id"], run["dag_run_id"], run["state"], queued, start, end, tuple(tasks))


def log_marks(events: Sequence[Mapping[str, Any]], start: datetime, end: datetime) -> LogMarks | None:
    """Split a task's duration using its structured log (Airflow 3 task runner events).
    None when the log lacks the marks (a failed task, another log format)."""
    pre_seen = False
    setup_end: datetime | None = None
    done: datetime | None = None
    parse_ms = 0.0
    for ev in events:
        text = str(ev.get("event", ""))
        ts = parse_ts(ev.get("timestamp"))
        if text == "::group::Pre Execute":
            pre_seen = True
        elif text == "::endgroup::" and pre_seen and setup_end is None:
            setup_end = ts
        elif text == "Worker startup parse complete":
            parse_ms = float(ev.get("dag_file_parse_ms") or 0)
        elif text.startswith("Done. Returned value was") and done is None:
            done = ts
    if setup_end is None or done is None:
        return None
    return LogMarks(
        startup=_s(start, setup_end),
        parse=parse_ms / 1000,
        work=_s(setup_end, done),
        finish=_s(done, end),
    )


def run_breakdown(run: RunTiming) -> dict[str, float]:
    """wall, task_time, overhead and the parts of the overhead (seconds).

    Tasks are taken in start order, each ready when everything before it has ended (the
    run's start for the first): exact for a linear chain, where the parts add up to the
    overhead. Where tasks overlap (several targets), the parts are clamped at zero and
    ``unaccounted`` holds the difference."""
    tasks = sorted(run.tasks, key=lambda t: (t.start, t.end))
    wall = _s(run.queued_at, run.end)
    task_time = sum(t.duration for t in tasks)
    out = dict.fromkeys(PARTS, 0.0)
    out["run_queued_to_running"] = _s(run.queued_at, run.start)
    ready = run.start
    for t in tasks:
        # a task that started before the previous one ended (overlap) adds nothing; missing
        # or out-of-order scheduled_when / queued_when: keep ready ≤ scheduled ≤ queued ≤ start
        this_ready = min(ready, t.start)
        scheduled = min(max(t.scheduled or this_ready, this_ready), t.start)
        queued = min(max(t.queued or scheduled, scheduled), t.start)
        out["ready_to_scheduled"] += _s(this_ready, scheduled)
        out["scheduled_to_queued"] += _s(scheduled, queued)
        out["queued_to_start"] += _s(queued, t.start)
        ready = max(ready, t.end)
    out["tail"] = max(0.0, _s(ready, run.end))
    overhead = wall - task_time
    out["unaccounted"] = overhead - sum(out[p] for p in PARTS)
    for name in IN_TASK:
        values = [getattr(t.marks, name) for t in tasks if t.marks is not None]
        out[name] = sum(values) if len(values) == len(tasks) else math.nan
    out.update(wall=wall, task_time=task_time, overhead=overhead, tasks=float(len(tasks)))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): p95 of 3 values is the largest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def throughput_per_min(runs: Sequence[RunTiming]) -> float:
    """Finished runs per minute, from the first run queued to the last run ended."""
    if not runs:
        return math.nan
    span = _s(min(r.queued_at for r in runs), max(r.end for r in runs))
    return len(runs) / span * 60 if span > 0 else math.nan


def summarize(breakdowns: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Median and p95 of wall, task time and overhead; the mean of every part (means add
    up, medians do not)."""
    out: dict[str, float] = {"runs": float(len(breakdowns))}
    for key in ("wall", "task_time", "overhead"):
        values = [b[key] for b in breakdowns]
        out[f"{key}_median"] = statistics.median(values) if values else math.nan
        out[f"{key}_p95"] = percentile(values, 95)
    for key in (*PARTS, "unaccounted", *IN_TASK):
        values = [b[key] for b in breakdowns if not math.isnan(b[key])]
        out[f"{key}_mean"] = statistics.fmean(values) if values else math.nan
    return out


def parse_proc_stat(text: str) -> tuple[int, int, int, int]:
    """(ppid, pgid, own ticks, reaped children's ticks) from a /proc/<pid>/stat line."""
    # the command name is in parentheses and may itself hold spaces and parentheses
    rest = text[text.rindex(")") + 2 :].split()
    ppid, pgid = int(rest[1]), int(rest[2])
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return ppid, pgid, utime + stime, cutime + cstime


# --- the deployment under test ---------------------------------------------------------------


def write_sources(base: Path, n: int) -> None:
    for i in range(n):
        root = base / "data" / f"s{i:04d}"
        (root / "sub").mkdir(parents=True)
        for j in range(FILES_PER_SOURCE):
            path = root / ("sub" if j % 3 == 0 else "") / f"f{j:02d}.txt"
            path.write_text(f"row {i} {j}\n" * (20 + j * 10))


def backup_config(base: Path, n: int) -> str:
    lines = [
        "# written by bench/bench_scheduler.py",
        "dr: {notification_emails: [oncall@example.com]}",
        "encryption: {key_conn_id: backup_encryption}",
        f"staging_dir: {base}/staging",
        f"targets: {{{TARGET}: {{type: local, path: {base}/backups}}}}",
        "sources:",
        *(f"  src{i:04d}: {{type: files, paths: [{base}/data/s{i:04d}]}}" for i in range(n)),
        "schedules:",
        *(
            f"  - {{name: s{i:04d}, source: src{i:04d}, type: FULL, cron: '{CRON}', "
            f"targets: [{TARGET}], retention_days: 30}}"
            for i in range(n)
        ),
    ]
    return "\n".join(lines) + "\n"


BACKUP_DAG_FILE = '''"""airflow DAG file of bench/bench_scheduler.py: the backup DAGs of $BACKUP_CONFIG."""
from include.backup.factory import register_backup_dags

register_backup_dags(globals())
'''

NOOP_DAG_FILE = '''"""airflow DAG file of bench/bench_scheduler.py: the baseline, DAGs of the backup DAG's
shape whose tasks do nothing."""
from datetime import datetime, timezone

from airflow.sdk import DAG, task

N = {n}
TARGETS = [{target!r}]


def build(dag_id):
    with DAG(dag_id=dag_id, schedule={cron!r}, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
             catchup=False, max_active_runs=1, tags=["bench"]) as dag:

        @task(task_id="dump")
        def dump():
            return {{"backup_id": dag_id, "staging": "/nonexistent", "raw_size": 0}}

        @task(task_id="encrypt")
        def encrypt(meta):
            return meta

        @task(task_id="checksum")
        def checksum(meta):
            return meta

        @task(task_id="upload")
        def upload(meta, target_name):
            return {{"backup_id": meta["backup_id"], "target": target_name}}

        @task(task_id="verify")
        def verify(meta, target_name):
            return {{"backup_id": meta["backup_id"], "target": target_name, "ok": True}}

        @task(task_id="cleanup")
        def cleanup(meta):
            return {{"backup_id": meta["backup_id"], "deleted": {{}}}}

        meta = checksum(encrypt(dump()))
        uploaded = upload.partial(meta=meta).expand(target_name=TARGETS)
        verified = verify.partial(meta=meta).expand(target_name=TARGETS)
        uploaded >> verified
        verified >> cleanup(meta)
    return dag


for _i in range(N):
    globals()[f"noop__s{{_i:04d}}"] = build(f"noop__s{{_i:04d}}")
'''


def dag_id(kind: str, i: int) -> str:
    return f"backup__s{i:04d}" if kind == "backup" else f"noop__s{i:04d}"


def prepare(base: Path, n: int) -> tuple[Path, dict[str, str]]:
    """The DAGs folder and the project's environment (config, key ring connection)."""
    from include.backup.keys import KeyRing

    write_sources(base, n)
    config = base / "backup_config.yaml"
    config.write_text(backup_config(base, n))
    dags = base / "dags"
    dags.mkdir()
    (dags / "backup_bench.py").write_text(BACKUP_DAG_FILE)
    (dags / "noop_bench.py").write_text(NOOP_DAG_FILE.format(n=n, target=TARGET, cron=CRON))
    KeyRing.generate(base / "keys.json", "bench-key-1")
    ring = json.loads((base / "keys.json").read_text())
    (base / "keys.json").unlink()  # the ring lives only in the connection, as in production
    env = {
        # Airflow's defaults for the intervals the e2e fixture shortens (1 s heartbeats,
        # re-parse every 5 s): a production-like load on the 2 cores, not a test's
        **PRODUCTION_INTERVALS,
        # Cron schedules never start a run on their own: runs come from the REST API only
        # (a catchup=False DAG would otherwise run its latest interval at once).
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # A task's calls to the API server time out after 5 s by default and the task fails
        # (the no-op DAGs have no retries): on 2 shared cores at load 10-15 the one API
        # worker was seen answering a warm-up task's start call later than that, 4 times.
        # Airflow's documented remedy under high load; printed with the settings.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        "BACKUP_CONFIG": str(config),
        "AIRFLOW_CONN_BACKUP_ENCRYPTION": json.dumps(KeyRing.from_json(ring).to_connection()),
    }
    return dags, env


# --- CPU accounting from /proc ------------------------------------------------------------


def _read_stat(pid: str) -> tuple[int, int, int, int] | None:
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # gone since the listing


def cpu_snapshot(
    groups: Mapping[str, int], scheduler_pid: int, postmaster_pid: int | None
) -> dict[str, float]:
    """Cumulative CPU seconds per component, and the machine's busy seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = defaultdict(float)
    by_pgid = {pgid: name for name, pgid in groups.items()}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = _read_stat(pid)
        if stat is None:
            continue
        ppid, pgid, own, children = stat
        if int(pid) == scheduler_pid:
            out["scheduler"] += (own + children) / tick
        elif pgid == groups.get("scheduler"):
            # LocalExecutor workers: their own time is the task supervisor; the task
            # processes they fork and reap land in their children's time
            out["task supervisors"] += own / tick
            out["task processes"] += children / tick
        elif pgid in by_pgid:
            # Celery workers: the pool processes and the task processes they fork, reaped
            # inside the group, so the group's sum is the worker's whole cost
            out[by_pgid[pgid]] += (own + children) / tick
        elif postmaster_pid is not None and postmaster_pid in (int(pid), ppid):
            out["postgres"] += (own + children) / tick
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    out["machine"] = (user + nice + system + irq + softirq + steal) / tick
    self_times = os.times()
    out["bench driver"] = self_times.user + self_times.system
    return dict(out)


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}
    ours = sum(v for k, v in delta.items() if k != "machine")
    delta["rest of the machine"] = max(0.0, delta.pop("machine", 0.0) - ours)
    return delta


# --- one round ------------------------------------------------------------------------------


@dataclass
class Round:
    kind: str
    n: int
    runs: list[RunTiming]
    cpu: dict[str, float]
    seconds: float


def _trigger(api: Any, dag: str, run_id: str) -> None:
    r = api.post(f"/dags/{dag}/dagRuns", json={"dag_run_id": run_id, "logical_date": None})
    if r.status_code != 200:
        raise RuntimeError(f"triggering {dag} failed: HTTP {r.status_code} {r.text[:500]}")


def _runs_with_prefix(api: Any, prefix: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    while True:
        r = api.get(
            "/dags/~/dagRuns",
            params={"run_id_prefix_pattern": prefix, "limit": 100, "offset": len(runs), "order_by": "id"},
        )
        r.raise_for_status()
        page = r.json()["dag_runs"]
        runs.extend(page)
        if len(page) < 100:
            return runs


def _task_log_events(api: Any, run: Mapping[str, Any], ti: Mapping[str, Any]) -> list[dict[str, Any]]:
    r = api.get(
        f"/dags/{run['dag_id']}/dagRuns/{run['dag_run_id']}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}",
        params={"map_index": ti["map_index"], "full_content": True},
        headers={"Accept": "application/json"},
    )
    if r.status_code != 200:
        return []
    content = r.json().get("content")
    return [c for c in content if isinstance(c, dict)] if isinstance(content, list) else []


def _collect(api: Any, run: Mapping[str, Any], with_logs: bool) -> RunTiming:
    r = api.get(f"/dags/{run['dag_id']}/dagRuns/{run['dag_run_id']}/taskInstances", params={"limit": 100})
    r.raise_for_status()
    tasks = []
    for ti in r.json()["task_instances"]:
        marks = None
        if with_logs and ti["start_date"] and ti["end_date"]:
            events = _task_log_events(api, run, ti)
            marks = log_marks(events, parse_ts(ti["start_date"]), parse_ts(ti["end_date"]))  # type: ignore[arg-type]
        tasks.append(task_from_api(ti, marks))
    return run_from_api(run, tasks)


def measure_round(
    stack: Any, api: Any, kind: str, n: int, label: str, *, timeout: float, with_logs: bool
) -> Round:
    groups = {c: p.pid for c, p in stack.procs.items()}  # each component leads its own group
    postmaster = _postmaster_pid(stack)
    prefix = f"bench-{label}-"
    dags = [dag_id(kind, i) for i in range(n)]
    cpu0 = cpu_snapshot(groups, groups["scheduler"], postmaster)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(8, n)) as pool:  # all N as close together as we can
        list(pool.map(lambda d: _trigger(api, d, f"{prefix}{d}"), dags))
    while True:
        runs = _runs_with_prefix(api, prefix)
        if len(runs) == n and all(r["state"] in DONE_STATES for r in runs):
            break
        if time.monotonic() - t0 > timeout:
            states = Counter(r["state"] for r in runs)
            raise RuntimeError(
                f"round {label}: not finished after {timeout:.0f} s ({dict(states)}); raise --timeout"
            )
        time.sleep(POLL_S)
    seconds = time.monotonic() - t0
    cpu = cpu_delta(cpu0, cpu_snapshot(groups, groups["scheduler"], postmaster))
    failed = [r for r in runs if r["state"] != "success"]
    if failed:
        # the Airflow home is a temporary directory, gone once the exception leaves
        raise RuntimeError(
            f"round {label}: {len(failed)} of {n} runs failed (first: {failed[0]['dag_id']} "
            f"{failed[0]['dag_run_id']}):\n{failure_detail(stack.home / 'logs', failed[0])}"
        )
    with ThreadPoolExecutor(max_workers=4) as pool:
        timings = list(pool.map(lambda r: _collect(api, r, with_logs), runs))
    return Round(kind, n, timings, cpu, seconds)


def failure_detail(logs: Path, run: Mapping[str, Any], lines: int = 8) -> str:
    """The last events of each task log of a failed run (every try)."""
    run_dir = logs / f"dag_id={run['dag_id']}" / f"run_id={run['dag_run_id']}"
    out = []
    for path in sorted(run_dir.rglob("*.log")):
        events = []
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            try:
                ev = json.loads(line)
                text = f"{ev.get('level', '')} {ev.get('event', '')} {ev.get('error_detail', '')}"
                events.append(f"  {text[:600]}")
            except (ValueError, AttributeError):
                events.append(f"  {line[:600]}")
        out.append(f"--- {path.relative_to(run_dir)}\n" + "\n".join(events))
    return "\n".join(out) or f"(no task log under {run_dir})"


def _postmaster_pid(stack: Any) -> int | None:
    try:
        return int((stack.metadata_db.data_dir / "postmaster.pid").read_text().split()[0])
    except (AttributeError, OSError, ValueError, IndexError):
        return None


# --- report ---------------------------------------------------------------------------------


def _fmt(v: float, digits: int = 2) -> str:
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def report(rounds: Sequence[Round], settings: Mapping[str, str], args: argparse.Namespace) -> dict[str, Any]:
    grouped: dict[tuple[str, int], list[Round]] = defaultdict(list)
    for rnd in rounds:
        grouped[(rnd.kind, rnd.n)].append(rnd)
    results: dict[str, Any] = {}
    print()
    print(
        f"{'what':<12} {'rounds':>6} {'runs':>5} {'wall med/p95 s':>16} {'tasks med s':>11} "
        f"{'overhead med/p95 s':>19} {'runs/min':>9}"
    )
    for (kind, n), rs in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0] != "noop")):
        s: dict[str, Any] = summarize([run_breakdown(r) for rnd in rs for r in rnd.runs])
        s["runs_per_min"] = statistics.median(throughput_per_min(rnd.runs) for rnd in rs)
        cpu: dict[str, float] = defaultdict(float)
        for rnd in rs:
            for k, v in rnd.cpu.items():
                cpu[k] += v / (rnd.n * len(rs))
        s["cpu_per_run"] = dict(cpu)
        results[f"{kind}_n{n}"] = s
        print(
            f"{kind + ' N=' + str(n):<12} {len(rs):>6} {int(s['runs']):>5} "
            f"{_fmt(s['wall_median']) + ' / ' + _fmt(s['wall_p95']):>16} "
            f"{_fmt(s['task_time_median']):>11} "
            f"{_fmt(s['overhead_median']) + ' / ' + _fmt(s['overhead_p95']):>19} "
            f"{_fmt(s['runs_per_min'], 1):>9}"
        )
    keys = list(results)
    head = f"{'':<28}" + "".join(f"{k:>12}" for k in keys)
    print("\nwhere the time goes (mean seconds per run)")
    print(head)
    labels = {
        "run_queued_to_running": "run queued → running",
        "ready_to_scheduled": "upstream done → scheduled",
        "scheduled_to_queued": "scheduled → queued",
        "queued_to_start": "queued → task start",
        "tail": "last task → run end",
        "unaccounted": "(unaccounted)",
        "startup": "in tasks: start-up",
        "parse": "  of which DAG file parse",
        "work": "in tasks: the task's code",
        "finish": "in tasks: XCom push, finish",
    }
    for part, label in labels.items():
        print(f"{label:<28}" + "".join(f"{_fmt(results[k][part + '_mean']):>12}" for k in keys))
    print("\nCPU seconds per run by process group (2 shared cores; task processes via their supervisors)")
    print(head)
    comps = sorted({c for s in results.values() for c in s["cpu_per_run"]})
    comps.sort(key=lambda c: c == "rest of the machine")  # the noise last
    for comp in comps:
        print(f"{comp:<28}" + "".join(f"{_fmt(results[k]['cpu_per_run'].get(comp, 0.0)):>12}" for k in keys))
    print()
    ratios = _ratios(results, args.runs)
    for name, value in ratios.items():
        print(f"{name}: {_fmt(value)}")
    line = {
        "bench": "scheduler",
        "settings": dict(settings),
        "cores": os.cpu_count(),
        "schedules": max(args.runs),
        "results": results,
        "ratios": ratios,
    }
    print(json.dumps(_no_nan(line), sort_keys=True))
    return line


def _no_nan(value: Any) -> Any:
    """NaN (a part that could not be measured) as null: valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    return value


def _ratios(results: Mapping[str, Mapping[str, Any]], ns: Sequence[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    lo, hi = min(ns), max(ns)

    def get(kind: str, n: int, key: str) -> float:
        return float(results.get(f"{kind}_n{n}", {}).get(key, math.nan))

    for n in sorted(set(ns)):
        out[f"backup/noop overhead, N={n}"] = (
            get("backup", n, "overhead_median") / get("noop", n, "overhead_median")
        )
        out[f"backup/noop wall, N={n}"] = get("backup", n, "wall_median") / get("noop", n, "wall_median")
    if hi != lo:
        for kind in KINDS:
            out[f"{kind} overhead N={hi} / N={lo}"] = (
                get(kind, hi, "overhead_median") / get(kind, lo, "overhead_median")
            )
    return out


# --- main -----------------------------------------------------------------------------------


def compare_executors(local: Mapping[str, Any], celery: Mapping[str, Any]) -> dict[str, float]:
    """celery / local ratios of runs per minute and median overhead per run, per kind and N."""
    out: dict[str, float] = {}
    for key in sorted(set(local["results"]) & set(celery["results"])):
        lo, ce = local["results"][key], celery["results"][key]
        for metric in ("runs_per_min", "overhead_median", "wall_median"):
            a, b = float(lo.get(metric, math.nan)), float(ce.get(metric, math.nan))
            out[f"celery/local {metric} {key}"] = b / a if a else math.nan
    return out


def measure_stack(
    args: argparse.Namespace, base: Path, dags: Path, env: dict[str, str], executor: str
) -> dict[str, Any]:
    """Start one deployment, run every round on it, stop it; the report line."""
    from include.backup.testing.airflow_stack import AirflowStack

    n_max = max(args.runs)
    t = time.perf_counter()
    home = base / executor
    home.mkdir()
    # each deployment starts from empty staging and targets
    env = {**env, "BACKUP_CONFIG": str(base / f"backup_config-{executor}.yaml")}
    Path(env["BACKUP_CONFIG"]).write_text(
        backup_config(base, n_max)
        .replace(f"{base}/staging", f"{home}/staging")
        .replace(f"{base}/backups", f"{home}/backups")
    )
    with AirflowStack(
        home, dags, env,
        parallelism=args.parallelism,
        max_active_tasks_per_dag=args.max_active_tasks_per_dag,
        executor=executor,
        celery_workers=args.workers,
        start_timeout_s=args.start_timeout,
    ) as stack:
        settings = stack.settings()
        print(f"\n=== {executor}:", ", ".join(f"{k}={v}" for k, v in settings.items()),
              f"| max_active_runs=1 per DAG | {os.cpu_count()} cores, shared with other work")
        dag_ids = {dag_id(k, i) for k in args.kinds for i in range(n_max)}
        stack.wait_for_dags(dag_ids, timeout=600)
        print(f"stack up and {len(dag_ids)} DAGs parsed in {time.perf_counter() - t:.0f} s", flush=True)
        rounds: list[Round] = []
        with stack.client(timeout=120) as api:
            for kind in args.kinds:  # warm-up: first imports in the executor workers, first API calls
                measure_round(stack, api, kind, 1, f"warm-{kind}", timeout=args.timeout, with_logs=False)
            count = 0
            for n in args.runs:
                for _ in range(args.repeat if n == 1 else args.repeat_many):
                    for kind in args.kinds:
                        count += 1
                        rnd = measure_round(
                            stack, api, kind, n, f"{count:03d}", timeout=args.timeout,
                            with_logs=not args.no_task_logs,
                        )
                        rounds.append(rnd)
                        busy = rnd.cpu["rest of the machine"]
                        print(f"round {count}: {kind} N={n} in {rnd.seconds:.1f} s "
                              f"(rest of the machine busy {busy:.0f} CPU-s)", flush=True)
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for out in stack.home.glob("*.out"):
                shutil.copy(out, args.keep_logs / f"{executor}-{out.name}")
    if args.raw:
        raw = args.raw
        if args.executor == "celery":
            raw = raw.with_name(f"{raw.stem}-{executor}{raw.suffix}")
        raw.write_text(json.dumps([dataclasses.asdict(r) for r in rounds], default=str, indent=1))
    return report(rounds, settings, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--runs", type=int, nargs="+", default=[1, 50], help="concurrent runs per round (default 1 50)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="rounds of each kind for N=1 (default 3)")
    ap.add_argument("--repeat-many", type=int, default=1, help="rounds of each kind for N>1 (default 1)")
    ap.add_argument("--parallelism", type=int, default=8, help="[core] parallelism (default 8)")
    ap.add_argument("--max-active-tasks-per-dag", type=int, default=16, help="(default 16, Airflow's)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per round before giving up")
    ap.add_argument("--no-task-logs", action="store_true", help="skip the in-task split (fewer API calls)")
    ap.add_argument("--raw", type=Path, help="write every run's and task's timestamps to this JSON file")
    ap.add_argument("--keep-logs", type=Path, help="copy the components' output (*.out) to this directory")
    ap.add_argument("--executor", choices=("local", "celery"), default="local",
                    help="celery: LocalExecutor then CeleryExecutor with the same total parallelism")
    ap.add_argument("--workers", type=int, default=2, help="Celery workers (--executor celery; default 2)")
    ap.add_argument("--start-timeout", type=float, default=600, help="seconds for the stack to be healthy")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                    help="what to run: noop (Airflow's own cost) and/or backup (default both)")
    args = ap.parse_args()
    if min(args.runs) < 1 or max(args.runs) > 500:
        ap.error("--runs: each N must be between 1 and 500")
    if args.workers < 1 or args.parallelism % args.workers:
        ap.error("--workers must be at least 1 and divide --parallelism (the same total slots)")
    n_max = max(args.runs)
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as tmp:
        base = Path(tmp)
        dags, env = prepare(base, n_max)
        if args.executor == "local":
            measure_stack(args, base, dags, env, "LocalExecutor")
            return
        local = measure_stack(args, base, dags, env, "LocalExecutor")
        celery = measure_stack(args, base, dags, env, "CeleryExecutor")
        ratios = compare_executors(local, celery)
        print("\n=== CeleryExecutor vs LocalExecutor, same total parallelism, same run")
        for name, value in ratios.items():
            print(f"{name}: {_fmt(value)}")
        print(json.dumps(_no_nan({"bench": "scheduler-executors", "workers": args.workers,
                                  "parallelism": args.parallelism, "ratios": ratios}), sort_keys=True))


if __name__ == "__main__":
    main()

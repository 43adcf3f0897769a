"""What a task process pays to find its task: parsing dags/backup_dags.py for one backup DAG
under Airflow's parsing context (run on demand).

    python bench/bench_task_start.py [--schedules 30] [--repeat 5]

Every task of a backup run (dump, encrypt, checksum, upload, verify, cleanup) starts a
process that imports the DAG file again and builds its own DAG. Measured here, in fresh
interpreters with Airflow already imported (as in a worker's forked task process), with
bytecode cached after an untimed warm-up:

- ``dump``: a task of the run that declares no asset (the common case);
- ``cleanup``: the task that declares the source's asset ``backup://<source>`` and emits
  its event; building that ``Asset`` loads every installed provider's asset URI handlers
  (and with them the S3 and GCS hooks);
- baseline, in the same run: the same parse of an empty schedule list (the package's own
  imports and the config read, no DAG built).

The ratios against the baseline are the figures to compare between versions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "dags" / "backup_dags.py"

CHILD = """
import runpy, sys, time
import airflow.sdk, airflow.sdk.execution_time.task_runner  # a forked task process has these
t = time.perf_counter()
runpy.run_path(sys.argv[1])
print("RESULT", time.perf_counter() - t)
"""


def write_config(path: Path, n: int) -> None:
    lines = [
        "targets:",
        "  local: {type: local, path: /tmp/bench-backups}",
        "sources:",
        "  files: {type: files, paths: [/data]}",
        "schedules:" + ("" if n else " []"),
    ]
    lines += [
        f"  - {{name: s{i:03d}, source: files, type: FULL, cron: '{i % 60} * * * *', targets: [local]}}"
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")


def parse_once(config: Path, dag_id: str | None, task_id: str | None, pycache: Path) -> float:
    env = {
        **os.environ,
        "BACKUP_CONFIG": str(config),
        "PYTHONPYCACHEPREFIX": str(pycache),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for key, value in (
        ("_AIRFLOW_PARSING_CONTEXT_DAG_ID", dag_id),
        ("_AIRFLOW_PARSING_CONTEXT_TASK_ID", task_id),
    ):
        env.pop(key, None)
        if value is not None:
            env[key] = value
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(DAG_FILE)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [line] = [x for x in out.splitlines() if x.startswith("RESULT")]
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-task-start-") as tmp:
        work = Path(tmp)
        full, empty = work / "full.yaml", work / "empty.yaml"
        write_config(full, args.schedules)
        write_config(empty, 0)
        cases = {
            "baseline (no DAG built)": (empty, "backup__s000", "dump"),
            "dump task (no asset)": (full, "backup__s000", "dump"),
            "cleanup task (declares the asset)": (full, "backup__s000", "cleanup"),
        }
        parse_once(full, None, None, work / "pycache")  # warm-up: bytecode written
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):  # interleaved, so a busy moment hits every case
            for name, (config, dag_id, task_id) in cases.items():
                times[name].append(parse_once(config, dag_id, task_id, work / "pycache"))
    base = statistics.median(times["baseline (no DAG built)"])
    print(
        f"parse of dags/backup_dags.py in a task process, {args.schedules} schedules, {args.repeat} runs each"
    )
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:36s} median {med:6.3f} s  best {min(values):6.3f} s  ×{med / base:5.2f} baseline")


if __name__ == "__main__":
    main()

"""The backup DAGs on the CeleryExecutor: a real Redis broker (Debian's redis-server on
127.0.0.1), two real Celery workers (``airflow celery worker --celery-hostname workerN@%h``)
sharing one staging directory, the metadata DB as result backend, and the rest of a real
Airflow 3 deployment (:class:`AirflowStack`), driven through the official REST client.

- one backup run whose tasks ran on both workers (task instance ``hostname``), restored and
  compared with its source;
- 30 schedules (15 sources, a FULL and an INCREMENTAL each) triggered at once: every run
  succeeds, every backup deep-verifies and restores to its own source, every parent of an
  incremental is a good backup of the same source;
- Redis stopped for 20 s in the middle of a run, then started again: the run completes (or
  fails and its cleared tasks complete), and every manifest at every target verifies;
- a worker lost (SIGKILL of the worker and of its task) in the middle of ``dump`` of a
  96 MiB source: Airflow finds the task's heartbeat gone and retries it on the other worker,
  the run succeeds, one manifest per target, nothing else at the targets, no plaintext in
  staging. The dump is held at the ``dump.mid-write`` fault point (include/backup/faults.py,
  ``pause``) so the kill lands mid-dump without timing luck.

One deployment for the module (a stack takes about a minute to start); the tests run in
file order and the last one restarts the workers it took away.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from airflow_client.client import (
    ApiClient,
    ClearTaskInstancesBody,
    DagRunApi,
    TaskInstanceApi,
    TriggerDAGRunPostBody,
)

from include.backup import faults, tasks
from include.backup.catalog.catalog import list_backups, scan_backups
from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME, Manifest
from include.backup.config.loader import load_config
from include.backup.config.schema import BackupConfig
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.sources.files.index import tree_digest
from include.backup.staging import PLAINTEXT_NAMES
from include.backup.targets import build_target
from include.backup.testing.airflow_stack import AirflowStack, AirflowStackError, kill_process_group
from tests.e2e.conftest import E2E_AIRFLOW_SETTINGS
from tests.integration.smtp_service import SmtpServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
RUN_TIMEOUT_S = 900.0  # a ceiling for polling, not a timed assertion
MANY_TIMEOUT_S = 1800.0
"""The ceiling for the 30 runs (180 task processes): on 2 shared cores at load 15-20 they
took over 10 minutes."""
TARGETS = ("local", "offsite")
BASIC = "basic"
BIG = "big"
OUTAGE = "outage"
MANY = [f"many_{i:02d}" for i in range(15)]
MANY_SCHEDULES = [f"{s}_{kind}" for s in MANY for kind in ("full", "incr")]
REDIS_DOWN_S = 20
CELERY_SETTINGS = {
    **E2E_AIRFLOW_SETTINGS,
    # A lost worker's task stops heartbeating: failed (and retried) after 60 s, not 300.
    # Not less: on 2 cores at load 15 a healthy task's calls to the API server were seen
    # timing out for 30 s, and a healthy task taken for lost would be killed and retried.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    # A task message lost with the broker is re-sent after 2 minutes, not 10.
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
    # A task's calls to the API server: 30 s before a timeout, not 5 (Airflow's remedy under
    # high load): at load 15 a dump's start call timed out 4 times and the try failed.
    "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
    "BACKUP_DEADLINE_ALERTS": "off",
}


@dataclass
class CeleryDeployment:
    stack: AirflowStack
    base: Path
    config: BackupConfig
    keys: KeyRing

    @property
    def staging(self) -> Path:
        return self.base / "staging"

    def source_dir(self, source: str) -> Path:
        return self.base / "data" / source


def write_tree(root: Path, seed: str, files: int = 12) -> None:
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:02d}.txt").write_text(f"{seed} line {i}\n" * (50 + 7 * i))
    (root / "sub" / "résumé ✓.txt").write_text(f"{seed}: a non-ASCII name\n")
    (root / "sub" / "random.bin").write_bytes(os.urandom(20_000))


def write_random(root: Path, files: int, size: int) -> None:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"part-{i}.bin").write_bytes(os.urandom(size))


def config_yaml(base: Path) -> str:
    data = base / "data"
    sources = [BASIC, BIG, OUTAGE, *MANY]
    lines = [
        f"staging_dir: {base}/staging",
        "targets:",
        f"  local: {{type: local, path: {base}/backups}}",
        f"  offsite: {{type: local, path: {base}/offsite, offsite: true}}",
        "sources:",
        *[f"  {s}: {{type: files, paths: [{data / s}]}}" for s in sources],
        "schedules:",
        *[
            f'  - {{name: {s}, source: {s}, type: FULL, cron: "0 1 * * *", targets: [local, offsite]}}'
            for s in (BASIC, BIG, OUTAGE)
        ],
        *[
            f'  - {{name: {s}_{kind}, source: {s}, type: {kind_type}, cron: "0 2 * * *", targets: [local]}}'
            for s in MANY
            for kind, kind_type in (("full", "FULL"), ("incr", "INCREMENTAL"))
        ],
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def celery(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpServer) -> Iterator[CeleryDeployment]:
    base = tmp_path_factory.mktemp("celery")
    data = base / "data"
    write_tree(data / BASIC, "basic")
    write_random(data / BIG, files=6, size=16 * MiB)  # the dump pauses after the first file
    write_random(data / OUTAGE, files=4, size=8 * MiB)
    for s in MANY:
        write_tree(data / s, s, files=4)
    (base / "faults").mkdir()
    KeyRing.generate(base / "keys.json", "celery-key-1")
    config_path = base / "backup_config.yaml"
    config_path.write_text(config_yaml(base))
    env = {
        **CELERY_SETTINGS,
        "BACKUP_CONFIG": str(config_path),
        "BACKUP_KEY_FILE": str(base / "keys.json"),
        "BACKUP_ALERTS_STATE_DIR": str(base),
        "AIRFLOW_CONN_SMTP_DEFAULT": os.environ["AIRFLOW_CONN_SMTP_DEFAULT"],
    }
    stack = AirflowStack(base, ROOT / "dags", env, executor="CeleryExecutor", celery_workers=2, parallelism=8)
    try:
        stack.start()
        stack.wait_for_dags({f"backup__{s}" for s in (BASIC, BIG, OUTAGE, *MANY_SCHEDULES)}, timeout=300)
    except AirflowStackError as e:
        stack.stop()
        pytest.fail(str(e))
    try:
        yield CeleryDeployment(
            stack, base, load_config(config_path).config, KeyRing.from_file(base / "keys.json")
        )
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def api(celery: CeleryDeployment) -> Iterator[ApiClient]:
    with celery.stack.api_client() as client:
        yield client


# --- Airflow through the typed client ------------------------------------------------------


def trigger(api: ApiClient, schedule: str) -> str:
    body = TriggerDAGRunPostBody(logical_date=None, conf={})
    return str(DagRunApi(api).trigger_dag_run(f"backup__{schedule}", body).dag_run_id)


def run_state(api: ApiClient, schedule: str, run_id: str) -> str:
    return str(DagRunApi(api).get_dag_run(dag_id=f"backup__{schedule}", dag_run_id=run_id).state.value)


def wait_runs(api: ApiClient, runs: dict[str, str], ceiling: float = RUN_TIMEOUT_S) -> dict[str, str]:
    """{schedule: run id} → {schedule: final state} ("success"/"failed", or the state the
    run was still in at the ceiling)."""
    deadline = time.monotonic() + ceiling
    states = {s: "" for s in runs}
    while time.monotonic() < deadline:
        for s, run_id in runs.items():
            if states[s] not in ("success", "failed"):
                states[s] = run_state(api, s, run_id)
        if all(v in ("success", "failed") for v in states.values()):
            break
        time.sleep(2)
    return states


def task_instances(api: ApiClient, schedule: str, run_id: str) -> list[Any]:
    return list(
        TaskInstanceApi(api)
        .get_task_instances(dag_id=f"backup__{schedule}", dag_run_id=run_id)
        .task_instances
    )


def describe(api: ApiClient, schedule: str, run_id: str) -> str:
    """Each task's state and hostname, for an assertion message."""
    return ", ".join(
        f"{t.task_id}[{t.map_index}]={t.state.value if t.state else None}@{t.hostname}"
        for t in task_instances(api, schedule, run_id)
    )


def wait_task_state(api: ApiClient, schedule: str, run_id: str, task_id: str, states: set[str]) -> str:
    """Poll until the task is in one of ``states``; that state."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        ti = TaskInstanceApi(api).get_task_instance(
            dag_id=f"backup__{schedule}", dag_run_id=run_id, task_id=task_id
        )
        if ti.state is not None and ti.state.value in states:
            return str(ti.state.value)
        time.sleep(0.5)
    pytest.fail(f"{task_id} of {run_id} never reached {states}: {describe(api, schedule, run_id)}")


# --- what the targets and staging hold -----------------------------------------------------


def backup_of_run(celery: CeleryDeployment, target: str, source: str, run_id: str) -> list[Manifest]:
    built = build_target(target, celery.config.targets[target])
    return [m for m in list_backups(built, source) if m.dag_run_id == run_id]


def restored_digest(celery: CeleryDeployment, manifest: Manifest, target: str) -> Any:
    into = celery.base / "restores" / uuid.uuid4().hex[:8]
    restore_backup(celery.config, manifest.backup_id, str(into), keys=celery.keys, target_name=target)
    return tree_digest(into / str(celery.source_dir(manifest.source)).lstrip("/"))


def bad_backups(celery: CeleryDeployment) -> list[str]:
    """Every manifest at every target that does not read, or whose backup does not deep
    verify (decrypted and decompressed to the end), or whose parent is not a good backup of
    its source: what would look good and be wrong."""
    out: list[str] = []
    for name in TARGETS:
        target = build_target(name, celery.config.targets[name])
        scan = scan_backups(target)
        out += [f"{name}: {p}" for p in scan.problems]
        ids = {(m.source, m.backup_id) for m in scan.backups}
        for m in scan.backups:
            issues = tasks.deep_verify(celery.config, target, m, celery.keys)
            out += [f"{name}: {m.source}/{m.backup_id}: {i}" for i in issues]
            if m.parent_id and (m.source, m.parent_id) not in ids:
                out.append(f"{name}: {m.source}/{m.backup_id}: parent {m.parent_id} is not at the target")
    return out


def leftovers(celery: CeleryDeployment) -> list[str]:
    """Files at the targets other than the listed backups' payloads and manifests and the
    catalog index ('_' folders): temp files, payloads without a manifest, partial writes."""
    out: list[str] = []
    for name in TARGETS:
        target = build_target(name, celery.config.targets[name])
        held = {(m.source, m.backup_id) for m in list_backups(target)}
        root = celery.base / ("backups" if name == "local" else "offsite")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            parts = path.relative_to(root).parts
            if any(p.startswith("_") for p in parts):
                continue
            if len(parts) == 3 and (parts[0], parts[1]) in held and parts[2] in (PAYLOAD_NAME, MANIFEST_NAME):
                continue
            out.append(f"{name}: {'/'.join(parts)}")
    return out


def plaintext(celery: CeleryDeployment) -> list[str]:
    return sorted(str(p) for n in PLAINTEXT_NAMES for p in celery.staging.rglob(n))


# --- the tests ---------------------------------------------------------------------------


def test_one_run_spreads_over_both_workers_and_restores(celery: CeleryDeployment, api: ApiClient) -> None:
    # Which worker takes a task is the broker's choice (each idle worker blocks on the queue
    # and Redis serves the one that waited longest), so one run of 8 tasks lands on both
    # workers almost always (all on one: 1 in 128); a second run makes a flake 1 in 16,000.
    hosts: set[str] = set()
    run_id = ""
    for _ in range(2):
        run_id = trigger(api, BASIC)
        assert wait_runs(api, {BASIC: run_id}) == {BASIC: "success"}, describe(api, BASIC, run_id)
        tis = task_instances(api, BASIC, run_id)
        assert len(tis) == 8, describe(
            api, BASIC, run_id
        )  # dump, encrypt, checksum, 2 uploads, 2 verifies, cleanup
        hosts = {str(t.hostname) for t in tis}
        if len(hosts) >= 2:
            break
    assert len(hosts) == 2, describe(api, BASIC, run_id)
    assert {h.split("@", 1)[0] for h in hosts} == {"worker1", "worker2"}, hosts
    source = tree_digest(celery.source_dir(BASIC))
    for target in TARGETS:
        [manifest] = backup_of_run(celery, target, BASIC, run_id)
        assert restored_digest(celery, manifest, target) == source
    assert plaintext(celery) == []


@pytest.mark.timeout(MANY_TIMEOUT_S + 600)
def test_thirty_schedules_at_once_over_two_workers(celery: CeleryDeployment, api: ApiClient) -> None:
    runs = {s: trigger(api, s) for s in MANY_SCHEDULES}
    states = wait_runs(api, runs, MANY_TIMEOUT_S)
    failed = {s: describe(api, s, runs[s]) for s, st in states.items() if st != "success"}
    assert failed == {}
    hosts = {
        str(t.hostname).split("@", 1)[0] for s in MANY_SCHEDULES[:6] for t in task_instances(api, s, runs[s])
    }
    assert hosts == {"worker1", "worker2"}
    for s, run_id in runs.items():
        source = s.rsplit("_", 1)[0]
        [manifest] = backup_of_run(celery, "local", source, run_id)
        # each backup (an incremental with its chain) restores to its own source's data
        assert restored_digest(celery, manifest, "local") == tree_digest(celery.source_dir(source)), s
    assert bad_backups(celery) == []
    assert leftovers(celery) == []
    assert plaintext(celery) == []


def test_redis_down_for_20_s_mid_run(celery: CeleryDeployment, api: ApiClient) -> None:
    redis = celery.stack.redis
    assert redis is not None
    run_id = trigger(api, OUTAGE)
    # the dump running, or just done (a poll may miss a short running state): either way
    # the rest of the run (encrypt … cleanup) is still to be sent through the broker
    wait_task_state(api, OUTAGE, run_id, "dump", {"running", "success"})
    redis.stop()
    try:
        time.sleep(REDIS_DOWN_S)  # the outage itself, not a wait for something
    finally:
        redis.start()  # same port: the scheduler and the workers reconnect
    state = wait_runs(api, {OUTAGE: run_id})[OUTAGE]
    if state == "failed":  # failed cleanly: its failed tasks, cleared, complete
        TaskInstanceApi(api).post_clear_task_instances(
            f"backup__{OUTAGE}", ClearTaskInstancesBody(dag_run_id=run_id, only_failed=True, dry_run=False)
        )
        state = wait_runs(api, {OUTAGE: run_id})[OUTAGE]
    assert state == "success", describe(api, OUTAGE, run_id)
    source = tree_digest(celery.source_dir(OUTAGE))
    for target in TARGETS:
        [manifest] = backup_of_run(celery, target, OUTAGE, run_id)
        assert restored_digest(celery, manifest, target) == source
    assert bad_backups(celery) == []
    assert leftovers(celery) == []
    assert plaintext(celery) == []


@pytest.mark.timeout(1500)
def test_worker_killed_mid_dump_is_retried_on_the_other_worker(
    celery: CeleryDeployment, api: ApiClient
) -> None:
    stack = celery.stack
    fault_dir = celery.base / "faults"
    flag = fault_dir / faults.pause_file("dump.mid-write").name
    # Only worker1 runs, with the dump held mid-write: the dump is worker1's.
    stack.stop_worker(2)
    stack.start_worker(1, {"BACKUP_FAULT": "dump.mid-write:pause", "BACKUP_FAULT_DIR": str(fault_dir)})
    try:
        run_id = trigger(api, BIG)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not flag.exists():
            assert time.monotonic() < deadline, describe(api, BIG, run_id)
            time.sleep(0.5)
        task_pid = int(flag.read_text())
        staged = [p for n in PLAINTEXT_NAMES for p in celery.staging.rglob(n)]
        assert staged, "the dump held mid-write has written nothing to staging yet"
        stack.start_worker(2)  # the survivor, without the fault
        # The machine of worker1 lost: the worker and its task (a process group of its own).
        stack.kill_worker(1)
        kill_process_group(task_pid)
        flag.unlink()
        state = wait_runs(api, {BIG: run_id})[BIG]
        assert state == "success", describe(api, BIG, run_id)
        tries = (
            TaskInstanceApi(api)
            .get_task_instance_tries(dag_id=f"backup__{BIG}", dag_run_id=run_id, task_id="dump")
            .task_instances
        )
        assert [(t.try_number, str(t.hostname).split("@")[0]) for t in tries] == [
            (1, "worker1"),
            (2, "worker2"),
        ], [(t.try_number, t.hostname, t.state) for t in tries]
        source = tree_digest(celery.source_dir(BIG))
        for target in TARGETS:
            [manifest] = backup_of_run(celery, target, BIG, run_id)  # exactly one
            assert restored_digest(celery, manifest, target) == source
        assert bad_backups(celery) == []
        assert leftovers(celery) == []
        assert plaintext(celery) == []
    finally:
        flag.unlink(missing_ok=True)
        stack.start_worker(1)  # both workers back, without the fault
        if stack.procs["celery-worker-2"].poll() is not None:
            stack.start_worker(2)
        shutil.rmtree(celery.base / "restores", ignore_errors=True)

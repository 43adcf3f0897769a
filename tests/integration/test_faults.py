"""Fault injection (issue 18): each step of a backup run killed at a named point in its own
process, as Airflow runs tasks, then retried as Airflow retries them (or not retried, and
a later run taken); and the target, the source and the staging disk taken away mid-run.

The points are the BACKUP_FAULT hook's (include/backup/faults.py, docs/faults.md): no
timing luck. A faulted step runs as a subprocess calling the ``run_*`` wrapper the DAG's
task calls (a fresh interpreter, the XCom dict in as JSON, the result out as JSON); the
steps around it run in this process (between tasks everything is on disk or in XCom).

After a retried run: the run's backup is at each target exactly once, verified, deep
verified, and restores to the source's data; the backup another schedule made before is
still good; staging holds no plaintext. Without a retry: a later run succeeds, and once
the killed run's staging is stale and the orphan sweep's grace has passed, the targets
hold only good backups and nothing else, and staging no plaintext. What each case leaves
at the targets before the sweep is recorded in the matrix printed at the end.

Sources: files (every point), PostgreSQL logical and MongoDB (a representative subset:
the kill of a whole matrix is the same code for every source). Servers: the session's
moto S3 (behind a TcpProxy this module can take down), PostgreSQL and SecantusDB; one
PostgreSQL of its own for the source-down case; a real 2 MiB tmpfs for the full disk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup import faults, tasks
from include.backup.catalog.catalog import list_backups
from include.backup.catalog.manifest import MANIFEST_NAME, PAYLOAD_NAME, utcnow
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.schedule_retention import sweep_source
from include.backup.settings import ORPHAN_GRACE_HOURS, staging_root
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.staging import PLAINTEXT_NAMES, sweep_plaintext
from include.backup.targets import build_target
from include.backup.testing import PgCluster, db_fingerprint, run_backup
from tests.integration.mongo_service import MONGO_CONN_ID
from tests.integration.services import S3Service, TcpProxy, unique

pytestmark = pytest.mark.integration

SOURCE = "src"
S3_CONN = "faults_s3"
PG_CONN = "faults_pg"
ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

# A task of the backup DAG: the run_* wrapper, in a process of its own.
RUNNER = textwrap.dedent("""
    import json, sys
    from datetime import datetime
    from include.backup import faults, tasks
    step, args = sys.argv[1], json.loads(sys.argv[2])
    if step == "dump":
        out = tasks.run_dump(args["schedule"], args["run_id"], datetime.fromisoformat(args["when"]))
    elif step in ("encrypt", "checksum"):
        out = getattr(tasks, "run_" + step)(args["meta"])
    elif step in ("upload", "verify"):
        out = getattr(tasks, "run_" + step)(args["meta"], args["target"])
    else:
        out = tasks.run_cleanup(args["meta"], args["schedule"])
    print(json.dumps(out, default=str))
""")


# --- the sources -------------------------------------------------------------------------


class Kind:
    """A source kind on fresh data: its config, its data now, a restore of it."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path, mp: pytest.MonkeyPatch, big: bool) -> None:
        self.request, self.tmp, self.mp, self.big = request, tmp, mp, big

    def source_yaml(self) -> str:
        raise NotImplementedError

    def snapshot(self) -> Any:
        raise NotImplementedError

    def restored(self, backup_id: str, target: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FilesKind(Kind):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.data = self.tmp / "data"
        (self.data / "sub").mkdir(parents=True)
        (self.data / "a.txt").write_text("alpha\n" * 2000)
        (self.data / "sub" / "b.bin").write_bytes(os.urandom(100_000))
        if self.big:  # past S3's part size: the upload is a multipart one
            (self.data / "big.bin").write_bytes(os.urandom(9 * MiB))

    def source_yaml(self) -> str:
        return f"{{type: files, paths: [{self.data}]}}"

    def snapshot(self) -> Any:
        return tree_digest(self.data)

    def restored(self, backup_id: str, target: str) -> Any:
        into = self.tmp / f"restored-{uuid.uuid4().hex[:6]}"
        restore_backup(load_config().config, backup_id, str(into), keys=_keys(self.tmp), target_name=target)
        return tree_digest(into / str(self.data).lstrip("/"))


class PostgresKind(Kind):
    fixture = "pg_cluster"  # the session's server

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pg: PgCluster = self.request.getfixturevalue(self.fixture)
        self.db = f"faults_{uuid.uuid4().hex[:8]}"
        self.made = [self.db]
        self.pg.create_database(self.db)
        self.pg.psql(
            "CREATE TABLE items (id int PRIMARY KEY, note text);"
            "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 300) g;",
            db=self.db,
        )
        self.mp.setenv(f"AIRFLOW_CONN_{PG_CONN.upper()}", self.pg.uri(self.db))

    def source_yaml(self) -> str:
        return f"{{type: postgres, conn_id: {PG_CONN}}}"

    def snapshot(self) -> Any:
        return db_fingerprint(self.pg, self.db)

    def restored(self, backup_id: str, target: str) -> Any:
        into = f"faults_restored_{uuid.uuid4().hex[:8]}"
        self.made.append(into)
        restore_backup(load_config().config, backup_id, into, keys=_keys(self.tmp), target_name=target)
        return db_fingerprint(self.pg, into)

    def close(self) -> None:
        for db in self.made:
            self.pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


class MongoKind(Kind):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.client = self.request.getfixturevalue("mongo_server").client()
        self.db = f"faults_{uuid.uuid4().hex[:8]}"
        self.made = [self.db]
        self.client[self.db].items.insert_many([{"_id": i, "note": f"row {i}"} for i in range(300)])

    def source_yaml(self) -> str:
        return f"{{type: mongo, conn_id: {MONGO_CONN_ID}, database: {self.db}}}"

    def _read(self, db: str) -> dict[str, list[dict[str, Any]]]:
        names = [n for n in self.client[db].list_collection_names() if not n.startswith("system.")]
        return {n: sorted(self.client[db][n].find(), key=lambda d: str(d["_id"])) for n in names}

    def snapshot(self) -> Any:
        return self._read(self.db)

    def restored(self, backup_id: str, target: str) -> Any:
        into = f"faults_restored_{uuid.uuid4().hex[:8]}"
        self.made.append(into)
        restore_backup(load_config().config, backup_id, into, keys=_keys(self.tmp), target_name=target)
        return self._read(into)

    def close(self) -> None:
        for db in self.made:
            self.client.drop_database(db)
        self.client.close()


KINDS: dict[str, type[Kind]] = {"files": FilesKind, "postgres": PostgresKind, "mongo": MongoKind}


def _keys(tmp: Path) -> KeyRing:
    return KeyRing.from_file(tmp / "keys.json")


# --- servers and the config ----------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_proxy(moto_server: S3Service) -> Iterator[TcpProxy]:
    """moto's S3 behind a proxy: ``down()`` is the endpoint gone, its objects kept."""
    proxy = TcpProxy(moto_server.port).up()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            f"AIRFLOW_CONN_{S3_CONN.upper()}",
            moto_server.connection(url=f"http://127.0.0.1:{proxy.port}", config_kwargs={
                "retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 2,
            }),
        )
        yield proxy
    proxy.down()


@dataclass
class Env:
    tmp: Path
    kind: Kind
    targets: tuple[str, ...]  # the schedules' targets: disk and s3, or disk and disk2
    s3: S3Service | None
    prefix: str
    proxy: TcpProxy | None
    _targets: dict[str, Any] = field(default_factory=dict)

    @property
    def staging(self) -> Path:
        return staging_root(load_config().config)

    def target(self, name: str) -> Any:
        """Built once per test: an S3 client takes about a second to make."""
        if name not in self._targets:
            self._targets[name] = build_target(name, load_config().config.targets[name])
        return self._targets[name]


def write_config(env: Env, staging: Path) -> None:
    """Two schedules of the source (``seed`` makes the earlier good backup, ``run`` is the
    one faulted) to ``env.targets``: a local disk and moto's S3, or two local disks where
    S3 adds nothing to the case (an S3 client costs a second and Airflow's import)."""
    tmp, other = env.tmp, ""
    if env.s3 is not None:
        other = f"s3: {{type: s3, conn_id: {S3_CONN}, bucket: {env.s3.bucket}, prefix: {env.prefix}/}}"
    targets = ", ".join(env.targets)
    (tmp / "backup_config.yaml").write_text(textwrap.dedent(f"""
        staging_dir: {staging}
        targets:
          disk: {{type: local, path: {tmp}/disk}}
          disk2: {{type: local, path: {tmp}/disk2, offsite: true}}
          {other}
        sources:
          {SOURCE}: {env.kind.source_yaml()}
        schedules:
          - {{name: seed, source: {SOURCE}, type: FULL, cron: "@daily", targets: [{targets}]}}
          - {{name: run, source: {SOURCE}, type: FULL, cron: "@daily", targets: [{targets}]}}
    """))


def make_env(
    request: pytest.FixtureRequest, tmp: Path, mp: pytest.MonkeyPatch, kind: str, *,
    s3: bool = False, big: bool = False,
) -> Env:
    k = KINDS[kind](request, tmp, mp, big)
    request.addfinalizer(k.close)
    env = Env(tmp, k, ("disk", "s3") if s3 else ("disk", "disk2"),
              request.getfixturevalue("moto_server") if s3 else None, unique("faults"),
              request.getfixturevalue("s3_proxy") if s3 else None)
    write_config(env, tmp / "staging")
    mp.setenv("BACKUP_CONFIG", str(tmp / "backup_config.yaml"))
    KeyRing.generate(tmp / "keys.json", "k1")
    mp.setenv("BACKUP_KEY_FILE", str(tmp / "keys.json"))
    mp.setenv("BACKUP_FAULT_DIR", str(tmp / "faults"))
    return env


# --- a run, step by step -------------------------------------------------------------------

def steps(targets: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """The backup DAG's tasks in order: upload and verify mapped over the targets."""
    return [("dump", None), ("encrypt", None), ("checksum", None),
            *[("upload", t) for t in targets], *[("verify", t) for t in targets], ("cleanup", None)]


@dataclass
class Run:
    """One DAG run of schedule ``run``: its id, logical date and the XCom so far."""

    run_id: str = field(default_factory=lambda: f"manual__{uuid.uuid4().hex[:8]}")
    when: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    meta: dict[str, Any] = field(default_factory=dict)

    def args(self, target: str | None) -> dict[str, Any]:
        return {"schedule": "run", "run_id": self.run_id, "when": self.when.isoformat(),
                "meta": self.meta, "target": target}

    def keep(self, step: str, out: dict[str, Any]) -> None:
        if step in ("dump", "encrypt", "checksum"):
            self.meta = out

    def here(self, step: str, target: str | None) -> None:
        """The step in this process."""
        if step == "dump":
            out = tasks.run_dump("run", self.run_id, self.when)
        elif step in ("encrypt", "checksum"):
            out = getattr(tasks, f"run_{step}")(self.meta)
        elif step in ("upload", "verify"):
            out = getattr(tasks, f"run_{step}")(self.meta, target)
        else:
            out = tasks.run_cleanup(self.meta, "run")
        self.keep(step, out)

    def start(self, step: str, target: str | None, fault: str | None = None) -> subprocess.Popen[str]:
        """The step in a process of its own, as a task; ``fault``: BACKUP_FAULT."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("BACKUP_FAULT", None)
        if fault:
            env["BACKUP_FAULT"] = fault
        return subprocess.Popen(
            [sys.executable, "-c", RUNNER, step, json.dumps(self.args(target), default=str)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def task(
        self, step: str, target: str | None, fault: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = self.start(step, target, fault)
        out, err = proc.communicate(timeout=300)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if done.returncode == 0:
            self.keep(step, json.loads(out.strip().splitlines()[-1]))
        return done


def killed(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == -signal.SIGKILL


def step_of(point: str) -> str:
    return point.split(".", 1)[0]


def run_with_fault(env: Env, run: Run, point: str, fault_target: str, *, retry: bool) -> bool:
    """The run's steps in the DAG's order; the one holding ``point`` (at ``fault_target``
    for upload and verify) in its own process, killed there. With ``retry``, the step is
    run again as Airflow's retry would and the run goes on; returns whether the retry
    completed (False without one: the run stops at the kill)."""
    for step, target in steps(env.targets):
        if step != step_of(point) or target not in (None, fault_target):
            run.here(step, target)
            continue
        first = run.task(step, target, fault=f"{point}:kill")
        assert killed(first), f"{step} not killed at {point}: rc {first.returncode}\n{first.stderr[-3000:]}"
        if not retry:
            return False
        again = run.task(step, target)
        assert again.returncode == 0, f"retry of {step} (killed at {point}) failed:\n{again.stderr[-3000:]}"
    return True


# --- what the targets and staging hold -----------------------------------------------------


def good_backups(env: Env) -> dict[str, dict[str, bool]]:
    """Per target, each listed backup of the source: whether it deep-verifies (a listed
    backup that does not is a false good one)."""
    config = load_config().config
    keys = _keys(env.tmp)
    out: dict[str, dict[str, bool]] = {}
    for name in env.targets:
        target = env.target(name)
        out[name] = {m.backup_id: tasks.deep_verify(config, target, m, keys) == []
                     for m in list_backups(target, SOURCE)}
    return out


def leftovers(env: Env) -> list[str]:
    """What the targets hold beside their listed backups' payloads and manifests and the
    catalog index ('_' folders): temp files, manifest-less payloads, open multipart uploads."""
    held = {name: {m.backup_id for m in list_backups(env.target(name), SOURCE)} for name in env.targets}
    out: list[str] = []
    for name in ("disk", "disk2"):
        root = env.tmp / name
        for path in sorted(root.rglob("*") if name in held else []):
            if path.is_file():
                out += _stray(name, path.relative_to(root).as_posix(), held[name])
    if env.s3 is None:
        return out
    client = env.s3.client()
    listing = client.list_objects_v2(Bucket=env.s3.bucket, Prefix=env.prefix + "/")
    for obj in listing.get("Contents", []):
        out += _stray("s3", obj["Key"][len(env.prefix) + 1:], held["s3"])
    uploads = client.list_multipart_uploads(Bucket=env.s3.bucket, Prefix=env.prefix + "/")
    out += [f"s3: open multipart upload {u['Key']}" for u in uploads.get("Uploads", [])]
    return out


def _stray(target: str, key: str, held: set[str]) -> list[str]:
    parts = key.split("/")
    if any(p.startswith("_") for p in parts):
        return []  # the catalog index (catalog/index.py)
    ours = {PAYLOAD_NAME, MANIFEST_NAME}
    if len(parts) == 3 and parts[0] == SOURCE and parts[1] in held and parts[2] in ours:
        return []
    return [f"{target}: {key}"]


def plaintext(env: Env) -> list[Path]:
    return sorted(p for name in PLAINTEXT_NAMES for p in env.tmp.joinpath("staging").rglob(name))


def sweep_after_the_grace(env: Env) -> None:
    """The orphan sweep of every target as it runs once ORPHAN_GRACE_HOURS have passed,
    and the plaintext sweep once its grace has."""
    later = utcnow() + timedelta(hours=ORPHAN_GRACE_HOURS + 1)
    for name in env.targets:
        sweep_source(env.target(name), SOURCE, env.staging, now=later)
    sweep_plaintext(env.staging, grace_s=0)


def age_staging(env: Env, days: float) -> None:
    """Make every staging directory look untouched for ``days`` (a run nobody resumed)."""
    then = time.time() - days * 86400
    for stage in env.staging.iterdir():
        if stage.is_dir() and not stage.name.startswith("."):
            for p in [*stage.iterdir(), stage]:
                os.utime(p, (then, then), follow_symlinks=False)


# --- the matrix ------------------------------------------------------------------------------

MATRIX: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def print_matrix(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not MATRIX:
        return
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    lines = ["", "fault x source (issue 18): false-good backups, good backups lost, retry ok, leftovers",
             f"{'source':<9} {'fault':<30} {'retry':<6} {'false-good':>10} {'lost':>5} {'retry ok':>9}  "
             "leftovers before the sweep -> after"]
    for row in MATRIX:
        lines.append(
            f"{row['source']:<9} {row['fault']:<30} {row['retry']!s:<6} {row['false_good']:>10} "
            f"{row['lost']:>5} {row['retry_ok']!s:>9}  {len(row['left'])} -> {len(row['left_after'])}"
            + (f" ({'; '.join(row['left'])})" if row["left"] else "")
        )
    out = os.environ.get("FAULT_MATRIX_OUT")
    if out:
        Path(out).write_text(json.dumps(MATRIX, indent=1, default=str))
    for line in lines:
        if reporter is not None:
            reporter.write_line(line)


# --- kill at a point, then retry (or not) ---------------------------------------------------

POINTS = [
    "dump.mid-write", "dump.done", "encrypt.mid-write", "encrypt.done", "checksum.done",
    "upload.mid-write", "upload.before-manifest", "upload.done", "verify.done",
    "cleanup.staging-removed", "cleanup.done",
]
# PostgreSQL and MongoDB: the points where a kill leaves the most (plaintext, a payload
# without its dump, a payload without its manifest); the others are the same code as files.
SUBSET = ["dump.mid-write", "encrypt.done", "upload.before-manifest"]
CASES = (
    [pytest.param("files", p, "disk", id=f"files-{p}") for p in POINTS]
    + [pytest.param("files", "upload.mid-write", "s3", id="files-upload.mid-write-s3-multipart")]
    + [pytest.param(k, p, "s3", id=f"{k}-{p}") for k in ("postgres", "mongo") for p in SUBSET]
)


def seed_backup() -> str:
    """A good backup of another schedule of the source, made before the faulted run."""
    return str(run_backup("seed", run_id=f"seed-{uuid.uuid4().hex[:6]}", deep=True)["backup_id"])


@pytest.mark.parametrize(("kind", "point", "fault_target"), CASES)
def test_a_step_killed_and_retried_completes_with_one_good_backup_per_target(
    kind: str, point: str, fault_target: str, request: pytest.FixtureRequest,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(request, tmp_path, monkeypatch, kind, s3=fault_target == "s3", big=fault_target == "s3")
    seed = seed_backup()
    expected = env.kind.snapshot()
    run = Run()
    assert run_with_fault(env, run, point, fault_target, retry=True)
    backup_id = run.meta["backup_id"]

    held = good_backups(env)
    left = leftovers(env)
    for name in env.targets:
        assert sorted(held[name]) == sorted({seed, backup_id}), f"{name}: {held[name]}"
        assert all(held[name].values()), f"a backup at {name} does not deep-verify: {held[name]}"
        manifest = {m.backup_id: m for m in list_backups(env.target(name), SOURCE)}[backup_id]
        assert manifest.verification[name].ok
    restored = env.kind.restored(backup_id, fault_target)
    if kind == "files":
        assert compare_trees(expected, restored) == []
    else:
        assert restored == expected
    assert plaintext(env) == []
    assert not (env.staging / backup_id).exists()  # the run's cleanup removed its staging

    sweep_after_the_grace(env)
    left_after = leftovers(env)
    assert left_after == []
    assert all(sorted(per) == sorted({seed, backup_id}) for per in good_backups(env).values())
    MATRIX.append({"source": kind, "fault": f"{point}@{fault_target}", "retry": True, "false_good": 0,
                   "lost": 0, "retry_ok": True, "left": left, "left_after": left_after})


# Without a retry: the points that leave something behind (plaintext, a payload, a temp
# file or a multipart upload, a manifest not verified); a kill anywhere else leaves less.
LEAVES = ["dump.mid-write", "dump.done", "encrypt.done", "upload.mid-write", "upload.before-manifest",
          "verify.done"]
NO_RETRY = (
    [pytest.param("files", p, "disk", id=f"files-{p}") for p in LEAVES]
    + [pytest.param("files", "upload.mid-write", "s3", id="files-upload.mid-write-s3-multipart")]
    + [pytest.param(k, "dump.mid-write", "s3", id=f"{k}-dump.mid-write") for k in ("postgres", "mongo")]
)


@pytest.mark.parametrize(("kind", "point", "fault_target"), NO_RETRY)
def test_a_step_killed_without_a_retry_leaves_nothing_once_swept_and_a_later_run_succeeds(
    kind: str, point: str, fault_target: str, request: pytest.FixtureRequest,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(request, tmp_path, monkeypatch, kind, s3=fault_target == "s3", big=fault_target == "s3")
    seed = seed_backup()
    expected = env.kind.snapshot()
    dead = Run(when=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    assert not run_with_fault(env, dead, point, fault_target, retry=False)
    held = good_backups(env)
    false_good = sum(not ok for per in held.values() for ok in per.values())
    assert false_good == 0, held

    # Nobody clears the run: a week later it is stale, and a later run's cleanup removes
    # its staging; the orphan sweep then takes what it left at the targets.
    age_staging(env, days=tasks.STALE_STAGING_DAYS + 1)
    later = Run()
    for step, target in steps(env.targets):
        later.here(step, target)
    left = leftovers(env)
    sweep_after_the_grace(env)

    held = good_backups(env)
    for name in env.targets:
        assert seed in held[name] and later.meta["backup_id"] in held[name], held[name]
        assert all(held[name].values()), f"a backup at {name} does not deep-verify: {held[name]}"
    restored = env.kind.restored(later.meta["backup_id"], env.targets[-1])
    if kind == "files":
        assert compare_trees(expected, restored) == []
    else:
        assert restored == expected
    left_after = leftovers(env)
    assert left_after == []
    assert plaintext(env) == []
    assert not (env.staging / tasks.make_backup_id("run", dead.when, dead.run_id)).exists()
    MATRIX.append({"source": kind, "fault": f"{point}@{fault_target}", "retry": False, "false_good": 0,
                   "lost": 0, "retry_ok": "-", "left": left, "left_after": left_after})


# --- the target, the source, the staging disk taken away ------------------------------------


def wait_paused(point: str, proc: subprocess.Popen[str]) -> Path:
    """The pause file of ``point`` once the step ``proc`` waits there."""
    flag = faults.pause_file(point)
    while not flag.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the step ended (rc {proc.returncode}) before pausing at {point}:\n{err[-3000:]}")
        time.sleep(0.05)
    return flag


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def error_of(stderr: str) -> str:
    """The exception a step's process ended with: from the last ``SomeError: ...`` line of
    its traceback to the end (a message may span lines)."""
    found = list(re.finditer(r"^[\w.]+(?:Error|Full|Refused|Exception): ", stderr, re.MULTILINE))
    return stderr[found[-1].start():].strip() if found else stderr[-2000:]


def test_s3_endpoint_down_mid_upload_fails_clearly_and_nothing_looks_good_there(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(request, tmp_path, monkeypatch, "files", s3=True, big=True)
    run = Run()
    for step, target in steps(env.targets)[:4]:  # dump, encrypt, checksum, the upload to disk
        run.here(step, target)
    proc = run.start("upload", "s3", fault="upload.mid-write:pause")
    flag = wait_paused("upload.mid-write", proc)  # a multipart upload begun
    assert env.proxy is not None and env.s3 is not None
    env.proxy.down()
    try:
        flag.unlink()
        done = finish(proc)
    finally:
        env.proxy.up()
    assert done.returncode == 1, done.stderr[-3000:]
    error = error_of(done.stderr)
    assert "TargetError" in error and "'s3'" in error, error
    assert env.s3.secret_key not in done.stderr
    held = good_backups(env)
    assert held["s3"] == {} and all(held["disk"].values())  # nothing that looks good at s3
    left = leftovers(env)  # the multipart upload whose abort could not reach the endpoint

    retried = run.task("upload", "s3")  # Airflow's retry, the endpoint back
    assert retried.returncode == 0, retried.stderr[-3000:]
    for step, target in steps(env.targets)[5:]:
        run.here(step, target)
    held = good_backups(env)
    assert held == {name: {run.meta["backup_id"]: True} for name in env.targets}
    sweep_after_the_grace(env)
    assert leftovers(env) == []
    MATRIX.append({"source": "files", "fault": "s3 endpoint down mid-upload", "retry": True,
                   "false_good": 0, "lost": 0, "retry_ok": True, "left": left, "left_after": []})


class OwnPostgresKind(PostgresKind):
    """PostgreSQL logical on this module's own server (it is crashed by the test)."""

    fixture = "own_pg"

    def close(self) -> None:
        pass  # the server is down: its files go with the module's fixture


KINDS["own_postgres"] = OwnPostgresKind


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgCluster]:
    with PgCluster() as pg:
        yield pg


def test_postgres_down_mid_dump_fails_clearly_and_leaves_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(request, tmp_path, monkeypatch, "own_postgres")
    pg: PgCluster = request.getfixturevalue("own_pg")
    run = Run()
    proc = run.start("dump", None, fault="dump.snapshot-taken:pause")
    flag = wait_paused("dump.snapshot-taken", proc)
    pg.crash()
    flag.unlink()
    done = finish(proc)
    assert done.returncode == 1, done.stderr[-3000:]
    error = error_of(done.stderr)
    assert "SourceError" in error and SOURCE in error, error
    assert not (env.staging / tasks.make_backup_id("run", run.when, run.run_id)).exists()
    assert plaintext(env) == []
    assert good_backups(env) == {name: {} for name in env.targets}
    assert leftovers(env) == []
    MATRIX.append({"source": "postgres", "fault": "server down mid-dump", "retry": False,
                   "false_good": 0, "lost": 0, "retry_ok": "-", "left": [], "left_after": []})


@pytest.mark.parametrize("step", ["dump", "encrypt"])
def test_full_staging_disk_fails_clearly_removes_the_partial_file_and_a_retry_completes(
    step: str, small_fs: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(request, tmp_path, monkeypatch, "files")
    size = (3 << 20) if step == "dump" else (1200 << 10)  # more than fits; the dump fits, not its payload
    (env.kind.data / "big.bin").write_bytes(os.urandom(size))  # type: ignore[attr-defined]
    # The dump's error says what the last backup of the source took (staged elsewhere).
    seed = str(run_backup("run", run_id="seed-small")["backup_id"]) if step == "dump" else None
    write_config(env, small_fs / "staging")
    run = Run()
    if step == "encrypt":
        run.here("dump", None)
    done = run.task(step, None)
    assert done.returncode == 1, done.stderr[-3000:]
    error = error_of(done.stderr)
    assert "StagingFull" in error and "staging is full" in error and "free there" in error, error
    assert str(small_fs / "staging") in error and "Errno" not in error
    assert ("took" in error) if seed else ("needs about" in error)  # what the step expected
    partial = [p.name for p in (small_fs / "staging").rglob("*.partial")]
    assert partial == []
    assert good_backups(env) == {name: ({seed: True} if seed else {}) for name in env.targets}

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_fs)], check=True)  # space freed
    again = run.task(step, None)  # Airflow's retry
    assert again.returncode == 0, again.stderr[-3000:]
    order = steps(env.targets)
    for s, target in order[order.index((step, None)) + 1:]:
        run.here(s, target)
    held = good_backups(env)
    assert all(held[name].get(run.meta["backup_id"]) for name in env.targets), held
    assert plaintext(env) == [] and list((small_fs / "staging").glob("run-*")) == []
    MATRIX.append({"source": "files", "fault": f"staging disk full in {step}", "retry": True,
                   "false_good": 0, "lost": 0, "retry_ok": True, "left": [], "left_after": []})


def test_the_fault_hook_names_a_wrong_point_or_action_and_costs_nothing_unset() -> None:
    assert faults.parse("") == {}
    assert faults.parse("encrypt.done,upload.mid-write:pause") == {
        "encrypt.done": "kill", "upload.mid-write": "pause"}
    with pytest.raises(ValueError, match=r"unknown fault point 'encrypt\.finished'.*encrypt\.done"):
        faults.parse("encrypt.finished")
    with pytest.raises(ValueError, match="unknown action 'stop'.*kill, pause, raise"):
        faults.parse("dump.done:stop")
    assert "BACKUP_FAULT" not in os.environ and not faults.armed("dump.done")

"""Concurrency: two schedules of one source, and two runs of one schedule, at the same time.

Each run executes the real task functions (dump → encrypt → checksum → upload → verify →
cleanup) in a process of its own, started with ``spawn`` like a Celery worker on another
host would be: nothing is shared but the staging volume, the targets (a real local target
and a real S3, moto's server) and the source. Events hold a run at a chosen step while the
other one runs, so the dangerous interleavings are forced every time instead of being left
to timing luck. Afterwards every backup must verify (re-hash and decrypt to the end), every
chain must resolve and every backup must restore to what was backed up.
"""

from __future__ import annotations

import multiprocessing
import shutil
import textwrap
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from include.backup import tasks
from include.backup.catalog.catalog import chain_for, scan_backups, verify_object
from include.backup.config.loader import load_config
from include.backup.dr.restore import restore_backup
from include.backup.keys import KeyRing
from include.backup.sources.files import compare_trees, tree_digest
from include.backup.sources.postgres.cluster import stop_restored_server
from include.backup.targets import build_target
from include.backup.testing import PgCluster
from tests.integration.services import unique

pytestmark = [pytest.mark.integration]

CTX = multiprocessing.get_context("spawn")
WAIT_S = 300  # a deadlock guard only: every wait below ends on an event, not a clock
TARGETS = ("disk", "s3")


# --- a backup run in a process of its own ---------------------------------------------------


def _worker(
    schedule: str,
    run_id: str,
    hold_after: str | None,
    hold_in_wal_copy: bool,
    held: Any,
    resume: Any,
    out: Any,
) -> None:
    """One DAG run, step by step, as the DAG's tasks would run it. With ``hold_after`` the
    run stops after that step (or, with ``hold_in_wal_copy``, inside a physical PostgreSQL
    dump just before it copies WAL from the spool), reports its metadata and waits."""
    try:

        def hold(meta: dict[str, Any] | None) -> None:
            out.put(("held", meta))
            held.set()
            if not resume.wait(WAIT_S):
                raise TimeoutError("the test never released this run")

        if hold_in_wal_copy:
            # Instrumentation only: pause the real dump at the moment it reads the spool.
            from include.backup.sources.postgres import physical as postgres_physical

            real = postgres_physical._write_tar

            def paused(out_: Any, members: list[tuple[str, Path]]) -> int:
                hold(None)
                return real(out_, members)

            postgres_physical._write_tar = paused  # type: ignore[assignment]

        config = load_config().config
        targets = config.schedule(schedule).targets
        meta = tasks.run_dump(schedule, run_id, datetime.now(UTC))
        steps = [
            ("encrypt", lambda m: tasks.run_encrypt(m)),
            ("checksum", lambda m: tasks.run_checksum(m)),
            ("upload", lambda m: [tasks.run_upload(m, t) for t in targets] and m),
            ("verify", lambda m: [tasks.run_verify(m, t) for t in targets] and m),
            ("cleanup", lambda m: tasks.run_cleanup(m, schedule) and m),
        ]
        if hold_after == "dump":
            hold(meta)
        for name, step in steps:
            meta = step(meta)
            if hold_after == name:
                hold(meta)
        out.put(("done", meta))
    except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
        out.put(("error", traceback.format_exc()))


@dataclass
class Run:
    """A backup run in a spawned process, with the events that hold and release it."""

    schedule: str
    run_id: str
    hold_after: str | None = None
    hold_in_wal_copy: bool = False
    held: Any = field(default_factory=CTX.Event)
    resume: Any = field(default_factory=CTX.Event)
    out: Any = field(default_factory=CTX.Queue)
    process: Any = None

    def start(self) -> Run:
        self.process = CTX.Process(
            target=_worker,
            args=(self.schedule, self.run_id, self.hold_after, self.hold_in_wal_copy,
                  self.held, self.resume, self.out),
            name=f"run-{self.schedule}-{self.run_id}",
        )  # fmt: skip
        self.process.start()
        return self

    def _next(self, expected: str) -> Any:
        kind, value = self.out.get(timeout=WAIT_S)
        if kind == "error":
            raise AssertionError(f"run {self.run_id} of {self.schedule} failed:\n{value}")
        assert kind == expected, (kind, value)
        return value

    def wait_held(self) -> dict[str, Any] | None:
        return self._next("held")  # type: ignore[no-any-return]

    def finish(self) -> dict[str, Any]:
        self.resume.set()
        meta = self._next("done")
        self.process.join(WAIT_S)
        return meta  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(10)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.stop()


def start(runs: list[Run], schedule: str, run_id: str, **kw: Any) -> Run:
    run = Run(schedule, run_id, **kw).start()
    runs.append(run)
    return run


def complete(runs: list[Run], schedule: str, run_id: str) -> dict[str, Any]:
    return start(runs, schedule, run_id).finish()


# --- what must hold afterwards ----------------------------------------------------------------


def held_ids(config: Any, source: str) -> dict[str, set[str]]:
    out = {}
    for name in TARGETS:
        scan = scan_backups(build_target(name, config.targets[name]), source)
        assert scan.problems == []
        out[name] = {m.backup_id for m in scan.backups}
    return out


def assert_catalog_sound(config: Any, keys: KeyRing, source: str) -> None:
    """At every target: every listed backup's objects match their manifest, the payload
    decrypts and decompresses to the recorded size, and its chain resolves."""
    for name in TARGETS:
        target = build_target(name, config.targets[name])
        scan = scan_backups(target, source)
        assert scan.problems == [], scan.problems
        assert scan.backups, f"target {name} holds no backup of {source}"
        for manifest in scan.backups:
            for obj in manifest.objects:
                ok, detail = verify_object(target, manifest, obj.name)
                assert ok, detail
            assert tasks.deep_verify(config, target, manifest, keys) == []
            chain = chain_for(target, manifest)
            assert chain[-1].backup_id == manifest.backup_id


# --- files source ---------------------------------------------------------------------------


@pytest.fixture
def files_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: Any) -> Any:
    data = tmp_path / "data"
    (data / "docs/sub").mkdir(parents=True)
    (data / "docs/a.txt").write_text("alpha\n" * 500)
    (data / "docs/sub/b.bin").write_bytes(bytes(range(256)) * 400)
    config = tmp_path / "backup_config.yaml"
    # One FULL kept per day: a second FULL the same day makes the first one redundant to
    # the FULL schedule's retention, which is the situation the races below are about.
    config.write_text(textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        targets:
          disk: {{type: local, path: {tmp_path}/disk}}
          s3: {{type: s3, conn_id: {moto_server.conn_id}, bucket: {moto_server.bucket},
                prefix: {unique("conc")}/}}
        sources:
          docs: {{type: files, paths: [{data}/docs]}}
        schedules:
          - name: docs_full
            source: docs
            type: FULL
            cron: "@daily"
            targets: [disk, s3]
            retention: {{daily: 1, weekly: 0, monthly: 0, yearly: 0}}
          - name: docs_inc
            source: docs
            type: INCREMENTAL
            cron: "@hourly"
            targets: [disk, s3]
          - name: docs_keep
            source: docs
            type: FULL
            cron: "@daily"
            targets: [disk, s3]
            retention_days: 7
    """))
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    keys = KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return tmp_path, data / "docs", keys


def restored_tree(config: Any, keys: KeyRing, backup_id: str, into: Path, src: Path,
                  target: str) -> dict[str, Any]:  # fmt: skip
    restore_backup(config, backup_id, str(into), keys=keys, target_name=target)
    return tree_digest(into / str(src).lstrip("/"))


def test_full_schedule_retention_spares_the_parent_of_an_incremental_in_flight(files_env, runs):
    """The incremental schedule picks FULL f1 as its parent and is still uploading when the
    FULL schedule publishes f2 and applies its retention (one FULL a day): f1 must survive,
    or the incremental lands at the targets with its chain already broken."""
    tmp, docs, keys = files_env
    f1 = complete(runs, "docs_full", "f1")
    (docs / "a.txt").write_text("changed for the incremental\n")
    (docs / "new.txt").write_text("new\n")
    inc_run = start(runs, "docs_inc", "i1", hold_after="dump")
    inc_meta = inc_run.wait_held()
    assert inc_meta is not None and inc_meta["parent_id"] == f1["backup_id"]
    at_inc = tree_digest(docs)

    (docs / "sub/b.bin").unlink()  # only the second FULL has this change
    f2 = complete(runs, "docs_full", "f2")
    at_f2 = tree_digest(docs)
    # The FULL run's cleanup removed its own staging, never the incremental's.
    assert {"dump", "manifest.draft.json"} <= {p.name for p in Path(inc_meta["staging"]).iterdir()}
    inc = inc_run.finish()

    config = load_config().config
    for name in TARGETS:
        assert held_ids(config, "docs")[name] == {f1["backup_id"], f2["backup_id"], inc["backup_id"]}
        target = build_target(name, config.targets[name])
        by_id = {m.backup_id: m for m in scan_backups(target, "docs").backups}
        assert [m.backup_id for m in chain_for(target, by_id[inc["backup_id"]])] == [
            f1["backup_id"], inc["backup_id"],
        ]  # fmt: skip
    assert_catalog_sound(config, keys, "docs")
    for i, name in enumerate(TARGETS):
        got = restored_tree(config, keys, inc["backup_id"], tmp / f"inc{i}", docs, name)
        assert compare_trees(at_inc, got) == []
        got = restored_tree(config, keys, f2["backup_id"], tmp / f"f2{i}", docs, name)
        assert compare_trees(at_f2, got) == []


def test_a_newer_run_does_not_delete_an_older_run_still_in_flight(files_env, runs):
    """Two runs of one schedule (a manual trigger next to the scheduled run): the newer
    one finishes and applies retention while the older one sits between upload and verify.
    The older backup must still be there for its verify; a verify that finds it gone would
    fail the run (and re-writing its manifest would list a backup whose data is deleted)."""
    tmp, docs, keys = files_env
    older = start(runs, "docs_full", "scheduled", hold_after="upload")
    older_meta = older.wait_held()
    assert older_meta is not None
    (docs / "late.txt").write_text("after the older run's dump\n")
    newer = complete(runs, "docs_full", "manual")
    assert (Path(older_meta["staging"]) / "manifest.json").is_file()  # its staging is intact
    old = older.finish()

    config = load_config().config
    for name in TARGETS:
        # The older run's own cleanup then applied the policy (one FULL a day): only the
        # newest is left, and nothing half-deleted is listed.
        assert held_ids(config, "docs")[name] == {newer["backup_id"]}
    assert old["backup_id"] != newer["backup_id"]
    assert_catalog_sound(config, keys, "docs")
    got = restored_tree(config, keys, newer["backup_id"], tmp / "out", docs, "s3")
    assert compare_trees(tree_digest(docs), got) == []


def test_two_runs_of_one_schedule_at_once(files_env, runs):
    """Both runs dump, then both upload, verify and clean up at the same time."""
    tmp, docs, keys = files_env
    a = start(runs, "docs_keep", "manual__a", hold_after="dump")
    b = start(runs, "docs_keep", "manual__b", hold_after="dump")
    meta_a, meta_b = a.wait_held(), b.wait_held()
    assert meta_a is not None and meta_b is not None
    assert meta_a["staging"] != meta_b["staging"]
    a.resume.set()
    b.resume.set()
    done_a, done_b = a.finish(), b.finish()

    config = load_config().config
    for name in TARGETS:
        assert held_ids(config, "docs")[name] == {done_a["backup_id"], done_b["backup_id"]}
    assert_catalog_sound(config, keys, "docs")
    want = tree_digest(docs)
    for i, meta in enumerate((done_a, done_b)):
        got = restored_tree(config, keys, meta["backup_id"], tmp / f"out{i}", docs, TARGETS[i])
        assert compare_trees(want, got) == []
    staging = tmp / "staging"
    assert not staging.exists() or [p.name for p in staging.iterdir() if not p.name.startswith(".")] == []


def test_two_schedules_of_one_source_at_once(files_env, runs):
    """A FULL schedule and an INCREMENTAL schedule of one source, each run in full at once."""
    tmp, docs, keys = files_env
    complete(runs, "docs_keep", "base")
    (docs / "a.txt").write_text("second state\n")
    full = start(runs, "docs_keep", "r2", hold_after="dump")
    inc = start(runs, "docs_inc", "r2", hold_after="dump")
    full.wait_held()
    inc.wait_held()
    full.resume.set()
    inc.resume.set()
    f, i = full.finish(), inc.finish()

    config = load_config().config
    for name in TARGETS:
        assert {f["backup_id"], i["backup_id"]} <= held_ids(config, "docs")[name]
    assert_catalog_sound(config, keys, "docs")
    want = tree_digest(docs)
    for n, meta in enumerate((f, i)):
        got = restored_tree(config, keys, meta["backup_id"], tmp / f"o{n}", docs, "disk")
        assert compare_trees(want, got) == []
    shutil.rmtree(tmp / "o0")


# --- PostgreSQL, physical: base backups and WAL from one archive spool ------------------------

PG_CONN = "conc_pg"


@contextmanager
def pg_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: Any, *, prune: bool
) -> Iterator[Any]:
    with PgCluster(archive=True) as pg:
        pg.create_database("shop")
        pg.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)", db="shop")
        monkeypatch.setenv(f"AIRFLOW_CONN_{PG_CONN.upper()}", pg.uri("shop"))
        config = tmp_path / "backup_config.yaml"
        config.write_text(textwrap.dedent(f"""
            staging_dir: {tmp_path}/staging
            targets:
              disk: {{type: local, path: {tmp_path}/disk}}
              s3: {{type: s3, conn_id: {moto_server.conn_id}, bucket: {moto_server.bucket},
                    prefix: {unique("conc-pg")}/}}
            sources:
              shop: {{type: postgres, conn_id: {PG_CONN}, method: physical,
                      wal_archive_dir: {pg.wal_archive_dir}, prune_wal_archive: {str(prune).lower()}}}
            schedules:
              - {{name: shop_base, source: shop, type: FULL, cron: "@daily", targets: [disk, s3],
                  retention_days: 7}}
              - {{name: shop_wal, source: shop, type: TRANSACTION_LOG, cron: "*/15 * * * *",
                  targets: [disk, s3]}}
              - {{name: shop_inc, source: shop, type: INCREMENTAL, cron: "@hourly", targets: [disk, s3]}}
        """))
        monkeypatch.setenv("BACKUP_CONFIG", str(config))
        keys = KeyRing.generate(tmp_path / "keys.json", "k1")
        monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
        restored: list[str] = []
        try:
            yield pg, keys, restored
        finally:
            for d in restored:
                stop_restored_server(d, quiet=True)
                shutil.rmtree(d, ignore_errors=True)
                shutil.rmtree(d + ".wal", ignore_errors=True)


def add_orders(pg: PgCluster, first: int, last: int) -> None:
    pg.psql(f"INSERT INTO orders SELECT g, 'row' FROM generate_series({first}, {last}) g", db="shop")


def restored_orders(config: Any, keys: KeyRing, pg: PgCluster, restored: list[str], backup_id: str,
                    target: str) -> int:  # fmt: skip
    into = f"{pg.base_dir}-restored-{len(restored)}"
    restored.append(into)
    result = restore_backup(config, backup_id, into, keys=keys, target_name=target)
    stop_restored_server(into)
    return int(result.stats["tables"]["shop"]["orders"])


@pytest.mark.slow
def test_log_backups_do_not_prune_wal_a_base_backup_in_flight_still_needs(
    tmp_path, monkeypatch, moto_server, runs
):
    """A base backup (FULL schedule) is held just before it copies its WAL from the spool.
    Meanwhile the log schedule publishes two backups; the second one's parent already
    holds the WAL of the base backup in flight, and with prune_wal_archive it would delete
    those segments from the spool under it. It must wait for a moment when it is alone."""
    with pg_env(tmp_path, monkeypatch, moto_server, prune=True) as (pg, keys, restored):
        complete(runs, "shop_base", "f1")
        add_orders(pg, 1, 10)
        complete(runs, "shop_wal", "t1")
        base = start(runs, "shop_base", "f2", hold_in_wal_copy=True)
        base.wait_held()  # pg_basebackup is done; the base's WAL is about to be copied
        spool_before = sorted(p.name for p in pg.wal_archive_dir.iterdir())
        add_orders(pg, 11, 20)
        complete(runs, "shop_wal", "t2")
        add_orders(pg, 21, 30)
        t3 = complete(runs, "shop_wal", "t3")
        assert set(spool_before) <= {p.name for p in pg.wal_archive_dir.iterdir()}  # nothing pruned
        f2 = base.finish()

        config = load_config().config
        ids = held_ids(config, "shop")
        assert ids["disk"] == ids["s3"] and len(ids["disk"]) == 5 and f2["backup_id"] in ids["disk"]
        assert_catalog_sound(config, keys, "shop")
        # The base backup restores on its own to its consistent point (rows 1-10) ...
        assert restored_orders(config, keys, pg, restored, f2["backup_id"], "s3") == 10
        # ... and the log chain (f1 → t1 → t2 → t3) to its end.
        assert restored_orders(config, keys, pg, restored, t3["backup_id"], "disk") == 30

        # Alone, the next log backup prunes what is already stored.
        add_orders(pg, 31, 40)
        complete(runs, "shop_wal", "t4")
        assert not set(spool_before) <= {p.name for p in pg.wal_archive_dir.iterdir()}
        assert_catalog_sound(config, keys, "shop")


@pytest.mark.slow
def test_incremental_and_log_schedules_of_one_source_at_once(tmp_path, monkeypatch, moto_server, runs):
    """A physical INCREMENTAL (the WAL since the base) and a TRANSACTION_LOG (the WAL since
    the newest backup) of one source dump at the same time: both take the same segments,
    each into its own backup, and each restores."""
    with pg_env(tmp_path, monkeypatch, moto_server, prune=False) as (pg, keys, restored):
        f1 = complete(runs, "shop_base", "f1")
        add_orders(pg, 1, 25)
        inc = start(runs, "shop_inc", "i1", hold_after="dump")
        log = start(runs, "shop_wal", "t1", hold_after="dump")
        inc_meta, log_meta = inc.wait_held(), log.wait_held()
        assert inc_meta is not None and log_meta is not None
        assert inc_meta["parent_id"] == log_meta["parent_id"] == f1["backup_id"]
        inc.resume.set()
        log.resume.set()
        i1, t1 = inc.finish(), log.finish()

        config = load_config().config
        ids = held_ids(config, "shop")
        assert ids["disk"] == ids["s3"] == {f1["backup_id"], i1["backup_id"], t1["backup_id"]}
        assert_catalog_sound(config, keys, "shop")
        assert restored_orders(config, keys, pg, restored, i1["backup_id"], "disk") == 25
        assert restored_orders(config, keys, pg, restored, t1["backup_id"], "s3") == 25

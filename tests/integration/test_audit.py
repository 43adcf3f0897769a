"""The audit trail (docs/audit.md) at real targets: a local directory and moto's S3.

One module-wide scene: a backup taken by the DAG's step functions in a DAG run that
"alice" triggered (Airflow's own task context, as the task runner sets it), then the CLI's
list, verify, restore and prune run as a user runs them (``python -m include.backup``'s
``main``, in this process), and the restore DAG's task. Each leaves its records at both
targets; ``audit --verify`` finds the trail whole, then names a deleted, an edited and a
reordered record; ``/dr/api/audit`` pages through it."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import textwrap
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.api.datamodels._generated import DagRun, DagRunState, DagRunType
from airflow.sdk.execution_time.context import set_current_context
from fastapi.testclient import TestClient

from include.backup import audit, audit_read, cli
from include.backup.catalog import index
from include.backup.catalog.manifest import PAYLOAD_NAME, Manifest, StoredObject
from include.backup.catalog.signing import sign
from include.backup.config.loader import load_config
from include.backup.dr.dags import run_restore
from include.backup.dr.web import Monitor, create_app
from include.backup.keys import KeyRing
from include.backup.targets import build_target
from include.backup.testing import run_backup
from tests.integration.services import S3_CONN_ID, S3Service, unique

pytestmark = [pytest.mark.integration]


def dag_context(user: str | None, run_id: str) -> dict[str, Any]:
    """A task's context as Airflow's task runner builds it: the DAG run that triggered it."""
    now = datetime.now(UTC)
    dag_run = DagRun(
        dag_id="backup__docs_full", run_id=run_id, logical_date=now, data_interval_start=now,
        data_interval_end=now, run_after=now, start_date=now, end_date=None,
        run_type=DagRunType.MANUAL if user else DagRunType.SCHEDULED, state=DagRunState.RUNNING,
        triggering_user_name=user, consumed_asset_events=[], partition_key=None,
    )  # fmt: skip
    return {"dag_run": dag_run, "run_id": run_id}


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main(list(args))
    return status, out.getvalue(), err.getvalue()


def old_backup(ring: KeyRing, n: int) -> Manifest:
    """A signed backup of schedule docs_full from 2024 (for prune to delete)."""
    payload = f"old-{n}".encode()
    digest = hashlib.sha256(payload).hexdigest()
    started = datetime(2024, 1, 1, 2, tzinfo=UTC) + timedelta(days=n)
    m = Manifest(
        backup_id=f"docs_full-2024010{n}T020000Z-00000{n}", schedule="docs_full", source="docs",
        source_type="files", backup_type="FULL", started_at=started, finished_at=started,
        payload_format="tar", stored_size=len(payload), raw_size=len(payload),
        objects=[StoredObject(name=PAYLOAD_NAME, size=len(payload), sha256=digest)],
    )  # fmt: skip
    return sign(m, *ring.active())


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, moto_server: S3Service) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("audit")
    (tmp / "data").mkdir()
    (tmp / "data/a.txt").write_text("alpha\n" * 100)
    config = tmp / "backup_config.yaml"
    config.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp}/staging
        targets:
          disk: {{type: local, path: {tmp}/disk}}
          s3: {{type: s3, conn_id: {S3_CONN_ID}, bucket: {moto_server.bucket}, prefix: {unique("audit")}/}}
        sources:
          docs: {{type: files, paths: ["{tmp}/data"]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk, s3],
              retention_days: 7}}
        """)
    )
    ring = KeyRing.generate(tmp / "keys.json", "audit-k1")
    common = ["--config", str(config), "--key-file", str(tmp / "keys.json")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKUP_CONFIG", str(config))
        mp.setenv("BACKUP_KEY_FILE", str(tmp / "keys.json"))
        loaded = load_config(config).config
        targets = {n: build_target(n, loaded.targets[n]) for n in loaded.targets}
        for t in targets.values():
            for n in (1, 2, 3, 4):
                m = old_backup(ring, n)
                t.put_bytes(f"docs/{m.backup_id}/{PAYLOAD_NAME}", f"old-{n}".encode())
                index.publish(t, m, ring)
        with set_current_context(dag_context("alice", "manual__alice-1")):  # type: ignore[arg-type]
            meta = run_backup("docs_full", cleanup=False)
        results = {
            "list": run_cli("list", "--target", "disk", "--source", "docs", *common),
            "verify": run_cli("verify", meta["backup_id"], *common),
            "restore": run_cli("restore", meta["backup_id"], "--into", str(tmp / "restored"), *common),
            "prune": run_cli("prune", "--schedule", "docs_full", *common),
        }
        with set_current_context(dag_context("bob", "manual__bob-1")):  # type: ignore[arg-type]
            request = {"source": None, "backup_id": meta["backup_id"], "point_in_time": None, "only": None,
                       "into": str(tmp / "restored-dag"), "target": "s3", "overwrite": False}  # fmt: skip
            run_restore(request)
        yield {"tmp": tmp, "config": loaded, "ring": ring, "targets": targets, "common": common,
               "backup_id": meta["backup_id"], "results": results}  # fmt: skip


def rows_at(scene: dict[str, Any], target: str) -> list[dict[str, Any]]:
    t = scene["targets"][target]
    return [r for s in ("docs", None) for r in audit_read.iter_records(t, s)]


def test_every_access_leaves_a_record_at_both_targets(scene: dict[str, Any]) -> None:
    for verb, (status, _, err) in scene["results"].items():
        assert status == 0, f"{verb}: {err}"
    backup_id = scene["backup_id"]
    for target in ("disk", "s3"):
        rows = rows_at(scene, target)
        seen = {(r["action"], r["actor"]) for r in rows}
        assert ("backup", "alice") in seen, rows  # the user who triggered the DAG run
        assert ("restore", "bob") in seen  # the restore DAG's task
        cli_actor = audit.os_actor()
        for action in ("list", "verify", "restore", "prune"):
            assert (action, cli_actor) in seen, (action, rows)
        backup = next(r for r in rows if r["action"] == "backup" and r["target"] == target)
        assert backup["backup_ids"] == [backup_id] and backup["run_id"] == "manual__alice-1"
        restore = next(r for r in rows if r["action"] == "restore" and r["actor"] == cli_actor)
        assert restore["backup_ids"] == [backup_id] and restore["result"] == "ok"
        # Each delete at each target is recorded at both: what went is what the records say.
        deleted = {(r["target"], i) for r in rows if r["action"] == "delete" for i in r["backup_ids"]}
        old = [old_backup(scene["ring"], n).backup_id for n in (1, 2, 3, 4)]
        gone = {
            (name, i)
            for name, t in scene["targets"].items()
            for i in old
            if t.stat(f"docs/{i}/manifest.json") is None
        }
        assert gone and deleted == gone


def test_cli_lists_with_filters_and_verifies(scene: dict[str, Any]) -> None:
    status, out, err = run_cli("audit", "--target", "s3", "--source", "docs", "--json", *scene["common"])
    assert status == 0, err
    rows = json.loads(out[out.index("[\n") :])  # after what Airflow's S3 hook logs on stdout
    assert {r["action"] for r in rows} >= {"backup", "verify", "restore", "prune", "delete", "list"}
    assert all(r["source"] == "docs" and r["stored_at"] == ["s3"] for r in rows)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    status, out, _ = run_cli("audit", "--since", tomorrow, *scene["common"])
    assert status == 0 and "no audit records since" in out
    status, out, err = run_cli("audit", "--verify", *scene["common"])
    assert status == 0, err
    assert "audit trail ok" in out


def test_bad_filters_say_what_is_known(scene: dict[str, Any]) -> None:
    status, _, err = run_cli("audit", "--source", "nope", *scene["common"])
    assert status == 1 and "no source named 'nope'" in err and "docs" in err
    status, _, err = run_cli("audit", "--since", "yesterday", *scene["common"])
    assert status == 1 and "not an ISO date" in err


@pytest.fixture
def copy(scene: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The local target's trail copied to a fresh directory, for tampering with."""
    shutil.copytree(scene["tmp"] / "disk", tmp_path / "disk")
    config = (scene["tmp"] / "backup_config.yaml").read_text()
    (tmp_path / "cfg.yaml").write_text(config.replace(str(scene["tmp"] / "disk"), str(tmp_path / "disk")))
    records = sorted((tmp_path / "disk/docs/_audit").glob("[0-9]*/*/*/*.json"))
    assert len(records) >= 6
    yield {
        "records": records,
        "args": ["--config", str(tmp_path / "cfg.yaml"), "--key-file", str(scene["tmp"] / "keys.json")],
    }


def broken(copy: dict[str, Any]) -> str:
    status, out, err = run_cli("audit", "--verify", "--target", "disk", *copy["args"])
    assert status == 1, out
    first = err.splitlines()[0]
    assert first.startswith("audit trail BROKEN: first broken link: target 'disk': docs/_audit/")
    return first


def key_of(path: Path) -> str:
    return "/".join(path.parts[-6:])


def test_verify_names_a_deleted_record(copy: dict[str, Any]) -> None:
    gone, after = copy["records"][2], copy["records"][3]
    gone.unlink()
    first = broken(copy)
    assert key_of(after) in first and "seq 3 of writer" in first and "missing: deleted" in first


def test_verify_names_an_edited_record(copy: dict[str, Any]) -> None:
    edited = copy["records"][3]
    doc = json.loads(edited.read_text())
    doc["result"] = "ok" if doc["result"] != "ok" else "failed"
    edited.write_text(json.dumps(doc))
    first = broken(copy)
    assert key_of(edited) in first and "edited after it was written" in first


def test_verify_names_reordered_records(copy: dict[str, Any]) -> None:
    a, b = copy["records"][1], copy["records"][2]
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    first = broken(copy)
    assert "moved from where it was written" in first and (key_of(a) in first or key_of(b) in first)


def test_verify_names_the_newest_record_deleted(copy: dict[str, Any]) -> None:
    copy["records"][-1].unlink()
    first = broken(copy)
    assert "heads/" in first and "are missing: deleted" in first


def test_api_pages_the_trail(scene: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_CONFIG", str(scene["tmp"] / "backup_config.yaml"))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(scene["tmp"] / "keys.json"))
    api = TestClient(create_app(monitor=Monitor(ttl=0)))
    everything = api.get("/api/audit").json()
    assert everything["count"] >= 8 and everything["next_cursor"] is None
    seen, cursor = [], None
    while True:
        body = api.get("/api/audit", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [r["id"] for r in body["records"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in everything["records"]]
    alice = api.get("/api/audit", params={"actor": "alice", "source": "docs"}).json()["records"]
    assert {r["action"] for r in alice} == {"backup"} and all(
        set(r["stored_at"]) == {"disk", "s3"} for r in alice
    )
    assert api.get("/api/audit", params={"target": "nope"}).status_code == 400
    assert api.get("/api/audit", params={"limit": "0"}).status_code == 400
    page = api.get("/").text
    assert "<h2>Audit</h2>" in page and "alice" in page and "bob" in page

"""The backup figures reach a real StatsD listener through Airflow's metrics facade.

A UDP socket on 127.0.0.1 stands in for the StatsD server (what is asserted is the StatsD
wire protocol: ``<prefix>.<name>:<value>|<g|ms|c>``); Airflow's ``[metrics]`` config
comes from ``AIRFLOW__METRICS__*`` environment variables, as a deployment would set it.
Real backups (files source -> local targets, the functions the DAG tasks call), a real
restore through the ``restore`` task's function, a monitor round and a failure callback.
"""

from __future__ import annotations

import os
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from include.backup import metrics, tasks
from include.backup.alerts import callbacks
from include.backup.catalog.catalog import list_backups
from include.backup.config.loader import load_config
from include.backup.dr.dags import run_restore
from include.backup.dr.monitor import run_monitor
from include.backup.dr.params import RestoreRequest
from include.backup.keys import KeyRing
from include.backup.targets import build_target
from include.backup.testing import run_backup

pytestmark = pytest.mark.integration

PREFIX = "airflowtest"


@dataclass
class StatsdListener:
    """Collects the StatsD datagrams sent to 127.0.0.1:port."""

    port: int
    sock: socket.socket
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def _serve(self) -> None:
        self.sock.settimeout(0.1)  # a blocked recv would not notice the socket closing
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            with self.lock:
                self.lines.extend(data.decode().splitlines())

    def metrics(self) -> dict[str, list[tuple[float, str]]]:
        """name (prefix removed) -> [(value, type)], in arrival order."""
        out: dict[str, list[tuple[float, str]]] = {}
        with self.lock:
            lines = list(self.lines)
        for line in lines:
            name, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            assert name.startswith(PREFIX + "."), line
            out.setdefault(name[len(PREFIX) + 1 :], []).append((float(value), kind))
        return out

    def wait_for(self, *names: str, timeout: float = 10) -> dict[str, list[tuple[float, str]]]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.metrics()
            if all(n in got for n in names) or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def clear(self) -> None:
        with self.lock:
            self.lines.clear()


@pytest.fixture
def statsd() -> Iterator[StatsdListener]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    listener = StatsdListener(sock.getsockname()[1], sock)
    thread = threading.Thread(target=listener._serve, daemon=True)
    thread.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            # What a deployment puts in airflow.cfg [metrics] (or its environment).
            mp.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
            mp.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
            mp.setenv("AIRFLOW__METRICS__STATSD_PORT", str(listener.port))
            mp.setenv("AIRFLOW__METRICS__STATSD_PREFIX", PREFIX)
            metrics.reinitialize()  # what the task runner does at start, from that config
            yield listener
    finally:
        metrics.reinitialize()  # metrics off again for the other tests
        listener.stop.set()
        thread.join(timeout=5)
        sock.close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    data = tmp_path / "data" / "docs"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n" * 5000)
    (data / "b.bin").write_bytes(os.urandom(200_000))
    config = tmp_path / "backup_config.yaml"
    config.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        dr: {{rpo_hours: 1, rto_hours: 1, storage_min_free_gb: 0}}
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
          disk2: {{type: local, path: {tmp_path}/t2}}
        sources:
          docs: {{type: files, paths: [{data}]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk1, disk2],
             retention_days: 7}}
    """)
    )
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    return tmp_path, data


def one(got: dict[str, list[tuple[float, str]]], name: str, kind: str) -> float:
    values = [v for v, k in got.get(name, []) if k == kind]
    assert values, f"{name}|{kind} not received; got {sorted(got)}"
    return values[-1]


def test_backup_run_and_monitor_figures_reach_statsd(statsd: StatsdListener, env: tuple[Path, Path]) -> None:
    tmp, _ = env
    metas = [run_backup("docs_full", run_id=f"run{i}") for i in (1, 2)]
    config = load_config().config
    held = {m.backup_id: m for m in list_backups(build_target("disk1", config.targets["disk1"]))}
    newest = held[metas[-1]["backup_id"]]

    got = statsd.wait_for("backup.run.docs_full.duration", "backup.run.docs_full.last_run_ok")
    assert 0 < one(got, "backup.run.docs_full.duration", "ms") < 600_000  # a real run, in ms
    assert one(got, "backup.run.docs_full.raw_bytes", "g") == newest.raw_size > 200_000
    assert one(got, "backup.run.docs_full.stored_bytes", "g") == newest.stored_size
    assert [v for v, _ in got["backup.run.docs_full.success"]] == [1.0, 1.0]  # one per run
    assert one(got, "backup.run.docs_full.last_run_ok", "g") == 1

    # A monitor round, as the dr_monitor task runs it.
    statsd.clear()
    report = run_monitor(config)
    assert metrics.emit_monitor_report(report, rto_hours=config.dr.rto_hours) > 0
    src = "backup.source.docs."
    got = statsd.wait_for(src + "last_good_age_seconds", "backup.alerts.total", "backup.target.disk2.backups")
    assert 0 <= one(got, src + "last_good_age_seconds", "g") < 600
    assert one(got, src + "rpo_seconds", "g") == 3600
    assert one(got, src + "rpo_violation", "g") == 0
    assert one(got, src + "success_rate", "g") == 1
    assert one(got, src + "backups", "g") == 2
    assert one(got, src + "stored_bytes.disk1", "g") == sum(m.stored_size for m in held.values())
    assert one(got, src + "dr_test_overdue", "g") == 1  # no DR test on record
    assert one(got, "backup.schedule.docs_full.running_seconds", "g") == 0
    assert one(got, "backup.target.disk2.reachable", "g") == 1
    assert one(got, "backup.alerts.dr_test_overdue", "g") == 1
    assert one(got, "backup.alerts.total", "g") == len(report.alerts)
    assert all(len(name) <= metrics.MAX_NAME_LENGTH for name in got)


def test_restore_rto_and_failure_reach_statsd(statsd: StatsdListener, env: tuple[Path, Path]) -> None:
    tmp, _ = env
    meta = run_backup("docs_full", run_id="run1")
    request = RestoreRequest(
        source=None,
        backup_id=meta["backup_id"],
        point_in_time=None,
        into=str(tmp / "restored"),
        target="disk2",
        only=None,
        overwrite=False,
    )
    summary = run_restore(request.to_xcom())
    got = statsd.wait_for("backup.restore.docs.rto_seconds", "backup.restore.docs.success")
    assert one(got, "backup.restore.docs.rto_seconds", "g") == pytest.approx(summary["seconds"], abs=0.01)
    assert one(got, "backup.restore.docs.duration", "ms") == pytest.approx(summary["seconds"] * 1000, abs=10)
    assert one(got, "backup.restore.docs.rto_met", "g") == 1
    assert one(got, "backup.restore.docs.success", "c") == 1

    # A task of a backup run failed for good: the worker's failure callback.
    class TI:
        dag_id = "backup__docs_full"
        run_id = "manual__2026-01-01T00:00:00+00:00"
        task_id = "upload"
        map_index = 1
        try_number = 3

    context: dict[str, Any] = {
        "ti": TI(),
        "run_id": TI.run_id,
        "logical_date": datetime(2026, 1, 1, tzinfo=UTC),
        "exception": RuntimeError("disk2 unmounted"),
    }
    callbacks.on_backup_failure(context, config=tasks.load_config())  # no recipients: no mail
    got = statsd.wait_for("backup.run.docs_full.failure")
    assert one(got, "backup.run.docs_full.failure", "c") == 1
    assert one(got, "backup.run.docs_full.last_run_ok", "g") == 0

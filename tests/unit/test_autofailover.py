"""Auto-failover's decision (include/backup/dr/autofailover.py): N consecutive failed checks,
once per outage; a flapping primary triggers nothing."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup.alerts.notify import AlertKind
from include.backup.config.schema import BackupConfig
from include.backup.dr import autofailover

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def make_config(**dr: Any) -> BackupConfig:
    return BackupConfig.model_validate(
        {
            "dr": {"failover": {"events_pg": {"secondary": "conn:events_pg_standby"}}, **dr},
            "targets": {"local": {"type": "local", "path": "/srv/backups"}},
            "sources": {"events_pg": {"type": "postgres", "conn_id": "events_pg"}},
            "schedules": [
                {"name": "hourly", "source": "events_pg", "cron": "0 * * * *", "targets": ["local"]}
            ],
        }
    )


def rounds(config: BackupConfig, results: list[str | None], tmp_path) -> list[autofailover.FailoverDecision]:
    out = []
    for i, error in enumerate(results):
        (d,) = autofailover.check_all(config, now=NOW + timedelta(minutes=15 * i), path=tmp_path / "s.json",
                                      checker=lambda _c, _s, e=error: e)  # fmt: skip
        out.append(d)
    return out


def test_auto_failover_triggers_once_after_n_failed_checks(tmp_path):
    config = make_config(auto_failover=True)
    ds = rounds(config, ["refused"] * 5, tmp_path)
    assert [d.trigger is not None for d in ds] == [False, False, True, True, True]
    # The same run id every round: the failover starts once (skip_when_already_exists).
    assert len({d.trigger["trigger_run_id"] for d in ds if d.trigger}) == 1
    trig = ds[2].trigger
    assert trig is not None and trig["trigger_dag_id"] == "failover"
    assert trig["conf"]["source"] == trig["conf"]["confirm"] == "events_pg"
    assert trig["trigger_run_id"] == "autofailover__events_pg__20261207T100000"
    assert all(d.alert is None for d in ds)  # the failover DAG mails DR_ACTIVATED


def test_a_flapping_primary_triggers_nothing(tmp_path):
    ds = rounds(make_config(auto_failover=True), ["down", None, "down", "down", None, "down"], tmp_path)
    assert all(d.trigger is None and d.alert is None for d in ds)
    assert [d.failures for d in ds] == [1, 0, 1, 2, 0, 1]


def test_without_auto_failover_the_same_detection_recommends(tmp_path):
    ds = rounds(make_config(failover_after_checks=2), ["down", "down", "down"], tmp_path)
    assert [d.alert is not None for d in ds] == [False, True, True]
    assert ds[1].alert is not None and ds[2].alert is not None
    assert ds[1].alert.key == ds[2].alert.key  # one outage, one dedupe key: mailed once
    alert = ds[1].alert
    assert alert is not None and alert.kind == AlertKind.FAILOVER_RECOMMENDED
    assert all(d.trigger is None for d in ds)
    command = alert.facts["trigger with"]
    argv = shlex.split(command)
    assert argv[:4] == ["airflow", "dags", "trigger", "failover"]
    assert json.loads(argv[5]) == {"source": "events_pg", "confirm": "events_pg"}


def test_an_outage_after_recovery_is_acted_on_again(tmp_path):
    config = make_config(auto_failover=True, failover_after_checks=2)
    ds = rounds(config, ["d", "d", None, "d", "d"], tmp_path)
    assert [d.trigger is not None for d in ds] == [False, True, False, False, True]
    assert ds[1].trigger is not None and ds[4].trigger is not None
    assert ds[1].trigger["trigger_run_id"] != ds[4].trigger["trigger_run_id"]  # a new outage

"""What on-call can do from a source's row: trigger ``restore`` or ``dr_test`` with the
source's params, open the latest backup's DAG run, and see the last failover.

Airflow 3.3's UI has no URL that opens the trigger form with params filled in (the
Airflow 2 ``/trigger?conf=`` form is gone; apache/airflow#54800 is open), so each action
links to the DAG's page (its Trigger button opens the form) and shows the exact REST call
and CLI command with the params filled in.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

RESTORE_DAG = "restore"
DR_TEST_DAG = "dr_test"


def dag_url(base: str, dag_id: str) -> str:
    return f"{base}/dags/{quote(dag_id, safe='')}"


def run_url(base: str, dag_id: str, run_id: str) -> str:
    return f"{dag_url(base, dag_id)}/runs/{quote(run_id, safe='')}"


def trigger_action(
    base: str, dag_id: str, conf: Mapping[str, Any], label: str, origin: str = ""
) -> dict[str, Any]:
    """A link to ``dag_id``'s page and the REST call / CLI command that trigger it with
    ``conf``; ``origin`` (``http://host:port``) makes the REST call's URL absolute."""
    body = json.dumps({"logical_date": None, "conf": dict(conf)}, separators=(", ", ": "))
    endpoint = f"{origin}{base}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
    return {
        "label": label,
        "dag_id": dag_id,
        "url": dag_url(base, dag_id),
        "conf": dict(conf),
        "rest": (
            f"curl -X POST {shlex.quote(endpoint)} "
            "-H 'Authorization: Bearer $TOKEN' -H 'Content-Type: application/json' "
            f"-d {shlex.quote(body)}"
        ),
        "cli": f"airflow dags trigger {dag_id} --conf {shlex.quote(json.dumps(dict(conf)))}",
    }


def source_actions(
    base: str,
    source: str,
    config: Any,
    latest_good_id: str | None,
    rows: Sequence[dict[str, Any]],
    origin: str = "",
) -> dict[str, Any]:
    """The actions of one source's row: restore its newest verified backup (``into`` left
    for the person to fill: the DAG refuses an empty one), a DR test into the drill's
    environment when one is configured, and the newest backup's DAG run."""
    restore_conf: dict[str, Any] = {"source": source, "backup_id": latest_good_id, "into": ""}
    drill = config.dr.drills.get(source) if config is not None else None
    test_conf: dict[str, Any] = {"test_type": "RESTORE_TEST", "source": source}
    if drill is not None:
        test_conf["target_environment"] = drill.into
    out: dict[str, Any] = {
        "restore": trigger_action(base, RESTORE_DAG, restore_conf, "Restore", origin),
        "dr_test": trigger_action(base, DR_TEST_DAG, test_conf, "DR test", origin),
        "latest_run": None,
    }
    dag_ids = {s.name: s.dag_id for s in config.schedules} if config is not None else {}
    newest = next((r for r in reversed(rows) if r["source"] == source and r.get("dag_run_id")), None)
    if newest is not None and newest["schedule"] in dag_ids:
        dag_id = dag_ids[newest["schedule"]]
        out["latest_run"] = {
            "dag_id": dag_id,
            "run_id": newest["dag_run_id"],
            "backup_id": newest["backup_id"],
            "url": run_url(base, dag_id, newest["dag_run_id"]),
        }
    return out


# --- failovers -------------------------------------------------------------------------


def failover_window(outcomes: Mapping[str, Any]) -> dict[str, Any]:
    """The measured data-loss window of a failover run, for its audit record's ``extra``:
    after promoting a standby, how far its replay was behind the primary; after restoring
    a backup, the backup's age. Empty when the steps did not get that far."""
    restored = outcomes.get("restore") or {}
    switched = restored.get("switch") or {}
    if restored.get("standby_conn_id") and switched.get("replay_lag_seconds") is not None:
        return {
            "data_loss_seconds": float(switched["replay_lag_seconds"]),
            "data_loss_basis": "standby replay lag before the promotion",
            "last_replayed_at": switched.get("last_replayed_at"),
        }
    assessed = outcomes.get("assess") or {}
    if assessed.get("age_seconds") is not None:
        return {
            "data_loss_seconds": float(assessed["age_seconds"]),
            "data_loss_basis": f"age of the restored backup {assessed.get('backup_id')}",
        }
    return {}


def last_failover(audit_rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest ``failover`` audit record of a source (rows oldest first), as shown."""
    row = next((r for r in reversed(audit_rows) if r.get("action") == "failover"), None)
    if row is None:
        return None
    extra = row.get("extra") or {}
    loss = extra.get("data_loss_seconds")
    return {
        "time": str(row["time"])[:19].replace("T", " "),
        "actor": row.get("actor") or "-",
        "result": row.get("result") or "-",
        "reason": row.get("reason") or "",
        "run_id": row.get("run_id"),
        "data_loss_seconds": loss,
        "data_loss": _loss_text(loss),
        "data_loss_basis": extra.get("data_loss_basis", ""),
    }


def _loss_text(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

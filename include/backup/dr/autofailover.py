"""Auto-failover: ``dr_monitor`` checks the primary of every source with a
``dr.failover.<source>`` entry each round and, once it failed ``dr.failover_after_checks``
consecutive checks (default 3, at least 2: one blip is no outage), acts once per
outage (the run id and the mail's dedupe key name the outage's first failed check):

- ``dr.auto_failover: true``: triggers the ``failover`` DAG (the same DAG, params and
  guards as a manual failover; its ``notify`` task mails DR_ACTIVATED);
- ``dr.auto_failover: false``: mails FAILOVER_RECOMMENDED with the exact command that
  triggers it.

A check is a connection and ``SELECT 1`` on the source's Airflow connection (PostgreSQL
sources; other source types are not checked and say so in the monitor's issues). A
successful check resets the count, so a flapping primary triggers nothing. The counts live
in a JSON file next to the alert state (``$BACKUP_ALERTS_STATE_DIR``, else
``$AIRFLOW_HOME``): ``dr_monitor`` runs one round at a time, on whichever worker, so that
directory must be shared like the alert state is.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.backup.alerts.notify import Alert, AlertKind, default_state_path, redact
from include.backup.config.schema import BackupConfig
from include.backup.dr.standby import standby_cursor

log = logging.getLogger(__name__)

STATE_FILE_NAME = "backup-failover-checks.json"
FAILOVER_DAG = "failover"
RUN_ID_PREFIX = "autofailover__"

Checker = Callable[[BackupConfig, str], str | None]


@dataclass(frozen=True)
class FailoverDecision:
    """One source's check this round: ``trigger`` (the TriggerDagRunOperator kwargs) when
    the monitor fails over, ``alert`` when it recommends it."""

    source: str
    failures: int
    error: str | None
    trigger: dict[str, Any] | None = None
    alert: Alert | None = None
    note: str | None = None


def state_path(path: str | os.PathLike[str] | None = None) -> Path:
    if path is not None:
        p = Path(path)
        return p / STATE_FILE_NAME if p.is_dir() else p
    return default_state_path().parent / STATE_FILE_NAME


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no file yet, or a torn one: counting starts again (it errs on not acting)
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def check_primary(config: BackupConfig, source: str) -> str | None:
    """Why the primary of ``source`` is down (connect + ``SELECT 1``), or None when it
    answered. Raises NotImplementedError for a source type that is not checked."""
    cfg = config.sources[source]
    conn_id = getattr(cfg, "conn_id", None)
    if cfg.type != "postgres" or not conn_id:
        raise NotImplementedError(f"auto-failover checks PostgreSQL sources only; {source} is {cfg.type}")
    try:
        with standby_cursor(conn_id) as (cur, _server):
            cur.execute("SELECT 1")
            cur.fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure to answer counts as down
        return redact(str(exc))[:500]
    return None


def trigger_command(source: str) -> str:
    """The exact CLI command that fails ``source`` over (what FAILOVER_RECOMMENDED mails)."""
    conf = json.dumps({"source": source, "confirm": source})
    return f"airflow dags trigger {FAILOVER_DAG} --conf {shlex.quote(conf)}"


def _recommend(source: str, failures: int, since: str, error: str) -> Alert:
    command = trigger_command(source)
    return Alert(
        AlertKind.FAILOVER_RECOMMENDED,
        source,
        summary=f"primary of {source} failed {failures} consecutive checks since {since}",
        facts={"source": source, "failed checks": str(failures), "down since": since,
               "last error": error, "trigger with": command},  # fmt: skip
        key=f"{AlertKind.FAILOVER_RECOMMENDED.value}:{source}:{since}",
        dag_id=FAILOVER_DAG,
        action=f"Confirm the primary is down, then run: {command} (or set dr.auto_failover: true).",
    )


def decide(
    config: BackupConfig, source: str, error: str | None, entry: dict[str, Any], now: datetime
) -> tuple[FailoverDecision, dict[str, Any]]:
    """This round's decision for ``source`` from its check result and its stored
    ``entry`` ({failures, since}); returns (decision, the entry to store).

    From the N-th failed check on, every round repeats the same action: the trigger's run
    id names the outage (the failover starts once: ``skip_when_already_exists``) and the
    mail's dedupe key too (mailed once a day while the outage lasts; an SMTP failure is
    retried next round instead of losing the mail)."""
    if error is None:
        return FailoverDecision(source, 0, None), {}
    failures = int(entry.get("failures", 0)) + 1
    since = str(entry.get("since") or now.isoformat(timespec="seconds"))
    new = {"failures": failures, "since": since, "error": error}
    needed = config.dr.failover_after_checks
    if failures < needed:
        note = f"primary of {source} down ({failures}/{needed} checks): {error}"
        return FailoverDecision(source, failures, error, note=note), new
    if not config.dr.auto_failover:
        alert = _recommend(source, failures, since, error)
        return FailoverDecision(source, failures, error, alert=alert), new
    stamp = since.replace(":", "").replace("-", "").split("+")[0]
    conf = {"source": source, "confirm": source, "dry_run": False, "overwrite": False,
            "notes": f"auto-failover by dr_monitor: primary failed {failures} consecutive checks "
                     f"since {since} ({error})"}  # fmt: skip
    run_id = f"{RUN_ID_PREFIX}{source}__{stamp}"
    trigger = {"trigger_dag_id": FAILOVER_DAG, "trigger_run_id": run_id, "conf": conf}
    return FailoverDecision(source, failures, error, trigger=trigger), new


def check_all(
    config: BackupConfig,
    *,
    now: datetime | None = None,
    path: str | os.PathLike[str] | None = None,
    checker: Checker = check_primary,
) -> list[FailoverDecision]:
    """Check every source with a ``dr.failover`` entry once and update the stored counts."""
    now = now or datetime.now(UTC)
    file = state_path(path)
    state = _read(file)
    decisions = []
    for source in config.dr.failover:
        if source not in config.sources:
            continue  # config_warnings names it
        try:
            error = checker(config, source)
        except NotImplementedError as exc:
            decisions.append(FailoverDecision(source, 0, None, note=str(exc)))
            continue
        decision, entry = decide(config, source, error, state.get(source, {}), now)
        state[source] = entry
        decisions.append(decision)
        if decision.note or decision.trigger or decision.alert:
            log.warning("auto-failover: %s", decision.note or decision.alert or decision.trigger)
    _write(file, {k: v for k, v in state.items() if v})
    return decisions

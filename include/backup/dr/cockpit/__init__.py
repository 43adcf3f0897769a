"""The DR page as on-call's cockpit: history charts per source, actions, the last failover
and a page per backup. Everything is read from the targets (catalog index rows, DR test
reports, audit records), so it keeps working with Airflow's database gone.

- :mod:`.svg`: the tiny SVG chart renderer (no scripts, no assets);
- :mod:`.history`: a source's series over 30/90 days from the index rows and reports;
- :mod:`.stores`: incremental caches of the DR test reports and audit records;
- :mod:`.actions`: trigger links, REST calls, the latest run, the last failover;
- :mod:`.backup`: one backup's manifest fields, lineage, drills and audit records.

:class:`Cockpit` ties them to the DR app's :class:`~include.backup.dr.web.Monitor` (whose
cached ``backups()`` rows come from the catalog index, never from whole manifests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup.dr.cockpit.actions import last_failover, source_actions
from include.backup.dr.cockpit.backup import BackupNotFound, backup_detail
from include.backup.dr.cockpit.history import PERIODS, SourceHistory, source_history
from include.backup.dr.cockpit.stores import TargetStores
from include.backup.dr.reports import DRTestReport

__all__ = ["PERIODS", "BackupNotFound", "Cockpit", "SourceHistory", "airflow_base", "parse_days"]

DEFAULT_TTL = 30.0
FAILOVER_DAYS = 90  # how far back the overview looks for a source's last failover


def _midnight(moment: datetime) -> datetime:
    """A day's start: the audit trail is read by whole days (its keys are dated)."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def parse_days(value: str | int | None) -> int:
    """``?days=``: 30 or 90 (default 30); anything else is a ValueError naming the choices."""
    if value in (None, ""):
        return PERIODS[0]
    try:
        days = int(str(value))
    except ValueError:
        days = -1
    if days not in PERIODS:
        raise ValueError(f"days must be one of {', '.join(map(str, PERIODS))}, got {value!r}")
    return days


def airflow_base(root_path: str) -> str:
    """The Airflow UI's base path from the DR app's mount point (``/dr`` -> ``""``,
    ``/airflow/dr`` -> ``/airflow``; unmounted: ``""``)."""
    return root_path.rstrip("/").rsplit("/", 1)[0] if root_path else ""


class Cockpit:
    """Reports and audit records read through :class:`TargetStores`, each kept for
    ``ttl`` seconds (thread-safe), and the cockpit's views built from them."""

    def __init__(self, backups: Callable[[bool], tuple[list[dict[str, Any]], list[str]]],
                 stores: TargetStores | None = None, ttl: float = DEFAULT_TTL) -> None:  # fmt: skip
        self._backups = backups
        self.stores = stores or TargetStores()
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[Any, tuple[float, Any]] = {}

    def _cached(self, key: Any, refresh: bool, make: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and not refresh and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
        value = make()
        with self._lock:
            self._cache[key] = (time.monotonic(), value)
        return value

    def rows(self, refresh: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        return self._backups(refresh)

    def reports(self, config: Any, refresh: bool = False) -> tuple[list[DRTestReport], list[str]]:
        return self._cached("reports", refresh, lambda: self.stores.reports(config))  # type: ignore[no-any-return]

    def audit(
        self, config: Any, source: str, refresh: bool = False, since: datetime | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        return self._cached(  # type: ignore[no-any-return]
            ("audit", source, since), refresh, lambda: self.stores.audit(config, source, since)
        )

    def histories(
        self, config: Any, days: int, *, now: datetime | None = None, refresh: bool = False,
        sources: list[str] | None = None,
    ) -> tuple[dict[str, SourceHistory], list[str]]:  # fmt: skip
        """The charts of every source of the config (or ``sources``) over ``days`` days."""
        rows, problems = self.rows(refresh)
        reports, report_problems = self.reports(config, refresh)
        moment = now or datetime.now(UTC)
        out = {
            name: source_history(
                name, rows, reports, days=days, now=moment,
                rpo_hours=config.dr.rpo_hours, rto_hours=config.dr.rto_hours,
            )
            for name in (sources if sources is not None else list(config.sources))
        }  # fmt: skip
        return out, [*problems, *report_problems]

    def source_view(
        self, config: Any, source: str, latest_good_id: str | None, *, base: str, origin: str = "",
        refresh: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """A source's actions and its last failover in :data:`FAILOVER_DAYS` days (from its
        audit trail: only those days' records are read)."""
        rows, _ = self.rows(refresh)
        since = _midnight(datetime.now(UTC) - timedelta(days=FAILOVER_DAYS))
        audit_rows, problems = self.audit(config, source, refresh, since)
        return {
            "actions": source_actions(base, source, config, latest_good_id, rows, origin),
            "failover": last_failover(audit_rows),
            "failover_days": FAILOVER_DAYS,
            "problems": problems,
        }

    def backup(self, config: Any, source: str, backup_id: str, refresh: bool = False) -> dict[str, Any]:
        """:func:`~.backup.backup_detail` from the cached rows, reports and audit records."""
        if source not in config.sources:
            raise BackupNotFound(
                f"no source named {source!r} in the config; known: {', '.join(config.sources)}"
            )
        rows, _ = self.rows(refresh)
        reports, _ = self.reports(config, refresh)
        row = next((r for r in rows if r["source"] == source and r["backup_id"] == backup_id), None)
        # No record names a backup before it started: older days are not read.
        since = _midnight(datetime.fromisoformat(row["started_at"])) if row else None
        audit_rows, _ = self.audit(config, source, refresh, since)
        return backup_detail(config, rows, reports, audit_rows, source, backup_id)

"""The audit trail in the DR plugin: ``GET /dr/api/audit`` (JSON, paged like
``/dr/api/backups``) and the rows of the page's Audit section. Read from the targets,
so it works with Airflow's database gone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

from include.backup import audit_cli
from include.backup.dr import paging
from include.backup.errors import BackupError

PAGE_DAYS = 30  # the DR page shows this many days of the trail
PAGE_ROWS = 50  # ... at most this many rows, newest first
CACHE_S = 30.0


class RecentAudit:
    """The page's newest rows, read at most once per ``ttl`` seconds (thread-safe)."""

    def __init__(self, ttl: float = CACHE_S) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._rows: tuple[float, list[dict[str, Any]], list[str]] | None = None

    def rows(self, config: Any, refresh: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        with self._lock:
            if self._rows is None or refresh or time.monotonic() - self._rows[0] >= self.ttl:
                since = datetime.now(UTC) - timedelta(days=PAGE_DAYS)
                try:
                    rows, problems = audit_cli.list_rows(config, since=since)
                except Exception as exc:  # noqa: BLE001 - the page shows it instead of failing
                    rows, problems = [], [f"cannot read the audit trail: {exc}"]
                self._rows = (time.monotonic(), [page_row(r) for r in reversed(rows[-PAGE_ROWS:])], problems)
            return self._rows[1], self._rows[2]


def page_row(row: dict[str, Any]) -> dict[str, Any]:
    """Display strings of one record for the page."""
    return {
        "time": str(row["time"])[:19].replace("T", " "),
        "actor": row.get("actor") or "-",
        "action": row.get("action") or "-",
        "source": row.get("source") or "-",
        "target": row.get("target") or "-",
        "result": row.get("result") or "-",
        "reason": row.get("reason") or "",
        "backup_ids": ", ".join(row.get("backup_ids") or []) or "-",
        "run_id": row.get("run_id") or "-",
    }


def page_of(
    rows: list[dict[str, Any]], *, limit: int | None, after: Any, since: datetime | None
) -> tuple[list[dict[str, Any]], str | None]:
    """paging.page over audit rows: ordered by (time, id) as backups are by (started_at,
    backup_id); the cursor is built the same way."""
    shim = [{**r, "started_at": r["time"], "backup_id": r["id"]} for r in rows]
    chosen, cursor = paging.page(shim, limit=limit, after=after, since=since)
    return [{k: v for k, v in r.items() if k not in ("started_at", "backup_id")} for r in chosen], cursor


def add_routes(app: FastAPI, deps: list[Any], load: Callable[[], Any]) -> None:
    """``GET /api/audit`` on the DR app (mounted at /dr)."""

    @app.get("/api/audit", dependencies=deps)
    def audit_records(
        source: str | None = None,
        target: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        limit: str | None = Query(None, description=f"rows per page, 1..{paging.MAX_LIMIT} (default: all)"),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
        since: str | None = Query(None, description="only records at or after (ISO)"),
    ) -> JSONResponse:
        page_size, after = paging.parse_limit(limit), paging.parse_cursor(cursor)
        since_at = paging.parse_since(since)
        try:
            config = load().config
        except Exception as exc:  # noqa: BLE001 - the config cannot be loaded
            return JSONResponse({"error": f"cannot load the backup config: {exc}"}, status_code=503)
        try:
            rows, problems = audit_cli.list_rows(config, source=source, target=target, since=since_at)
        except BackupError as exc:  # an unknown source or target: say which
            raise HTTPException(400, str(exc)) from None
        chosen = [
            r
            for r in rows
            if (action is None or r["action"] == action) and (actor is None or r["actor"] == actor)
        ]
        rows_page, next_cursor = page_of(chosen, limit=page_size, after=after, since=since_at)
        return JSONResponse(
            {"records": rows_page, "count": len(rows_page), "next_cursor": next_cursor, "problems": problems}
        )

"""Paging and the ``since`` filter of ``GET /dr/api/backups``.

Rows are ordered oldest first by (started_at, backup_id), so a cursor is the last row's
pair: the next page starts strictly after it, and backups published meanwhile never shift
a page (they sort after every row already served, or land where the client has not read).
A cursor is opaque to clients (base64url of that pair). Bad values answer 400 naming the
parameter and what it takes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException

MAX_LIMIT = 10_000


def _bad(name: str, value: str, what: str) -> HTTPException:
    return HTTPException(400, f"{name}: {what}, got {value[:80]!r}")


def parse_limit(value: str | None) -> int | None:
    """``limit``: 1..MAX_LIMIT rows per page; None (absent) for every row."""
    if value is None or value == "":
        return None
    try:
        limit = int(value)
    except ValueError:
        raise _bad("limit", value, f"give a whole number from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad("limit", value, f"give a whole number from 1 to {MAX_LIMIT}")
    return limit


def parse_type(value: str | None, allowed: Iterable[str]) -> str | None:
    """``type``: one of ``allowed`` (any case); None (absent) for every type. An unknown
    type is a 400 naming the allowed ones, not an empty list that looks like no backups."""
    if value is None or value == "":
        return None
    choices = list(allowed)
    if value.strip().upper() not in choices:
        raise _bad("type", value, f"give one of {', '.join(choices)}")
    return value.strip().upper()


def parse_since(value: str | None) -> datetime | None:
    """``since``: an ISO date or datetime (UTC when no offset); rows started at or after it."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _bad("since", value, "give an ISO date or datetime, e.g. 2026-03-01T00:00:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def make_cursor(row: dict[str, Any]) -> str:
    raw = json.dumps([row["started_at"], row["backup_id"]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(value: str | None) -> tuple[datetime, str] | None:
    """``cursor``: the ``next_cursor`` of the previous page."""
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        started, backup_id = json.loads(raw)
        return _utc(str(started)), str(backup_id)
    except (ValueError, TypeError, binascii.Error):
        raise _bad("cursor", value, "not a cursor this API gave out; pass next_cursor unchanged") from None


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def page(
    rows: Iterable[dict[str, Any]],
    *,
    limit: int | None,
    after: tuple[datetime, str] | None,
    since: datetime | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """(this page's rows, the cursor of the next page or None) from rows ordered oldest
    first."""
    out: list[dict[str, Any]] = []
    for row in rows:
        key = (_utc(row["started_at"]), row["backup_id"])
        if (since is not None and key[0] < since) or (after is not None and key <= after):
            continue
        if limit is not None and len(out) == limit:
            return out, make_cursor(out[-1])
        out.append(row)
    return out, None

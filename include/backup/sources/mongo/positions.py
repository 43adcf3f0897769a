"""Oplog positions of mongo backups and the continuity of their chains.

``Manifest.position`` holds ``oplog_start`` / ``oplog_end`` as ``{"t": seconds, "i":
increment}`` and ``start_time`` / ``end_time`` (ISO-8601 UTC, the server's clock). A log's
``oplog_start`` is its parent's ``oplog_end`` (see :func:`continuity`); :func:`check_chain`
checks a whole chain before a restore writes anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, BinaryIO

from include.backup.catalog import chains
from include.backup.catalog.chains import ChainRules
from include.backup.catalog.manifest import Manifest
from include.backup.errors import RestoreRefused
from include.backup.sources.mongo.layout import LOG_TYPES, PAYLOAD_FORMAT, SOURCE_TYPE

# --- timestamps and times ----------------------------------------------------------------


def ts_to_pos(ts: Any) -> dict[str, int] | None:
    if ts is None:
        return None
    return {"t": int(ts.time), "i": int(ts.inc)}


def pos_to_ts(pos: Any) -> Any:
    from bson.timestamp import (
        Timestamp,  # lazy: pymongo's bson: loaded only when a mongo backup runs
    )

    if not isinstance(pos, dict) or "t" not in pos or "i" not in pos:
        return None
    return Timestamp(int(pos["t"]), int(pos["i"]))


def pos_text(pos: Any) -> str:
    if not isinstance(pos, dict):
        return "(none)"
    moment = datetime.fromtimestamp(int(pos.get("t", 0)), UTC)
    return f"ts({pos.get('t')}, {pos.get('i')}) ~{iso(moment)}"


def iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- continuity --------------------------------------------------------------------------


def continuity(prev: Manifest, cur: Manifest) -> str | None:
    """None when ``cur`` starts exactly where ``prev`` ended in the oplog, else what is
    missing. For :func:`include.backup.catalog.chains.pitr_chain` and restore."""
    start, end = cur.position.get("oplog_start"), prev.position.get("oplog_end")
    if not isinstance(start, dict) or not isinstance(end, dict):
        return (
            f"{prev.backup_id if not isinstance(end, dict) else cur.backup_id} records no "
            "oplog position"
        )
    if (int(start["t"]), int(start["i"])) != (int(end["t"]), int(end["i"])):
        return (
            f"oplog entries between {pos_text(end)} (end of {prev.backup_id}) and "
            f"{pos_text(start)} (start of {cur.backup_id}) are in no backup"
        )
    return None


_FORMAT = (
    "backup {m.backup_id} is a {m.source_type} backup in format {m.payload_format!r}; "
    f"the mongo source restores {PAYLOAD_FORMAT!r} only"
)
CHAIN_RULES = ChainRules(
    base_format=PAYLOAD_FORMAT,
    link_format=PAYLOAD_FORMAT,
    source_type=SOURCE_TYPE,
    start_types=frozenset({"FULL", "SCHEMA"}),
    link_types=frozenset(LOG_TYPES),
    wrong_format=_FORMAT,
    wrong_start=(
        "backup chain broken: it starts with {first.backup_id}, a {first.backup_type}; "
        "a mongo restore starts from a FULL (or SCHEMA) backup"
    ),
    gap=(
        "backup chain broken between {prev.backup_id} and {cur.backup_id}: "
        "{problem}; restore to a point before {prev_end} or from a newer FULL backup"
    ),
)


def check_chain(
    manifests: list[Manifest],
    items: list[tuple[Manifest, BinaryIO]],
    until: datetime | None,
) -> list[tuple[Manifest, BinaryIO]]:
    """Validate the whole chain before anything is written (one FULL, or SCHEMA, then
    log/incremental backups, each continuing the last); return the part to apply."""
    chains.check_chain(manifests, CHAIN_RULES, continuity)
    if until is None:
        return items
    return _until_slice(manifests, items, until)


def _until_slice(
    manifests: list[Manifest], items: list[tuple[Manifest, BinaryIO]], until: datetime
) -> list[tuple[Manifest, BinaryIO]]:
    """For a point-in-time restore: check ``until`` is in reach; drop logs after it."""
    base = manifests[0]
    if base.backup_type != "FULL":
        raise RestoreRefused(
            "a point-in-time restore needs a FULL backup; this chain starts with a SCHEMA"
        )
    lo = parse_iso(base.position.get("end_time"))
    hi = parse_iso(manifests[-1].position.get("end_time"))
    if lo is None or hi is None:
        raise RestoreRefused(
            "the chain's manifests record no end_time; a point-in-time restore is not possible"
        )
    if not lo <= until <= hi:
        raise RestoreRefused(
            f"point in time {iso(until)} is outside the window this chain reaches: "
            f"{iso(lo)} – {iso(hi)}"
        )
    # Logs that start after `until` add nothing.
    keep = [items[0]]
    for m, s in items[1:]:
        start = parse_iso(m.position.get("start_time"))
        if start is not None and start > until:
            break
        keep.append((m, s))
    return keep

"""WAL positions for physical PostgreSQL backups: LSNs, segment file names and ranges, the
continuity of a chain's WAL, and the payload formats that carry it.

Position keys a physical backup records (see include/backup/catalog/chains.py for the
common ones): ``start_time``, ``end_time`` (ISO-8601 UTC), ``start_lsn``, ``end_lsn``,
``timeline``, ``wal_first``, ``wal_last`` (segment file names), ``wal_segment_size``,
``base_id`` and ``base_wal_last`` (the base backup this chain grows from).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from include.backup.catalog.manifest import Manifest
from include.backup.errors import IntegrityError

FORMAT_BASE = "pg_basebackup-tar"
FORMAT_WAL = "pg_wal-tar"
PHYSICAL_FORMATS = (FORMAT_BASE, FORMAT_WAL)
DEFAULT_SEGMENT_SIZE = 16 << 20
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


# --- WAL names -------------------------------------------------------------------------


def parse_lsn(lsn: str) -> int:
    """``16/B374D848`` as a number."""
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def segment_name(timeline: int, segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_of(lsn: str | int, timeline: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    value = parse_lsn(lsn) if isinstance(lsn, str) else lsn
    return segment_name(timeline, value // seg_size, seg_size)


def split_segment(name: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, segment number) of a WAL file name."""
    if not SEGMENT_RE.match(name):
        raise ValueError(f"{name!r} is not a WAL segment file name")
    per_id = 0x100000000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:], 16)


def next_segment(name: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    tli, segno = split_segment(name, seg_size)
    return segment_name(tli, segno + 1, seg_size)


def segment_range(first: str, last: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    tli, a = split_segment(first, seg_size)
    tli2, b = split_segment(last, seg_size)
    if tli != tli2:
        raise ValueError(f"WAL range {first}..{last} crosses a timeline switch")
    return [segment_name(tli, n, seg_size) for n in range(a, b + 1)]


def continuity(prev: Manifest, cur: Manifest) -> str | None:
    """None when ``cur``'s WAL starts with the segment right after ``prev``'s last one
    (same timeline), else what is missing. Logical backups have no WAL: no opinion."""
    if cur.payload_format != FORMAT_WAL or prev.payload_format not in PHYSICAL_FORMATS:
        return None
    seg = int(prev.position.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
    last, first = prev.position.get("wal_last"), cur.position.get("wal_first")
    if not last or not first:
        return f"{prev.backup_id} or {cur.backup_id} records no WAL range (wal_last/wal_first)"
    expected = next_segment(last, seg)
    if first == expected:
        return None
    try:
        (t1, a), (t2, b) = split_segment(expected, seg), split_segment(first, seg)
    except ValueError as exc:
        return str(exc)
    if t1 != t2:
        return f"timeline changes from {t1} to {t2} between {last} and {first}"
    if b > a:
        missing = segment_name(t1, b - 1, seg)
        span = expected if expected == missing else f"{expected} – {missing}"
        return f"WAL segments {span} are in no backup (next needed after {last}, got {first})"
    return f"WAL overlaps: {cur.backup_id} starts at {first}, expected {expected}"


# --- positions ---------------------------------------------------------------------------


def check_wal_complete(wal_dir: Path, manifests: list[Manifest]) -> None:
    """Every segment from the base backup's first to the last backup's last is there."""
    seg = int(manifests[0].position.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
    needed = segment_range(manifests[0].position["wal_first"], manifests[-1].position["wal_last"], seg)
    for s in needed:
        if not (wal_dir / s).is_file():
            raise IntegrityError(
                f"WAL segment {s} is in none of the chain's backups "
                f"({', '.join(m.backup_id for m in manifests)}); cannot replay past it"
            )


def size_setting(text: str) -> int:
    """A size setting as the server shows it (``16MB``) in bytes (default: 16 MiB)."""
    m = re.fullmatch(r"(\d+)\s*([kMG]?B)?", str(text).strip())
    if not m:
        return DEFAULT_SEGMENT_SIZE
    mult = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "B": 1, None: 1}[m.group(2)]
    return int(m.group(1)) * mult


def iso_utc(moment: datetime) -> str:
    """A position time: ISO-8601 in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def lsn_text(value: int) -> str:
    """A number as an LSN (``16/B374D848``)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"

"""What a DR restore gave back, against what its manifest recorded; and a failed step
written as one finding. Shared by the DR tests (:mod:`include.backup.dr.drtest`) and the
failover's verify step (:mod:`include.backup.dr.failover`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.backup.alerts.notify import redact
from include.backup.errors import BackupError


def error_text(exc: BaseException) -> str:
    """An exception as one line for a report's issues, anything secret-looking masked."""
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BackupError) else str(exc)
    return redact(" ".join(text.split()))


def compare_with_manifest(  # noqa: C901 - one rule per source type
    source_type: str,
    recorded: Mapping[str, Any],
    restored: Mapping[str, Any],
    *,
    chain_length: int = 1,
    only: bool = False,
) -> tuple[list[str], list[str]]:
    """(issues, notes): what the restore gave back against what the manifest recorded."""
    issues: list[str] = []
    notes: list[str] = []
    if source_type == "postgres":
        want = recorded.get("tables")
        got = restored.get("tables")
        if not isinstance(want, dict) or not isinstance(got, dict):
            notes.append("no per-table row counts to compare (physical backup)")
            return issues, notes
        method = recorded.get("row_count_method", "exact")
        for table, n in sorted(want.items()):
            if table not in got:
                issues.append(f"table {table} missing after restore (the backup recorded {n} rows)")
            elif method in ("exact", "schema-only") and int(got[table]) != int(n):
                issues.append(f"table {table}: {got[table]} rows restored, the backup recorded {n}")
        if method not in ("exact", "schema-only"):
            notes.append(f"row counts recorded as {method}: only tables compared")
        extra = sorted(set(got) - set(want))
        if extra:
            notes.append(f"tables not in the manifest: {', '.join(extra)}")
        return issues, notes
    if source_type == "mongo":
        want = recorded.get("collections") or {}
        got = restored.get("collections") or {}
        for name, n in sorted(want.items()):
            if name not in got:
                issues.append(f"collection {name} missing after restore (the backup recorded {n})")
            elif chain_length == 1 and int(got[name]) != int(n):
                issues.append(f"collection {name}: {got[name]} documents restored, the backup recorded {n}")
        if chain_length > 1:
            notes.append("chain with oplog: document counts not comparable, collections checked")
        return issues, notes
    if source_type == "files":
        if only:
            notes.append("partial restore: file counts not compared")
            return issues, notes
        for kind in ("files", "dirs", "symlinks"):
            want_n = recorded.get(f"tree_{kind}")
            if want_n is None:
                continue
            got_n = restored.get(kind)
            if got_n is None or int(got_n) != int(want_n):
                issues.append(f"{kind}: {got_n} restored, the backup recorded {want_n}")
        return issues, notes
    notes.append(f"no integrity rule for source type {source_type}")
    return issues, notes

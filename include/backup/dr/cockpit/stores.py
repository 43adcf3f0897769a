"""Incremental reads of what the cockpit needs besides the catalog index: the DR test
reports (``_dr_tests/``) and the audit trail (``<source>/_audit/``) at every target.

Both are small JSON objects under unique names that are never rewritten with other
content (a report is rewritten only by a retry of the same test; an audit record never),
so each cache lists the prefix on every refresh (one listing per target) and reads only
the objects it has not seen (by key and size); objects gone from the listing are
forgotten. The page therefore reads each report and record once per process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from include.backup.alerts.notify import redact
from include.backup.audit import audit_prefix
from include.backup.audit_read import list_trail
from include.backup.dr.reports import REPORTS_PREFIX, DRTestReport
from include.backup.errors import ObjectNotFound
from include.backup.targets import build_target
from include.backup.targets.base import Target

log = logging.getLogger(__name__)

TargetFactory = Callable[[str, Any], Target]


class _ObjectCache:
    """Parsed objects per (target, key, size), refreshed by listing."""

    def __init__(self, parse: Callable[[bytes], Any]) -> None:
        self._parse = parse
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, int], Any] = {}

    def refresh(
        self, target: Target, listed: list[tuple[str, int]], scope: Callable[[str], bool]
    ) -> list[Any]:
        """The parsed objects of ``listed`` ((key, size) at ``target``), reading only new
        ones; cached keys in ``scope`` (what the listing covered) but not listed are gone."""
        wanted = {(target.name, key, size) for key, size in listed}
        out: list[Any] = []
        with self._lock:
            for stale in [k for k in self._seen if k[0] == target.name and scope(k[1]) and k not in wanted]:
                del self._seen[stale]
            for ident in sorted(wanted):
                if ident not in self._seen:
                    try:
                        self._seen[ident] = self._parse(target.read_bytes(ident[1]))
                    except ObjectNotFound:
                        continue  # deleted between the listing and the read
                    except (ValidationError, ValueError) as exc:
                        log.warning("target '%s': %s is unreadable (%s); skipped",
                                    target.name, ident[1], str(exc).splitlines()[0])  # fmt: skip
                        self._seen[ident] = None  # not read again until it changes
                if self._seen[ident] is not None:
                    out.append(self._seen[ident])
        return out


def _audit_doc(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not an audit record")
    return {k: v for k, v in doc.items() if k not in ("mac", "prev", "key_id")}


class TargetStores:
    """The DR test reports and audit records at the targets of a config, cached."""

    def __init__(self, build: TargetFactory = build_target) -> None:
        self._build = build
        self._reports = _ObjectCache(DRTestReport.from_json)
        self._audit = _ObjectCache(_audit_doc)

    def _targets(self, config: Any, problems: list[str]) -> list[Target]:
        built: list[Target] = []
        for name, spec in config.targets.items():
            try:
                built.append(self._build(name, spec))
            except Exception as exc:  # noqa: BLE001 - one bad target must not hide the rest
                problems.append(f"target '{name}': {redact(exc)}")
        return built

    def reports(self, config: Any) -> tuple[list[DRTestReport], list[str]]:
        """Every DR test report at every target (copies merged by test id), oldest first."""
        problems: list[str] = []
        merged: dict[str, DRTestReport] = {}
        for target in self._targets(config, problems):
            try:
                listed = [
                    (o.key, o.size) for o in target.list(f"{REPORTS_PREFIX}/") if o.key.endswith(".json")
                ]
                in_scope = lambda key: key.startswith(f"{REPORTS_PREFIX}/")  # noqa: E731
                for report in self._reports.refresh(target, listed, in_scope):
                    merged.setdefault(report.test_id, report)
            except Exception as exc:  # noqa: BLE001 - an unreachable target: the others still count
                problems.append(f"target '{target.name}': cannot list DR test reports ({redact(exc)})")
        return sorted(merged.values(), key=lambda r: (r.started_at, r.test_id)), problems

    def audit(
        self, config: Any, source: str, since: datetime | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The audit records of ``source`` at every target (copies merged by id, ``stored_at``
        lists the targets), oldest first; with ``since``, only those of its day and later
        (the day is in the key: older records are not read). Not checked: ``audit
        --verify`` does that."""
        problems: list[str] = []
        rows: dict[str, dict[str, Any]] = {}
        prefix = audit_prefix(source)
        day = f"{since:%Y/%m/%d}" if since else ""

        def in_scope(key: str) -> bool:
            return key.startswith(prefix) and key[len(prefix) : len(prefix) + 10] >= day

        for target in self._targets(config, problems):
            try:
                # A record is never rewritten: its key alone identifies its content.
                listed = [(key, 0) for key in list_trail(target, source).records if in_scope(key)]
                for doc in self._audit.refresh(target, listed, in_scope):
                    if "id" not in doc or "time" not in doc:
                        continue
                    row = rows.setdefault(doc["id"], {**doc, "stored_at": []})
                    row["stored_at"].append(target.name)
            except Exception as exc:  # noqa: BLE001 - an unreachable target: the others still count
                problems.append(f"target '{target.name}': cannot read the audit trail ({redact(exc)})")
        return sorted(rows.values(), key=lambda r: (str(r["time"]), r["id"])), problems

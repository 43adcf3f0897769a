"""Reading, checking and pruning the audit trail that audit.py writes at the targets.

The check (``audit --verify``) walks each writer's chain backwards from its head: every
record must carry a valid HMAC, sit under the name and date it was written with, follow
the record its ``prev`` names with the next sequence number, and not be older than the
record before it. So a deleted record (a gap, or a head naming a record that is gone), an
edited one (its MAC fails, or the next record's ``prev`` no longer matches), and a
reordered one (moved to another name, or swapped with another) each break a link, which
the check names.

Retention removes whole old stretches of a chain from its start: it first writes a signed
``pruned/<writer>.json`` naming the last record removed, so the chain's new first record
still links to something checkable.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from include.backup.audit import UNKNOWN_KEY, audit_prefix, check_mac, parse_time, pruned_key, sign
from include.backup.errors import ObjectNotFound
from include.backup.keys import KeyRing
from include.backup.targets.base import Target

_RECORD = re.compile(r"(\d{4})/(\d{2})/(\d{2})/([^/]+)\.json")
_META = re.compile(r"(heads|pruned)/([^/]+)\.json")


@dataclass
class Found:
    """One record as stored: its key, bytes, parsed body, and what is wrong with it alone."""

    key: str
    data: bytes
    doc: dict[str, Any]
    problem: str | None = None
    unknown_key: str | None = None  # signed with a key the ring lacks (retired): needs a later voucher

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def sort_key(self) -> tuple[str, str]:
        return str(self.doc.get("time", "")), self.key


@dataclass(order=True)
class Problem:
    """A broken link, ordered by when it happened (the first broken link first)."""

    time: str
    target: str
    key: str
    message: str = field(compare=False)

    def __str__(self) -> str:
        return f"target {self.target!r}: {self.key}: {self.message}"


@dataclass
class Trail:
    """What a listing of one prefix at one target holds."""

    records: list[str] = field(default_factory=list)
    heads: dict[str, str] = field(default_factory=dict)
    pruned: dict[str, str] = field(default_factory=dict)


def list_trail(target: Target, source: str | None) -> Trail:
    prefix = audit_prefix(source)
    trail = Trail()
    for info in target.list(prefix):
        rest = info.key[len(prefix) :]
        if _RECORD.fullmatch(rest):
            trail.records.append(info.key)
        elif m := _META.fullmatch(rest):
            (trail.heads if m.group(1) == "heads" else trail.pruned)[m.group(2)] = info.key
    trail.records.sort()
    return trail


def read_record(target: Target, key: str, keys: KeyRing | None) -> Found:
    data = target.read_bytes(key)
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        return Found(key, data, {}, f"is not an audit record ({exc}): it was edited or replaced")
    found = Found(key, data, doc)
    if keys is not None:
        found.problem = check_mac("record", doc, keys)
        if found.problem and found.problem.startswith(UNKNOWN_KEY):
            found.problem, found.unknown_key = None, found.problem
    if found.problem is None:
        name = key.rsplit("/", 1)[-1][: -len(".json")]
        dated = "/".join(key.split("/")[-4:-1])
        when = str(doc.get("time", ""))
        if doc.get("id") != name or not when or parse_time(when).strftime("%Y/%m/%d") != dated:
            found.problem = (f"holds record {doc.get('id')!r} of {when or 'no time'}: it was moved "
                             "from where it was written (records reordered or copied)")  # fmt: skip
    return found


def _read_signed(
    target: Target, key: str | None, kind: str, keys: KeyRing
) -> tuple[dict[str, Any] | None, str | None]:
    if key is None:
        return None, None
    try:
        doc = json.loads(target.read_bytes(key))
    except (ValueError, ObjectNotFound) as exc:
        return None, f"is unreadable ({exc})"
    if not isinstance(doc, dict):
        return None, "is not a JSON object"
    return doc, check_mac(kind, doc, keys)


# --- listing ---------------------------------------------------------------------------


def iter_records(
    target: Target, source: str | None, *, since: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """The records of ``source``'s trail at ``target`` (not checked: see verify_trail),
    oldest first; only days from ``since`` on are read."""
    day = f"{since:%Y/%m/%d}" if since else ""
    prefix = audit_prefix(source)
    for key in list_trail(target, source).records:
        if day and key[len(prefix) : len(prefix) + 10] < day:
            continue
        found = read_record(target, key, None)
        if found.problem is None and (since is None or parse_time(found.doc["time"]) >= since):
            yield {k: v for k, v in found.doc.items() if k not in ("mac", "prev", "key_id")}


def merged_rows(per_target: Iterable[tuple[str, Iterable[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per entry (the copies at several targets merged; ``targets`` lists where it
    was found), oldest first."""
    rows: dict[str, dict[str, Any]] = {}
    for name, records in per_target:
        for rec in records:
            row = rows.setdefault(rec["id"], {k: v for k, v in rec.items() if k != "seq"} | {"stored_at": []})
            row["stored_at"].append(name)
    return sorted(rows.values(), key=lambda r: (r["time"], r["id"]))


# --- checking --------------------------------------------------------------------------


def verify_trail(target: Target, source: str | None, keys: KeyRing) -> list[Problem]:
    """Every broken link of ``source``'s trail at ``target``, first first."""
    trail = list_trail(target, source)
    problems: list[Problem] = []

    def bad(key: str, message: str, time: str = "") -> None:
        problems.append(Problem(time, target.name, key, message))

    by_writer: dict[str, list[Found]] = {}
    for key in trail.records:
        found = read_record(target, key, keys)
        if found.problem:
            bad(key, found.problem, str(found.doc.get("time", "")))
        if isinstance(found.doc.get("seq"), int):  # even a bad one holds its place in the chain
            by_writer.setdefault(str(found.doc.get("writer")), []).append(found)
    for writer in sorted(set(by_writer) | set(trail.heads)):
        _check_chain(target, writer, by_writer.get(writer, []), trail, keys, bad)
    return sorted(problems)


_LAST = "9999"  # a head is about the newest record: its problem sorts after the records'


def _check_chain(
    target: Target, writer: str, records: list[Found], trail: Trail, keys: KeyRing, bad: Any
) -> None:
    """Walk ``writer``'s records in sequence order from its pruned marker to its head."""
    head, head_problem = _read_signed(target, trail.heads.get(writer), "head", keys)
    pruned, pruned_problem = _read_signed(target, trail.pruned.get(writer), "pruned", keys)
    for key, problem in ((trail.heads.get(writer), head_problem), (trail.pruned.get(writer), pruned_problem)):
        if problem and not problem.startswith(UNKNOWN_KEY):
            bad(key, problem, _LAST)
            return
    base_seq, base_hash = (int(pruned["seq"]), pruned["sha256"]) if pruned else (0, None)
    live = _without_interrupted(
        [f for f in records if f.doc["seq"] > base_seq], head
    )  # the rest: a prune cut short
    seq, prev, last = base_seq, base_hash, None
    pending: list[
        Found
    ] = []  # signed with a retired key: authentic once a later checked record links to them
    for f in live:
        if f.problem is None:
            if f.doc["seq"] > seq + 1:
                gap = f"seq {seq + 1}" + (f"..{f.doc['seq'] - 1}" if f.doc["seq"] > seq + 2 else "")
                bad(f.key, f"the record(s) {gap} of writer {writer!r} before this one are missing: deleted",
                    f.doc["time"])  # fmt: skip
            elif f.doc["seq"] <= seq or (prev != "?" and f.doc.get("prev") != prev):
                before = last.key if last else "the start"
                bad(f.key, f"does not follow the record before it ({before}): that record was edited "
                    "or replaced, or records were reordered", f.doc["time"])  # fmt: skip
            elif last is not None and last.problem is None and last.sort_key > f.sort_key:
                bad(f.key, f"is older than the record before it ({last.key}): records were reordered",
                    f.doc["time"])  # fmt: skip
        seq, last = f.doc["seq"], f
        prev = "?" if f.problem else f.sha256  # after a bad record the next link cannot be checked
        if f.problem is None:  # a checked record's prev hash vouches for every record before it
            pending = [f] if f.unknown_key else []
    _check_head(writer, head, trail, seq, last, base_seq, bad)
    vouched = head is not None and not head_problem and last is not None and head.get("sha256") == last.sha256
    for f in [] if vouched else pending:
        bad(
            f.key,
            f"{f.unknown_key}; no record or head signed with a key in the ring follows it",
            f.doc["time"],
        )


def _check_head(writer: str, head: dict[str, Any] | None, trail: Trail, seq: int, last: Found | None,
                base_seq: int, bad: Any) -> None:  # fmt: skip
    if head is None:
        if last is not None:
            bad(f"heads/{writer}.json", f"the head of writer {writer!r} is missing (deleted)", _LAST)
        return
    key = trail.heads[writer]
    if int(head["seq"]) > seq:
        bad(key, f"the newest record(s) of writer {writer!r} (seq {seq + 1} to {head['seq']}, the last "
            f"{head.get('key')}) are missing: deleted", _LAST)  # fmt: skip
    elif (
        int(head["seq"]) > base_seq
        and last is not None
        and last.problem is None
        and head["sha256"] != last.sha256
    ):
        bad(key, f"does not name writer {writer!r}'s newest record {last.key}: it was edited or replaced",
            _LAST)  # fmt: skip


def _without_interrupted(records: list[Found], head: dict[str, Any] | None) -> list[Found]:
    """The records in sequence order, less those a writer wrote without updating its head
    (the process stopped between the two writes): the chain went on from the same
    predecessor without them, so nothing names them."""
    named = {f.doc.get("prev") for f in records} | ({head["sha256"]} if head else set())
    by_link: dict[tuple[int, Any], list[Found]] = {}
    for f in records:
        by_link.setdefault((f.doc["seq"], f.doc.get("prev")), []).append(f)
    kept: list[Found] = []
    for same in by_link.values():
        if len(same) > 1 and all(f.problem is None for f in same):
            same = [f for f in same if f.sha256 in named] or same[-1:]
        kept.extend(same)
    return sorted(kept, key=lambda f: (f.doc["seq"], f.sort_key))


# --- retention -------------------------------------------------------------------------


def prune_trail(target: Target, source: str | None, keys: KeyRing, before: datetime) -> int:
    """Remove each writer's records older than ``before`` (from the start of its chain,
    never from its middle), after a signed marker of the last one removed. Returns how
    many went."""
    trail = list_trail(target, source)
    prefix = audit_prefix(source)
    day = f"{before:%Y/%m/%d}"
    old = [k for k in trail.records if k[len(prefix) : len(prefix) + 10] <= day]
    by_writer: dict[str, list[Found]] = {}
    for key in old:
        found = read_record(target, key, keys)
        if found.problem is None and parse_time(found.doc["time"]) < before:
            by_writer.setdefault(str(found.doc["writer"]), []).append(found)
    removed = 0
    for writer, doomed in by_writer.items():
        doomed.sort(key=lambda f: int(f.doc["seq"]))
        last = doomed[-1]
        marker = {"writer": writer, "seq": int(last.doc["seq"]), "sha256": last.sha256,
                  "before": before.isoformat()}  # fmt: skip
        target.put_bytes(pruned_key(prefix, writer), sign("pruned", marker, keys))
        for f in doomed:
            target.delete(f.key)
            removed += 1
    return removed


def sweep_retention(
    target: Target, sources: Iterable[str], keys: KeyRing, *, days: int, now: datetime
) -> int:
    """``dr.audit_retention_days`` at ``target``: every source's trail and the trail of
    actions on no source. Returns how many records went."""
    before = now - timedelta(days=days)
    return sum(prune_trail(target, source, keys, before) for source in [*sources, None])

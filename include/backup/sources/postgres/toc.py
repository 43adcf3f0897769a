"""Partial logical restores: which entries of a pg_dump archive's table of contents bring
back the requested tables with what belongs to them (``pg_restore --use-list``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from include.backup.errors import RestoreRefused
from include.backup.sources.postgres.client import PgParams, run_tool, table_key


@dataclass
class _TocEntry:
    dump_id: int
    oid: int
    kind: str  # TABLE, INDEX, FK CONSTRAINT...
    schema: str
    name: str
    deps: tuple[int, ...] = ()


# Objects that come back with the tables when everything they depend on comes back too.
# Views over restored tables do (over existing tables they must be dropped and re-created
# with them anyway); functions, types and other tables do not: a partial restore is
# about tables.
_FOLLOWS_ITS_TABLE = {
    "ACL", "CHECK CONSTRAINT", "COMMENT", "CONSTRAINT", "DEFAULT", "FK CONSTRAINT", "INDEX",
    "INDEX ATTACH", "POLICY", "ROW SECURITY", "RULE", "SECURITY LABEL", "SEQUENCE",
    "SEQUENCE OWNED BY", "STATISTICS", "TRIGGER", "VIEW",
}  # fmt: skip

_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_SCRIPT_ENTRY = re.compile(r"^-- TOC entry (\d+) \(class \d+ OID (\d+)\)$")
_SCRIPT_DEPS = re.compile(r"^-- Dependencies: ([\d ]+)$")
_SCRIPT_NAME = re.compile(r"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: .*$")


def partial_restore_list(
    pg_restore: str,
    archive: Path | None,
    only: list[str],
    params: PgParams,
    source_name: str,
    *,
    into_existing: bool,
) -> str:
    """A ``pg_restore --use-list`` file selecting the tables in ``only`` with what belongs
    to them. pg_restore's own ``-t`` brings back a bare table (no primary key, indexes or
    defaults); the dependency lines of its verbose script say what else belongs to it.
    ``into_existing``: keep every foreign key of a selected table, not only those between
    selected tables (the referenced tables are expected in the target)."""
    assert archive is not None
    toc = run_tool([pg_restore, "--list", str(archive)], params, source_name)
    script = run_tool(
        [pg_restore, "--verbose", "--schema-only", "--file=-", str(archive)], params, source_name
    )
    entries = _parse_script_entries(script)
    tables = [e for e in entries.values() if e.kind == "TABLE"]
    selected: set[int] = set()
    for wanted in only:
        matches = [e for e in tables if wanted in (e.name, f"{e.schema}.{e.name}")]
        if not matches:
            known = ", ".join(sorted(table_key(e.schema, e.name) for e in tables)) or "none"
            raise RestoreRefused(f"table {wanted!r} is not in this backup; its tables: {known}")
        if len(matches) > 1:
            names = ", ".join(f"{e.schema}.{e.name}" for e in matches)
            raise RestoreRefused(f"table name {wanted!r} is ambiguous ({names}); give it as schema.table")
        selected.add(matches[0].dump_id)
    table_oids = {entries[i].oid for i in selected}
    table_names = {(entries[i].schema, entries[i].name) for i in selected}
    # What the tables need: sequences their defaults use (standalone ones too).
    for dump_id in list(selected):
        selected.update(d for d in entries[dump_id].deps if d in entries and entries[d].kind == "SEQUENCE")
    # What belongs to them: everything whose dependencies are all restored, to a fixpoint
    # (a sequence owned by the table, then the sequence's OWNED BY...).
    grew = True
    while grew:
        grew = False
        for entry in entries.values():
            if entry.dump_id in selected or entry.kind not in _FOLLOWS_ITS_TABLE or not entry.deps:
                continue
            # A foreign key's name is "<its table> <constraint>".
            own_fk = (
                into_existing
                and entry.kind == "FK CONSTRAINT"
                and (entry.schema, entry.name.split(" ")[0]) in table_names
            )
            if own_fk or set(entry.deps) <= selected:
                selected.add(entry.dump_id)
                grew = True
    sequences = {(entries[i].schema, entries[i].name) for i in selected if entries[i].kind == "SEQUENCE"}
    lines = []
    for line in toc.splitlines():
        m = _TOC_LINE.match(line)
        if not m:
            continue
        dump_id, oid, rest = int(m.group(1)), int(m.group(3)), m.group(4)
        # Data entries are not in the schema-only script: TABLE DATA carries its table's
        # OID; SEQUENCE SET only its name.
        if (
            dump_id in selected
            or (rest.startswith("TABLE DATA ") and oid in table_oids)
            or any(rest.startswith(f"SEQUENCE SET {s} {n} ") for s, n in sequences)
        ):
            lines.append(line)
    return "\n".join(lines) + "\n"


def _parse_script_entries(script: str) -> dict[int, _TocEntry]:
    """The TOC entries of a ``pg_restore --verbose`` script: id, OID, kind, dependencies."""
    entries: dict[int, _TocEntry] = {}
    current: _TocEntry | None = None
    for line in script.splitlines():
        if m := _SCRIPT_ENTRY.match(line):
            current = _TocEntry(dump_id=int(m.group(1)), oid=int(m.group(2)), kind="", schema="", name="")
        elif current is not None and (m := _SCRIPT_DEPS.match(line)):
            current.deps = tuple(int(d) for d in m.group(1).split())
        elif current is not None and (m := _SCRIPT_NAME.match(line)):
            current.name, current.kind, current.schema = m.group(1), m.group(2), m.group(3)
            entries[current.dump_id] = current
            current = None
    return entries


def matches_any(key: str, only: list[str]) -> bool:
    """Whether the table ``key`` (as :func:`~.client.table_key` writes it) is named in ``only``."""
    schema, _, table = key.rpartition(".")
    qualified = f"{schema or 'public'}.{table}"
    return any(name in (table, qualified, key) for name in only)

"""``python -m include.backup audit [--since ...] [--source ...] [--target ...] [--verify] [--json]``:
list the audit trail the targets hold, and with ``--verify`` check every link of it
(exit 1 naming the first broken link)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from include.backup import audit, audit_read
from include.backup.config.loader import load_config
from include.backup.config.schema import BackupConfig
from include.backup.errors import BackupError
from include.backup.targets import build_target


def add_parser(
    sub: Any, common: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]
) -> None:
    p = sub.add_parser("audit", parents=[common], help="list and check the audit trail at the targets")
    p.add_argument("--since", help="only records from this ISO date or time on (UTC when no offset)")
    p.add_argument("--source", help="only this source (default: every source, and actions on none)")
    p.add_argument("--target", help="only this target (default: every target of the config)")
    p.add_argument(
        "--verify", action="store_true", help="check every link; exit 1 naming the first broken one"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=handler)


def parse_since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BackupError(
            f"--since {text!r} is not an ISO date or time (e.g. 2026-03-01 or 2026-03-01T12:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def scope(config: BackupConfig, source: str | None, target: str | None) -> tuple[list[str], list[str | None]]:
    """(targets, sources) to read: checked against the config, with errors that say so."""
    if target is not None and target not in config.targets:
        raise BackupError(f"no target named {target!r} in the config; known: {', '.join(config.targets)}")
    if source is not None and source not in config.sources:
        raise BackupError(f"no source named {source!r} in the config; known: {', '.join(config.sources)}")
    targets = [target] if target else list(config.targets)
    sources: list[str | None] = [source] if source else [*config.sources, None]
    return targets, sources


def list_rows(config: BackupConfig, *, source: str | None = None, target: str | None = None,
              since: datetime | None = None) -> tuple[list[dict[str, Any]], list[str]]:  # fmt: skip
    """(merged rows oldest first, problems reading a target)."""
    targets, sources = scope(config, source, target)
    per_target: list[tuple[str, list[dict[str, Any]]]] = []
    problems: list[str] = []
    for name in targets:
        try:
            t = build_target(name, config.targets[name])
            rows = [r for s in sources for r in audit_read.iter_records(t, s, since=since)]
        except Exception as exc:  # noqa: BLE001 - one unreachable target: the others are still listed
            problems.append(f"target {name!r}: cannot read its audit trail: {exc}")
            continue
        per_target.append((name, rows))
    return audit_read.merged_rows(per_target), problems


def verify(config: BackupConfig, keys: Any, *, source: str | None = None,
           target: str | None = None) -> list[audit_read.Problem]:  # fmt: skip
    """Every broken link at the targets in scope, first first."""
    targets, sources = scope(config, source, target)
    problems: list[audit_read.Problem] = []
    for name in targets:
        t = build_target(name, config.targets[name])
        for s in sources:
            problems.extend(audit_read.verify_trail(t, s, keys))
    return sorted(problems)


def run(args: argparse.Namespace, config: BackupConfig, keys: Callable[[], Any]) -> int:
    since = parse_since(args.since)
    if args.verify:
        broken = verify(config, keys(), source=args.source, target=args.target)
        if args.json:
            print(json.dumps({"ok": not broken, "broken": [vars(p) for p in broken]}, indent=1))
        elif broken:
            print(f"audit trail BROKEN: first broken link: {broken[0]}", file=sys.stderr)
            for later in broken[1:]:
                print(f"  also: {later}", file=sys.stderr)
        else:
            print("audit trail ok: every record is signed and every writer's chain is complete")
        return 1 if broken else 0
    rows, problems = list_rows(config, source=args.source, target=args.target, since=since)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    if not rows:
        print("no audit records" + (f" since {args.since}" if args.since else ""))
    for r in rows:
        ids = ",".join(r.get("backup_ids") or []) or "-"
        why = f" ({r['reason']})" if r.get("reason") else ""
        print(f"{r['time']}  {r['actor']:<24} {r['action']:<10} {r.get('source') or '-':<14} "
              f"{r.get('target') or '-':<10} {r['result']}{why}  {ids}")  # fmt: skip
    return 0


# --- the CLI's own verbs, recorded --------------------------------------------------------

AUDITED_VERBS = {
    "list": "list",
    "verify": "verify",
    "restore": "restore",
    "prune": "prune",
    "decrypt": "decrypt",
}


def after_verb(args: argparse.Namespace, status: int | None, error: BaseException | None,
               keys: Callable[[], Any]) -> None:  # fmt: skip
    """Record a CLI verb that touches backups (``backup`` is recorded by its upload step,
    each delete of ``prune`` by the retention pass). Never raises: it warns on stderr."""
    action = AUDITED_VERBS.get(args.verb)
    if action is None or getattr(args, "dry_run", False):
        return
    try:
        config = load_config(args.config).config
        ring = keys()
    except Exception as exc:  # noqa: BLE001 - no config or key ring here: nothing to sign with, nowhere to write
        print(f"warning: audit record of {action} not written: {exc}", file=sys.stderr)
        return
    source, ids = _what(args, config)
    if error is not None:
        result = "refused" if type(error).__name__ == "RestoreRefused" else "failed"
        reason = str(error)
    else:
        result, reason = ("ok", "") if not status else ("failed", f"exit status {status}")
    extra = {"schedule": args.schedule} if getattr(args, "schedule", None) else {}
    for problem in audit.note(config, action, source=source, backup_ids=ids, keys=ring,
                              target=getattr(args, "audit_target", None) or getattr(args, "target", None),
                              result=result, reason=reason, extra=extra):  # fmt: skip
        print(f"warning: {problem}", file=sys.stderr)


def _what(args: argparse.Namespace, config: BackupConfig) -> tuple[str | None, list[str]]:
    """(source, backup ids) a verb acted on, from what it was given (and what it found)."""
    ids = list(
        getattr(args, "audit_ids", None) or ([args.backup_id] if getattr(args, "backup_id", None) else [])
    )
    source = getattr(args, "source", None)
    if getattr(args, "schedule", None):
        source = next((s.source for s in config.schedules if s.name == args.schedule), source)
    if args.verb == "decrypt":  # <target root>/<source>/<backup_id>/payload, when it is one
        parts = str(args.input).replace("\\", "/").split("/")
        if len(parts) >= 3 and parts[-3] in config.sources:
            source, ids = parts[-3], [parts[-2]]
    if source is None and ids:  # a backup id starts with its schedule's name
        named = [s for s in config.schedules if ids[0].startswith(f"{s.name}-")]
        if named:
            source = max(named, key=lambda s: len(s.name)).source
    return source, ids

"""The ``keys`` verb of the CLI: ``status``, ``rotate``, ``retire KEY_ID``, ``delete KEY_ID``.

Exit codes: 0 done; 1 an error, or a key still needed (nothing deleted); 3 the key ring's
store cannot be written from here: the output says exactly what to set by hand.
Key material is printed only by ``rotate``, only the new key, and only when it could not
be stored (the output then says so). Old keys are never printed.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any

from include.backup import audit
from include.backup.config.loader import load_config
from include.backup.config.schema import BackupConfig
from include.backup.errors import BackupError
from include.backup.keyops import usage
from include.backup.keyops.rewrap import retire_at_target
from include.backup.keyops.store import KeyStore, NotWritable, Rotation, remove_key, rotate, store_for
from include.backup.settings import staging_root

NOT_STORED = 3


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``keys`` and its actions to the CLI's sub-parsers."""
    p = sub.add_parser("keys", help="key-encryption keys: status, rotate, retire, delete")
    actions = p.add_subparsers(dest="keys_action", required=True)
    a = actions.add_parser("status", parents=[common], help="each key with the backups that use it")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(handler=cmd_status)
    a = actions.add_parser("rotate", parents=[common], help="make a new key active (old keys stay)")
    a.add_argument("--key-id", help="id of the new key (default: k<today>)")
    a.set_defaults(handler=cmd_rotate)
    a = actions.add_parser(
        "retire", parents=[common], help="move every backup off KEY_ID, then delete it from the ring"
    )
    a.add_argument("key_id")
    a.add_argument("--target", action="append", help="only this target (repeatable); the key is kept")
    a.add_argument("--keep-key", action="store_true", help="re-wrap only; keep the key in the ring")
    a.set_defaults(handler=cmd_retire)
    a = actions.add_parser(
        "delete", parents=[common], help="delete KEY_ID from the ring if no backup needs it"
    )
    a.add_argument("key_id")
    a.set_defaults(handler=cmd_delete)


def _config(args: argparse.Namespace) -> BackupConfig:
    loaded = load_config(args.config)
    for warning in loaded.issues:
        print(f"warning: config: {warning}", file=sys.stderr)
    return loaded.config


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    ring = store_for(config, args.key_file).load()
    found = usage.key_usage(_targets(config, None), ring)
    rows = usage.status_rows(ring, found, date.today())
    print(usage.status_json(rows, found.errors) if args.json else usage.render_status(rows, found.errors))
    return 1 if any(not r["in_ring"] for r in rows) else 0


def cmd_rotate(args: argparse.Namespace) -> int:
    config = _config(args)
    store = store_for(config, args.key_file)
    result = rotate(store, args.key_id)
    why = "" if result.stored else f" not stored: {result.reason}"
    audit.note(config, "key_rotate", result="ok" if result.stored else "failed",
               reason=f"new active key {result.new_id!r}{why}")  # fmt: skip
    if result.stored:
        print(
            f"key {result.new_id!r} is now the active key in the {result.where}; kept: "
            f"{', '.join(result.kept) or 'none'}. New backups use it; older ones need their key "
            f"until it is retired (python -m include.backup keys retire KEY_ID)."
        )
        return 0
    print(_set_by_hand(result))
    return NOT_STORED


def _set_by_hand(result: Rotation) -> str:
    assert result.ring is not None
    new_id = result.new_id
    encoded = result.ring.to_json()["keys"][new_id]
    created = result.ring.created(new_id)
    field = "secret_keys" if result.where.startswith("Airflow") else "keys"
    return "\n".join([
        f"NOT STORED: {result.reason}.",
        "The new key is printed below only because it could not be stored: set it yourself, then",
        "discard this output. Old keys are not shown: keep every one of them.",
        f"In the {result.where}" + (" (its extra)" if field == "secret_keys" else "") + ":",
        f'  add to "{field}":  "{new_id}": "{encoded}"',
        f'  add to "created":  "{new_id}": "{created.isoformat() if created else date.today().isoformat()}"',
        f'  set "active" to:   "{new_id}"',
    ])  # fmt: skip


def cmd_retire(args: argparse.Namespace) -> int:
    config = _config(args)
    store = store_for(config, args.key_file)
    ring = store.load()
    ring.get(args.key_id)
    if args.key_id == ring.active_id:
        raise BackupError(
            f"key {args.key_id!r} is the active key: rotate first (keys rotate), then retire it"
        )
    failed = 0
    targets = _targets(config, args.target)
    for name, target in targets.items():
        result = retire_at_target(target, ring, args.key_id, staging=staging_root(config))
        failed += len(result.failed)
        print(
            f"target {name!r}: {len(result.rewrapped)} backup(s) moved to key {ring.active_id!r} "
            f"({result.bytes_rewritten / (1 << 20):.1f} MiB re-encrypted), "
            f"{len(result.finished)} interrupted earlier and finished now, {len(result.failed)} failed"
        )
        for backup, why in sorted(result.failed.items()):
            print(f"  {backup}: {why}")
    if failed:
        print(f"key {args.key_id!r} kept: {failed} backup(s) still need it; run keys retire again")
        return 1
    if args.keep_key or args.target:
        print(
            f"key {args.key_id!r} kept in the {store.where} ("
            + ("--keep-key" if args.keep_key else "--target")
            + ")"
        )
        return 0
    return _delete(config, store, args.key_id, targets)


def cmd_delete(args: argparse.Namespace) -> int:
    config = _config(args)
    return _delete(config, store_for(config, args.key_file), args.key_id)


def _delete(config: BackupConfig, store: KeyStore, key_id: str, targets: dict[str, Any] | None = None) -> int:
    ring = store.load()
    ring.get(key_id)
    if key_id == ring.active_id:
        raise BackupError(f"key {key_id!r} is the active key: rotate first (keys rotate)")
    needing = usage.still_needing(config, targets or _targets(config, None), key_id)
    if needing:
        print(f"refusing to delete key {key_id!r}: still needed by {len(needing)} item(s):")
        for line in needing[:50]:
            print(f"  {line}")
        if len(needing) > 50:
            print(f"  ... and {len(needing) - 50} more")
        print(f"run: python -m include.backup keys retire {key_id}")
        return 1
    # Before the key leaves the ring, the audit trail's heads are re-signed with the active
    # key: they vouch for the records it signed (docs/audit.md).
    audit.reanchor_all(config, ring)
    audit.note(config, "key_retire", reason=f"key {key_id!r} deleted from the ring", keys=ring)
    try:
        remove_key(store, key_id)
    except NotWritable as exc:
        field = "secret_keys" if store.where.startswith("Airflow") else "keys"
        print(
            f"NOT DELETED: {exc}. No backup needs key {key_id!r} any more: remove it by hand from "
            f'the {store.where}: delete "{key_id}" from "{field}" and from "created".'
        )
        return NOT_STORED
    print(f"key {key_id!r} deleted from the {store.where}: no backup needed it")
    return 0


def _targets(config: BackupConfig, only: list[str] | None) -> dict[str, Any]:
    names = only or list(config.targets)
    unknown = [n for n in names if n not in config.targets]
    if unknown:
        raise BackupError(
            f"no target named {', '.join(unknown)} in the config; known: {', '.join(config.targets)}"
        )
    return usage.build_targets(config, names)

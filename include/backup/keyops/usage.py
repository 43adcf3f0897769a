"""Which backups use which key-encryption key: ``keys status``, and the check that refuses
to delete a key while anything still needs it.

``keys status`` reads the catalog index at every target (records name their key id: no
manifest is read). The check before a deletion reads every manifest instead (the index may
lag behind a manifest, and a manifest's signature can name a key of its own), and the
staged runs in flight, whose backup may not be at any target yet.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from include.backup.catalog import index
from include.backup.catalog.catalog import read_manifest
from include.backup.catalog.manifest import Manifest
from include.backup.config.schema import BackupConfig
from include.backup.errors import BackupError, ObjectNotFound
from include.backup.keyops.rewrap import manifest_ids, uses_key
from include.backup.keys import KeyRing
from include.backup.settings import staging_root
from include.backup.staging import DRAFT_NAME
from include.backup.targets import build_target
from include.backup.targets.base import Target

log = logging.getLogger(__name__)

Counts = dict[str, dict[str, int]]  # target -> source -> backups


@dataclass
class KeyUsage:
    """Each key id with the backups that use it, per target and source."""

    by_key: dict[str, Counts] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # target -> why it could not be read

    def add(self, key_id: str | None, target: str, source: str) -> None:
        per_target = self.by_key.setdefault(key_id or "(unencrypted)", {})
        per_source = per_target.setdefault(target, {})
        per_source[source] = per_source.get(source, 0) + 1

    def total(self, key_id: str) -> int:
        return sum(n for per in self.by_key.get(key_id, {}).values() for n in per.values())


def build_targets(config: BackupConfig, names: list[str] | None = None) -> dict[str, Target]:
    """The config's targets (or ``names``), built lazily: nothing is contacted yet."""
    return {name: build_target(name, config.targets[name]) for name in names or config.targets}


def key_usage(targets: dict[str, Target], ring: KeyRing) -> KeyUsage:
    """From the catalog index of every source at every target."""
    usage = KeyUsage()
    for name, target in targets.items():
        try:
            for source in index.index_sources(target):
                for rec in index.load_records(target, source, ring):
                    usage.add(rec.get("key_id"), name, source)
        except BackupError as exc:
            usage.errors[name] = str(exc)
    return usage


def status_rows(ring: KeyRing, usage: KeyUsage, today: date) -> list[dict[str, Any]]:
    """One row per key of the ring, then one per key the backups name that the ring lacks."""
    rows = []
    for key_id in ring.key_ids:
        created = ring.created(key_id)
        rows.append({
            "key_id": key_id, "active": key_id == ring.active_id, "in_ring": True,
            "created": created.isoformat() if created else None,
            "age_days": ring.age_days(key_id, today=today),
            "backups": usage.total(key_id), "by_target": usage.by_key.get(key_id, {}),
        })  # fmt: skip
    for key_id in sorted(set(usage.by_key) - set(ring.key_ids)):
        rows.append({
            "key_id": key_id, "active": False, "in_ring": False, "created": None, "age_days": None,
            "backups": usage.total(key_id), "by_target": usage.by_key[key_id],
        })  # fmt: skip
    return rows


def render_status(rows: list[dict[str, Any]], errors: dict[str, str]) -> str:
    lines = [f"{'key id':<24} {'active':<6} {'created':<10} {'age':>5} {'backups':>7}  per target/source"]
    for r in rows:
        where = ", ".join(
            f"{source}@{target}: {n}"
            for target, per in sorted(r["by_target"].items())
            for source, n in sorted(per.items())
        )
        age = f"{r['age_days']}d" if r["age_days"] is not None else "-"
        note = "" if r["in_ring"] else "  NOT IN THE KEY RING: these backups cannot be restored"
        lines.append(
            f"{r['key_id']:<24} {'*' if r['active'] else '':<6} {r['created'] or '-':<10} {age:>5} "
            f"{r['backups']:>7}  {where or '-'}{note}"
        )
    for target, why in sorted(errors.items()):
        lines.append(f"target {target!r} could not be read: {why}")
    return "\n".join(lines)


def status_json(rows: list[dict[str, Any]], errors: dict[str, str]) -> str:
    return json.dumps({"keys": rows, "errors": errors}, indent=1)


# --- before a deletion -------------------------------------------------------------------


def still_needing(config: BackupConfig, targets: dict[str, Target], key_id: str) -> list[str]:
    """Everything that still needs ``key_id``, each as a line saying what and where: backups
    at every target (read from their manifests), runs in flight in the staging directory,
    and targets that could not be read (then nobody can say the key is unused)."""
    needing: list[str] = []
    for name, target in targets.items():
        try:
            for source in index.index_sources(target):
                for backup_id in manifest_ids(target, source):
                    if _needs(target, source, backup_id, key_id):
                        needing.append(f"backup {source}/{backup_id} at target {name!r}")
        except BackupError as exc:
            needing.append(f"target {name!r} could not be read ({exc}), so it may hold backups under it")
    needing.extend(_staged_runs(staging_root(config), key_id))
    return needing


def _needs(target: Target, source: str, backup_id: str, key_id: str) -> bool:
    try:
        return uses_key(read_manifest(target, source, backup_id), key_id)
    except ObjectNotFound:
        return False  # deleted since the listing


def _staged_runs(root: Path, key_id: str) -> list[str]:
    """Runs in flight whose staged manifest names ``key_id`` (encrypted with it, not yet
    published everywhere)."""
    found: list[str] = []
    if not root.is_dir():
        return found
    for stage in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for name in ("manifest.json", DRAFT_NAME):
            path = stage / name
            try:
                manifest = Manifest.from_json(path.read_bytes())
            except (OSError, ValueError):
                continue
            if uses_key(manifest, key_id):
                found.append(f"run in flight {stage.name} (staging {stage})")
                break
    return found

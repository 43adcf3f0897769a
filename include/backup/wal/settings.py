"""What wal-push and wal-fetch need from the config, the targets and the key ring, found
in milliseconds and without Airflow.

The config file is parsed by the same safe YAML reader as the full loader, but not put
through the pydantic schema (importing it costs more than pushing a segment): only the
keys read here are checked, each with a message naming the key and the fix. ``validate``
(and every DAG parse) still checks the whole file.

- Source: ``--source`` or the one physical postgres source that has a TRANSACTION_LOG
  schedule; its targets: those of its active TRANSACTION_LOG schedules, in config order.
- Targets: ``local`` and ``s3`` are built here (S3 with a boto3 client made from
  ``AIRFLOW_CONN_<ID>``, see :mod:`~include.backup.wal.conn`); the other kinds use their
  provider hooks and so import Airflow.
- Keys: ``--key-file`` / ``$BACKUP_KEY_FILE``, else the connection ``encryption.key_conn_id``
  from ``AIRFLOW_CONN_<ID>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from include.backup.config.yaml_loader import parse, read_text
from include.backup.errors import BackupError, ConfigError
from include.backup.keys import (
    CONN_KEYS_FIELD,
    LEGACY_KEYS_FIELD,
    KeyRing,
    _check_id,
    _decode_key,
    _ring_fields,
)
from include.backup.wal.conn import get_connection

CONFIG_ENV = "BACKUP_CONFIG"
KEY_FILE_ENV = "BACKUP_KEY_FILE"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "backup_config.yaml"


@dataclass
class WalSettings:
    config_path: Path
    source: str
    targets: list[tuple[str, dict[str, Any]]]  # (name, config block), config order
    key_conn_id: str
    spool: Path | None = None  # the source's wal_archive_dir: base backups read their WAL there


def config_path(given: str | None) -> Path:
    env = os.environ.get(CONFIG_ENV)
    return Path(given or env or DEFAULT_CONFIG)


def load_settings(path: Path, source: str | None) -> WalSettings:
    """The source, its log schedule's targets and the keys connection id from ``path``."""
    if not path.is_file():
        raise ConfigError(str(path), [f"config file {path} not found; pass --config or set {CONFIG_ENV}"])
    doc = parse(read_text(path), str(path))
    if not isinstance(doc, dict):
        raise ConfigError(str(path), ["the file is not a YAML mapping with targets, sources and schedules"])
    sources = _mapping(doc, "sources", path)
    name = source or _only_pushing_source(doc, sources, path)
    block = sources.get(name)
    if not isinstance(block, dict) or block.get("type") != "postgres":
        raise ConfigError(str(path), [f"sources.{name}: no postgres source of that name; pass --source NAME"])
    names: list[str] = []
    for i, sched in enumerate(doc.get("schedules") or []):
        if _is_log_schedule(sched, name):
            for t in sched.get("targets") or []:
                if t not in names:
                    names.append(t)
            if not sched.get("targets"):
                raise ConfigError(str(path), [f"schedules[{i}] ({sched.get('name')}): no targets"])
    if not names:
        raise ConfigError(
            str(path),
            [f"source {name!r} has no active TRANSACTION_LOG schedule: wal-push sends each WAL "
             "file to that schedule's targets; add one (see docs/postgres.md)"],
        )  # fmt: skip
    targets = _mapping(doc, "targets", path)
    found = []
    for t in names:
        if not isinstance(targets.get(t), dict):
            raise ConfigError(str(path), [f"targets.{t}: not defined (a log schedule of {name!r} names it)"])
        found.append((t, targets[t]))
    enc = doc.get("encryption") or {}
    key_conn = enc.get("key_conn_id", "backup_encryption") if isinstance(enc, dict) else "backup_encryption"
    spool = block.get("wal_archive_dir")
    return WalSettings(path, name, found, str(key_conn), Path(spool) if spool else None)


def _mapping(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(str(path), [f"{key}: expected a mapping of names to blocks"])
    return value


def _is_log_schedule(sched: Any, source: str) -> bool:
    return (
        isinstance(sched, dict)
        and sched.get("source") == source
        and sched.get("type") == "TRANSACTION_LOG"
        and sched.get("active", True) is not False
    )


def _only_pushing_source(doc: dict[str, Any], sources: dict[str, Any], path: Path) -> str:
    candidates = sorted(
        {str(s.get("source")) for s in doc.get("schedules") or [] if isinstance(s, dict)
         and s.get("type") == "TRANSACTION_LOG"
         and (sources.get(str(s.get("source"))) or {}).get("type") == "postgres"
         and (sources.get(str(s.get("source"))) or {}).get("method") == "physical"}
    )  # fmt: skip
    if len(candidates) == 1:
        return str(candidates[0])
    which = ", ".join(map(str, candidates)) or "none"
    raise ConfigError(
        str(path),
        [f"cannot tell which source this server is (physical postgres sources with a "
         f"TRANSACTION_LOG schedule: {which}); pass --source NAME in archive_command"],
    )  # fmt: skip


# --- targets ---------------------------------------------------------------------------


def build_wal_target(name: str, cfg: dict[str, Any]) -> Any:
    """The target ``name``: local and s3 without Airflow, the others through their hooks."""
    kind = cfg.get("type")
    if kind == "local":
        from include.backup.targets.local import LocalTarget  # lazy: only the kinds used

        if not cfg.get("path"):
            raise BackupError(f"targets.{name}.path: missing")
        return LocalTarget(name, str(cfg["path"]))
    if kind == "s3":
        from include.backup.wal.s3env import EnvS3Target  # lazy: boto3 only when S3 is used

        return EnvS3Target(name, str(cfg["conn_id"]), str(cfg["bucket"]), str(cfg.get("prefix") or ""))
    from include.backup.targets import build_target  # lazy: provider hooks (Airflow)

    return build_target(name, SimpleNamespace(**cfg))


# --- keys ------------------------------------------------------------------------------


def load_keys(key_file: str | None, conn_id: str) -> KeyRing:
    """The key ring from a key file, else from ``AIRFLOW_CONN_<conn_id>`` (never Airflow)."""
    path = key_file or os.environ.get(KEY_FILE_ENV)
    if path:
        return KeyRing.from_file(path)
    source = f"keys connection {conn_id!r}"
    conn = get_connection(conn_id, "the key ring")
    extra = conn.extra_dejson
    if CONN_KEYS_FIELD in extra or LEGACY_KEYS_FIELD in extra:
        return KeyRing.from_json(_ring_fields(extra, conn_id, source), source=source)
    if conn.login and conn.password:
        key_id = _check_id(conn.login, source)
        return KeyRing({key_id: _decode_key(key_id, conn.password, source)}, key_id, source=source)
    raise BackupError(
        f'{source} has no keys: put {{"secret_keys": {{id: base64}}, "active": id}} in its extra, '
        "or set login = key id and password = base64 of a 32-byte key"
    )

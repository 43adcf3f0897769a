"""The audit trail: who listed, verified, restored, decrypted, pruned, deleted, backed up,
tested or failed over what, recorded at the targets themselves (so it survives the loss of
Airflow's database) as append-only, signed, hash-chained records.

Layout at each target of the source (``_audit/`` at the root for actions on no source)::

    <source>/_audit/YYYY/MM/DD/<time>-<random>.json   one record, never overwritten
    <source>/_audit/heads/<writer>.json               the writer's last record (seq, SHA-256)
    <source>/_audit/pruned/<writer>.json              what retention removed of its chain

A *writer* is an OS user on a host (``airflow@worker-1``). Each record carries its
writer's sequence number and the SHA-256 of the writer's previous record at that target,
and an HMAC-SHA-256 under a key derived from the key ring (HKDF with its own label, as
manifests are signed: catalog/signing.py). Writes of one writer are serialised by an
``fcntl`` lock in the staging directory, so concurrent processes on a host never fork its
chain; different hosts are different writers and never touch each other's chain.
audit_read.py reads and checks the trail (a deleted, edited or reordered record breaks a
link) and applies its retention.

Writing never fails the caller: a record that cannot be written is logged as a warning
(the step warns; the backup, restore or listing goes on).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from include.backup.catalog.inflight import source_lock
from include.backup.config.schema import BackupConfig
from include.backup.errors import KeyNotFoundError, RestoreRefused
from include.backup.keys import KeyRing
from include.backup.settings import staging_root
from include.backup.targets import build_target
from include.backup.targets.base import Target

log = logging.getLogger(__name__)

AUDIT_DIR = "_audit"
FORMAT = 1
ACTIONS = frozenset({
    "backup", "list", "verify", "restore", "decrypt", "prune", "delete",
    "dr_test", "failover", "key_rotate", "key_retire", "audit",
    "dr_read",  # the DR page or /dr/api/ read through the Airflow plugin (dr/web_auth.py)
})  # fmt: skip
RESULTS = frozenset({"ok", "refused", "failed"})
_HKDF_INFO = b"airflow-backup audit v1"
DOMAINS = {"record": b"AFBK-AUDIT\x00", "head": b"AFBK-AUDIT-HEAD\x00", "pruned": b"AFBK-AUDIT-PRUNED\x00"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")
LOCK_WAIT_S = 120.0
_thread_lock = threading.Lock()  # fcntl locks do not exclude threads of one process


@dataclass(frozen=True)
class Entry:
    """What happened: the fields of a record that callers give."""

    action: str
    source: str | None = None
    backup_ids: tuple[str, ...] = ()
    target: str | None = None
    result: str = "ok"
    reason: str = ""
    run_id: str | None = None
    actor: str | None = None  # default: the DAG run's triggering user, else user@host
    extra: dict[str, Any] = field(default_factory=dict)


# --- identity --------------------------------------------------------------------------


def os_actor() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def writer_id() -> str:
    """The writer of this process's records: a plain name (it is part of an object key)."""
    return _UNSAFE.sub("_", os_actor())[:120] or "unknown"


def current_actor() -> tuple[str, str | None]:
    """(actor, run id): the user who triggered the running DAG run (its run type when the
    scheduler did, e.g. ``airflow:scheduled``), else ``user@host`` and no run id."""
    context = _airflow_context()
    if context is None:
        return os_actor(), None
    dag_run = context.get("dag_run")
    user = getattr(dag_run, "triggering_user_name", None)
    run_type = getattr(dag_run, "run_type", None)
    actor = user or f"airflow:{getattr(run_type, 'value', run_type) or 'unknown'}"
    run_id = context.get("run_id") or getattr(dag_run, "run_id", None)
    return str(actor), (str(run_id) if run_id else None)


def _airflow_context() -> Any:
    """The running task's context, or None outside a task (the CLI never imports the SDK
    for this: it is only looked up when a task runner loaded it)."""
    if "airflow.sdk" not in sys.modules:
        return None
    try:
        from airflow.sdk import get_current_context  # lazy: Airflow: loaded already, see above

        return get_current_context()
    except Exception:  # noqa: BLE001 - no task running (RuntimeError), an older SDK: the CLI's actor
        return None


# --- signing ---------------------------------------------------------------------------


def mac_key(kek: bytes) -> bytes:
    """The audit MAC key derived from a key-encryption key (never the KEK itself)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(kek)


def signed_bytes(kind: str, body: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in body.items() if k != "mac"}
    return DOMAINS[kind] + json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


UNKNOWN_KEY = "signed with key id"


def check_mac(kind: str, doc: dict[str, Any], keys: KeyRing) -> str | None:
    """None when ``doc`` carries a valid MAC, else what is wrong."""
    try:
        kek = keys.get(str(doc.get("key_id")))
    except (KeyNotFoundError, KeyError):
        return f"{UNKNOWN_KEY} {doc.get('key_id')!r}, which the key ring lacks: add that key back to check it"
    want = hmac.new(mac_key(kek), signed_bytes(kind, doc), hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(want, str(doc.get("mac", "")).encode("utf-8", "surrogatepass")):
        return "fails its signature check: it was edited after it was written"
    return None


def sign(kind: str, body: dict[str, Any], keys: KeyRing) -> bytes:
    """The stored bytes of ``body`` with ``key_id`` and ``mac`` set."""
    key_id, kek = keys.active()
    body = {**body, "key_id": key_id}
    body["mac"] = hmac.new(mac_key(kek), signed_bytes(kind, body), hashlib.sha256).hexdigest()
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# --- keys at a target ------------------------------------------------------------------


def audit_prefix(source: str | None) -> str:
    return f"{source}/{AUDIT_DIR}/" if source else f"{AUDIT_DIR}/"


def head_key(prefix: str, writer: str) -> str:
    return f"{prefix}heads/{writer}.json"


def pruned_key(prefix: str, writer: str) -> str:
    return f"{prefix}pruned/{writer}.json"


def record_key(prefix: str, record_id: str, when: datetime) -> str:
    return f"{prefix}{when:%Y/%m/%d}/{record_id}.json"


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def new_record_id(when: datetime) -> str:
    return f"{when:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(6)}"


# --- writing ---------------------------------------------------------------------------


def audit_targets(config: BackupConfig, source: str | None, target: str | None = None) -> list[str]:
    """Where a record of ``source`` goes: every target of the source's schedules (and
    ``target``, the one acted on); every target of the config for an action on no source."""
    names = [t for s in config.schedules if s.source == source for t in s.targets] if source else []
    if target and target in config.targets:
        names.append(target)
    if not names:
        names = list(config.targets)
    return list(dict.fromkeys(names))


def record(config: BackupConfig, entry: Entry, *, keys: KeyRing | None = None,
           targets: dict[str, Target] | None = None) -> list[str]:  # fmt: skip
    """Append ``entry`` to the trail at every target of its source; returns the problems
    (each also logged as a warning). Never raises: auditing must not lose a backup."""
    try:
        ring = keys if keys is not None else _load_keys(config)
    except Exception as exc:  # noqa: BLE001 - no connection, no key file: the record cannot be signed
        return _warn([f"audit record of {entry.action} not written: no key ring to sign it ({exc})"])
    names = list(targets) if targets is not None else audit_targets(config, entry.source, entry.target)
    body = _body(entry)
    problems: list[str] = []
    with _writer_lock(config):
        # Timed under the lock, so a writer's records are in time order as in sequence order;
        # one id and time for the entry at every target: a listing merges the copies.
        when = datetime.now(UTC)
        body.update(id=new_record_id(when), time=when.isoformat().replace("+00:00", "Z"))
        for name in names:
            try:
                target = targets[name] if targets is not None else build_target(name, config.targets[name])
                append(target, body, ring)
            except Exception as exc:  # noqa: BLE001 - any target failure: the others still get theirs
                problems.append(f"audit record of {entry.action} not written at target {name!r}: {exc}")
    return _warn(problems)


def record_safely(config: BackupConfig | None, entry: Entry, **kwargs: Any) -> list[str]:
    """:func:`record`, also without a config (nothing to write to: a warning)."""
    if config is None:
        return _warn([f"audit record of {entry.action} not written: no config names a target"])
    try:
        return record(config, entry, **kwargs)
    except Exception as exc:  # noqa: BLE001 - never let auditing fail the action it records
        return _warn([f"audit record of {entry.action} not written: {exc}"])


def _warn(problems: list[str]) -> list[str]:
    for problem in problems:
        log.warning("%s", problem)
    return problems


def _load_keys(config: BackupConfig) -> KeyRing:
    from include.backup.runtime import load_keys  # lazy: runtime loads Airflow's connection code

    return load_keys(config)


def _body(entry: Entry) -> dict[str, Any]:
    if entry.action not in ACTIONS:
        raise ValueError(f"unknown audit action {entry.action!r}; one of {', '.join(sorted(ACTIONS))}")
    if entry.result not in RESULTS:
        raise ValueError(f"unknown audit result {entry.result!r}; one of {', '.join(sorted(RESULTS))}")
    actor, run_id = current_actor()
    return {
        "format": FORMAT,
        "actor": entry.actor or actor,
        "action": entry.action,
        "source": entry.source,
        "backup_ids": list(entry.backup_ids),
        "target": entry.target,
        "result": entry.result,
        "reason": entry.reason[:2000],
        "run_id": entry.run_id or run_id,
        **({"extra": entry.extra} if entry.extra else {}),
    }


def append(target: Target, body: dict[str, Any], keys: KeyRing) -> str:
    """Write one record (``body`` with its ``id`` and ``time``) at ``target`` after this
    writer's head there; returns its key. Call it under :func:`_writer_lock` (``record``
    does)."""
    prefix = audit_prefix(body.get("source"))
    writer = writer_id()
    head = read_head(target, prefix, writer, keys)
    when = parse_time(body["time"])
    record_id = str(body["id"])
    full = {
        **body,
        "writer": writer,
        "seq": (head["seq"] + 1) if head else 1,
        "prev": head["sha256"] if head else None,
    }
    data = sign("record", full, keys)
    key = record_key(prefix, record_id, when)
    target.put_bytes(key, data)  # a new random name: never overwrites a record
    new_head = {"writer": writer, "seq": full["seq"], "sha256": hashlib.sha256(data).hexdigest(), "key": key}
    target.put_bytes(head_key(prefix, writer), sign("head", new_head, keys))
    return key


def read_head(target: Target, prefix: str, writer: str, keys: KeyRing) -> dict[str, Any] | None:
    """This writer's head at ``target`` (None: its first record there). A head that is not
    JSON is a broken trail: raise, so that nothing is chained onto a guess."""
    key = head_key(prefix, writer)
    if target.stat(key) is None:
        return None
    doc = json.loads(target.read_bytes(key))
    if not isinstance(doc, dict) or not isinstance(doc.get("seq"), int):
        raise ValueError(f"audit head {key} is not a head record; run `audit --verify`")
    problem = check_mac("head", doc, keys)
    if problem:  # never chain onto a head nobody can vouch for: it may name a forged record
        raise ValueError(f"audit head {key} {problem}; run `python -m include.backup audit --verify`")
    return doc


def reanchor(target: Target, source: str | None, keys: KeyRing) -> int:
    """Re-sign every head of ``source``'s trail at ``target`` that checks under ``keys``
    with the active key (before a key leaves the ring: the heads then vouch for the
    records it signed). Returns how many heads were re-signed."""
    prefix = audit_prefix(source)
    done = 0
    for info in target.list(f"{prefix}heads/"):
        doc = json.loads(target.read_bytes(info.key))
        if (
            isinstance(doc, dict)
            and doc.get("key_id") != keys.active_id
            and check_mac("head", doc, keys) is None
        ):
            target.put_bytes(
                info.key, sign("head", {k: v for k, v in doc.items() if k not in ("key_id", "mac")}, keys)
            )
            done += 1
    return done


@contextmanager
def _writer_lock(config: BackupConfig) -> Iterator[None]:
    """Serialise this writer's appends (processes on this host, and threads)."""
    with _thread_lock, ExitStack() as stack:
        try:
            lock = source_lock(staging_root(config), f"_audit-{writer_id()}",
                               purpose="writing an audit record", wait_s=LOCK_WAIT_S)  # fmt: skip
            stack.enter_context(lock)
        except Exception as exc:  # noqa: BLE001 - no writable staging here (a laptop's CLI): go on unlocked
            log.warning("audit: cannot take the writer lock (%s); writing without it", exc)
        yield


def note(
    config: BackupConfig | None, action: str, *, source: str | None = None,
    backup_ids: Iterable[str] = (), keys: KeyRing | None = None,
    targets: dict[str, Target] | None = None, **fields: Any,
) -> list[str]:  # fmt: skip
    """The one call each hook makes: record ``action`` (fields of :class:`Entry`); never
    raises, returns the problems (already logged as warnings). ``targets``: built ones to
    reuse (a hook recording many actions builds each client once, not once a record)."""
    entry = Entry(action=action, source=source, backup_ids=tuple(backup_ids), **fields)
    return record_safely(config, entry, keys=keys, targets=targets)


@dataclass
class Outcome:
    """What :func:`recorded` writes; the caller fills in what it learns while acting."""

    source: str | None = None
    backup_ids: list[str] = field(default_factory=list)
    target: str | None = None
    reason: str = ""


@contextmanager
def recorded(
    config: BackupConfig | None, action: str, *, keys: KeyRing | None = None, **fields: Any
) -> Iterator[Outcome]:
    """Record ``action`` when the block ends: ``ok``, ``refused`` (a RestoreRefused: the
    guard said no before anything was touched) or ``failed`` with the error as the reason.
    The block's exception goes on unchanged; auditing only warns."""
    outcome = Outcome(**fields)
    try:
        yield outcome
    except BaseException as exc:
        result = "refused" if isinstance(exc, RestoreRefused) else "failed"
        _note_outcome(config, action, outcome, result, f"{type(exc).__name__}: {exc}", keys)
        raise
    _note_outcome(config, action, outcome, "ok", outcome.reason, keys)


def _note_outcome(
    config: BackupConfig | None, action: str, outcome: Outcome, result: str, reason: str, keys: KeyRing | None
) -> None:
    note(config, action, source=outcome.source, backup_ids=outcome.backup_ids, target=outcome.target,
         result=result, reason=reason, keys=keys)  # fmt: skip


def reanchor_all(config: BackupConfig, keys: KeyRing) -> list[str]:
    """:func:`reanchor` at every target of the config, for every source and for actions on
    none; returns the problems (logged). Call it before a key leaves the ring."""
    problems: list[str] = []
    for name, spec in config.targets.items():
        try:
            target = build_target(name, spec)
            for source in [*config.sources, None]:
                reanchor(target, source, keys)
        except Exception as exc:  # noqa: BLE001 - one unreachable target: the others are still done
            problems.append(f"audit heads at target {name!r} not re-signed: {exc}")
    return _warn(problems)

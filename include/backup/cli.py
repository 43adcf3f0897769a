"""Command line: ``python -m include.backup VERB ...``. Works with Airflow stopped.

Verbs:
  validate [PATH]                       check a config file
  backup SCHEDULE                       take a backup now, without Airflow: the DAG's six steps
                                        (dump, encrypt, checksum, upload, verify, cleanup);
                                        prints the backup id
  list --target NAME [--source S] [--json] [--rebuild-index]
                                        the backups a target holds, from its catalog index
  verify BACKUP_ID [--target NAME] [--deep]
                                        re-read and re-hash a backup at its targets
  restore [BACKUP_ID] --into DEST [--source S] [--until ISO] [--target NAME] [--only A,B] [--overwrite]
                                        restore a backup (and its chain)
  prune --schedule NAME [--dry-run [--json]]
                                        apply a schedule's retention (the plan, with --dry-run:
                                        counts by rule per target, then the ids)
  decrypt IN OUT [--decompress zstd|gzip]
                                        decrypt a payload container to a file
  audit [--since ISO] [--source S] [--target NAME] [--verify] [--json]
                                        the audit trail at the targets; --verify checks every
                                        link (exit 1 naming the first broken one)
  keys status|rotate|retire KEY_ID|delete KEY_ID
                                        key-encryption keys (docs/keys.md)

Keys come from $BACKUP_KEY_FILE (or --key-file) when set, else from the Airflow connection
named by encryption.key_conn_id (AIRFLOW_CONN_<ID> works without Airflow running).
Errors print one clear message, never a traceback for expected failures, never a secret.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.backup import audit_cli, progress, prune_report, tasks
from include.backup.archiving import archive_schedule_payloads
from include.backup.catalog import index
from include.backup.catalog.catalog import find_backup, verify_object
from include.backup.catalog.signing import AuthStatus, authenticate, check_shape
from include.backup.config.loader import load_config, validate_command
from include.backup.dr.restore import incomplete_note, restore_backup
from include.backup.errors import BackupError, IntegrityError, KeyNotFoundError, ObjectNotFound
from include.backup.gc_pause import gc_paused
from include.backup.keyops import commands as keys_verb
from include.backup.keys import KeyRing
from include.backup.pipeline.compression import decompress_reader
from include.backup.pipeline.crypto import DecryptingReader
from include.backup.schedule_retention import apply_schedule_retention
from include.backup.targets import build_target
from include.backup.targets.tiers import NOT_READ_MARK
from include.backup.tasks import deep_verify
from include.backup.wal.archive import pushed_summary

Handler = Callable[[argparse.Namespace], int]


def _collector_paused(handler: Handler) -> Handler:
    """For the verbs that load a whole catalog (list, prune): no cyclic garbage collection
    while they run. The process lives for one verb, and with 100,000 backups the
    collector's passes over the loaded records (none of them garbage) were a quarter of
    the verb's CPU and grew faster than the catalog (bench/bench_catalog.py)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        with gc_paused():
            return handler(args)

    return run


def _config(args: argparse.Namespace) -> Any:
    loaded = load_config(args.config)
    for warning in loaded.issues:
        print(f"warning: config: {warning}", file=sys.stderr)
    return loaded.config


def _keys(args: argparse.Namespace, config: Any | None) -> Any:
    if args.key_file:
        return KeyRing.from_file(args.key_file)
    if os.environ.get("BACKUP_KEY_FILE"):
        return KeyRing.from_file(os.environ["BACKUP_KEY_FILE"])
    conn_id = config.encryption.key_conn_id if config is not None else "backup_encryption"
    return KeyRing.from_connection(conn_id)


def _target(config: Any, name: str) -> Any:
    if name not in config.targets:
        raise BackupError(f"no target named {name!r} in the config; known: {', '.join(config.targets)}")
    return build_target(name, config.targets[name])


def _cmd_validate(args: argparse.Namespace) -> int:
    return validate_command(args.path)


@_collector_paused
def _cmd_list(args: argparse.Namespace) -> int:
    """The backups from the target's catalog index (records only), written as they are
    formatted: the output streams instead of being built whole."""
    config = _config(args)
    target = _target(config, args.target)
    keys = _index_keys(args, config)
    if args.rebuild_index:
        if keys is None:
            raise BackupError("--rebuild-index needs the key ring (it signs the index): pass --key-file")
        for source in [args.source] if args.source else index.index_sources(target):
            count = len(index.rebuild(target, source, keys))
            print(f"rebuilt the index of {source} at {args.target!r}: {count} backup(s)", file=sys.stderr)
    backups = index.summaries(target, args.source, keys)
    out = sys.stdout
    if args.json:
        out.write("[")
        for i, b in enumerate(backups):
            out.write(("," if i else "") + "\n" + json.dumps(_row(b, args.target), indent=1, default=str))
        out.write("\n]\n")
        return 0
    if not backups:
        print(f"target {args.target!r} holds no backups" + (f" of {args.source}" if args.source else ""))
        return 0
    out.write(f"{'backup id':<48} {'source':<14} {'type':<12} {'parent':<10} {'stored':>10}  verified\n")
    for b in backups:
        row = _row(b, args.target)
        out.write(
            f"{b.backup_id:<48} {b.source:<14} {b.backup_type:<12} "
            f"{'yes' if b.parent_id else '-':<10} {_human(b.stored_size):>10}  {_status(row)}\n"
        )
    out.writelines(f"{line}\n" for line in pushed_summary(target, config, args.source, keys))
    return 0


def _index_keys(args: argparse.Namespace, config: Any) -> Any:
    """The key ring that checks the catalog index, or None: the listing then reads every
    manifest (same rows, slower)."""
    try:
        return _keys(args, config)
    except BackupError as exc:
        print(
            f"warning: no key ring, so the catalog index cannot be checked; reading every "
            f"manifest instead (slower): {exc}",
            file=sys.stderr,
        )
        return None


def _row(b: Any, target: str) -> dict[str, Any]:
    v = b.verification.get(target)
    return {
        "backup_id": b.backup_id,
        "schedule": b.schedule,
        "source": b.source,
        "type": b.backup_type,
        "parent_id": b.parent_id,
        "started_at": b.started_at.isoformat(),
        "finished_at": b.finished_at.isoformat() if b.finished_at else None,
        "raw_size": b.raw_size,
        "stored_size": b.stored_size,
        "verified": ("ok" if v.ok else "FAILED") + (" (deep)" if v.deep else "") if v else "never",
        # Marked at dump time: the source moved under it (files' on_changed: warn).
        "incomplete": bool(getattr(b, "incomplete", False)),
    }


def _status(row: dict[str, Any]) -> str:
    """The list table's last column: verification, and the incomplete mark."""
    return row["verified"] + ("  INCOMPLETE" if row["incomplete"] else "")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


def _cmd_verify(args: argparse.Namespace) -> int:
    config = _config(args)
    names = [args.target] if args.target else list(config.targets)
    found = failed = 0
    for name in names:
        target = _target(config, name)
        try:
            manifest = find_backup(target, args.backup_id)
        except ObjectNotFound:
            continue
        found += 1
        keys = _keys_if_any(args, config)
        auth, problems = _check_manifest(manifest, keys)
        total = sum(o.size for o in manifest.objects)
        with progress.Progress(f"verify {args.backup_id} at {name}", total) as p:
            checks = [verify_object(target, manifest, o.name, progress=p) for o in manifest.objects]
        problems += [d for ok, d in checks if not ok]
        unread = [d for ok, d in checks if ok and NOT_READ_MARK in d]  # frozen (targets/tiers.py)
        if args.deep and not problems and not unread:
            with progress.Progress(f"deep verify {args.backup_id} at {name}", total) as p:
                problems = deep_verify(config, target, manifest, keys or _keys(args, config), progress=p)
        status = "FAILED: " + "; ".join(problems) if problems else "ok" + (" (deep)" if args.deep else "")
        if not problems and unread:
            status = "ok, " + "; ".join(unread)  # frozen: no deep verify without a thaw
        if manifest.incomplete:  # intact as stored, but it lacks part of its source
            status += f"; {incomplete_note(manifest)}"
        print(f"{name}: {args.backup_id}: {status}; manifest {auth}")
        failed += bool(problems)
    if not found:
        print(f"error: backup {args.backup_id!r} is not at any target ({', '.join(names)})", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _keys_if_any(args: argparse.Namespace, config: Any) -> Any:
    """The key ring, or None when none is configured (a plain verify works without one)."""

    try:
        return _keys(args, config)
    except BackupError as exc:
        print(f"warning: no key ring, manifest signatures cannot be checked: {exc}", file=sys.stderr)
        return None


def _check_manifest(manifest: Any, keys: Any) -> tuple[str, list[str]]:
    """(what the signature check found, problems) for the verify verb's line."""

    try:
        if keys is None or manifest.auth is None:
            check_shape(manifest)
            if manifest.auth is None:
                # No key is needed to refuse a stripped signature or to report a legacy one.
                authenticate(manifest, keys or (lambda key_id: b""))
                return _UNSIGNED, []
            return "signature NOT CHECKED (no key ring: pass --key-file)", []
        status = authenticate(manifest, keys)
    except (IntegrityError, KeyNotFoundError) as exc:
        return "REFUSED", [str(exc)]
    return _UNSIGNED if status is AuthStatus.UNSIGNED else f"signed ({manifest.auth.key_id})", []


_UNSIGNED = "unsigned (made before manifests were signed: not authenticated)"


def _cmd_restore(args: argparse.Namespace) -> int:
    until = None
    if args.until:
        try:
            until = datetime.fromisoformat(args.until.replace("Z", "+00:00"))
        except ValueError:
            print(
                f"error: --until {args.until!r} is not an ISO-8601 time "
                "(e.g. 2026-03-01T12:30:00Z; without an offset it is taken as UTC)",
                file=sys.stderr,
            )
            return 2
        until = until.replace(tzinfo=UTC) if until.tzinfo is None else until
    if not args.backup_id and not args.source:
        print("error: give BACKUP_ID, or --source (with --until for a point in time)", file=sys.stderr)
        return 2
    config = _config(args)
    result = restore_backup(
        config,
        args.backup_id,
        args.into,
        keys=_keys(args, config),
        target_name=args.target,
        only=[x for x in args.only.split(",") if x] if args.only else None,
        overwrite=args.overwrite,
        until=until,
        source_name=args.source,
    )
    args.audit_ids, args.audit_target = result.chain, result.target  # what the audit record names
    print(
        json.dumps(
            {
                "backup_id": result.backup_id,
                "until": result.until.isoformat() if result.until else None,
                "target": result.target,
                "into": result.into,
                "chain": result.chain,
                "seconds": round(result.seconds, 3),
                "stats": result.stats,
                "incomplete": result.incomplete,
            },
            indent=1,
            default=str,
        )
    )
    for note in result.warnings:
        print(f"warning: {note}: what vanished or changed during that dump is not restored", file=sys.stderr)
    return 0


@_collector_paused
def _cmd_prune(args: argparse.Namespace) -> int:
    """Apply a schedule's retention now; with --dry-run, only print the plan."""
    out = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON alone
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=out)
    config = _config(args)
    try:
        schedule = config.schedule(args.schedule)
    except KeyError as exc:
        raise BackupError(str(exc.args[0])) from None
    if args.dry_run:
        plans = prune_report.plan_schedule(config, schedule)
        if args.json:
            print(prune_report.render_json(plans))
        else:
            for line in prune_report.render(plans, prune_report.policy_line(config, schedule)):
                print(line)
        if not args.json:
            _print_archived(archive_schedule_payloads(config, schedule, dry_run=True), "would move")
        return 0
    deleted = apply_schedule_retention(config, schedule)
    for target, ids in deleted.items():
        print(f"{target}: deleted {len(ids)} backup(s)" + (": " + ", ".join(ids) if ids else ""))
    _print_archived(archive_schedule_payloads(config, schedule), "moved")
    return 0


def _print_archived(moved: dict[str, list[str]], verb: str) -> None:
    """archive_after_days (archiving.py): the payloads moved to the archive class."""
    for target, ids in moved.items():
        print(f"{target}: archive_after_days {verb} {len(ids)} payload(s) to the archive class"
              + (": " + ", ".join(ids) if ids else ""))  # fmt: skip


def _cmd_decrypt(args: argparse.Namespace) -> int:
    keys = _keys(args, None if args.key_file or os.environ.get("BACKUP_KEY_FILE") else _config(args))
    out = Path(args.out)
    # Like crypto.decrypt_file: mkstemp creates a new file (O_CREAT|O_EXCL, never through a
    # symlink planted at a guessable name), mode 0600 (plaintext), beside OUT so that the
    # rename is atomic; it reaches OUT only once the last chunk authenticated.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with open(args.input, "rb") as src, os.fdopen(fd, "wb") as dst:
            stream: Any = DecryptingReader(src, keys)
            if args.decompress:
                stream = decompress_reader(stream, args.decompress)
            total = 0
            while block := stream.read(1 << 20):
                dst.write(block)
                total += len(block)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave output that looks good after a failure
        raise
    print(f"decrypted {args.input} -> {args.out} ({total} bytes)")
    return 0


# --- backup: the DAG's steps without Airflow ---------------------------------------------


def _cmd_backup(args: argparse.Namespace) -> int:
    """Take a backup of one schedule now: the same step functions as the DAG (tasks.py),
    hence the same staging, manifests and locks. Progress goes to stderr; stdout's last
    line is the backup id."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    loaded = load_config(args.config)
    for warning in loaded.issues:
        print(f"warning: config: {warning}", file=sys.stderr)
    # The steps run with this config; the key ring is read the way tasks read it
    # ($BACKUP_KEY_FILE), and $BACKUP_CONFIG names this config to anything else that reads
    # it: point them at exactly what this command was given.
    env = {"BACKUP_CONFIG": str(loaded.path)}
    if args.key_file:
        env["BACKUP_KEY_FILE"] = str(Path(args.key_file).resolve())
    with _environ(env), _sigterm_as_exit():
        backup_id = run_backup(loaded.config, args.schedule)
    print(backup_id)
    return 0


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (a cron or systemd timeout, ``kill``) raises SystemExit instead of ending the
    process on the spot, so that run_backup removes its staging (plaintext) on the way out."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_backup(config: Any, schedule_name: str, *, when: datetime | None = None) -> str:
    """dump → encrypt → checksum → upload (each target) → verify (each target) → cleanup,
    in this process; returns the backup id. Raises on the first failure, after removing
    the run's staging directory (with any plaintext in it): unlike a DAG run, nothing will
    retry this run's steps. Every step runs with ``config``; the key ring is the one
    $BACKUP_KEY_FILE names, or the config's connection (runtime.load_keys)."""

    try:
        schedule = config.schedule(schedule_name)
    except KeyError as exc:
        raise BackupError(str(exc.args[0])) from None
    if not schedule.active:
        print(
            f"warning: schedule {schedule.name!r} is not active (no DAG runs it); backing up anyway",
            file=sys.stderr,
        )
    when = when or datetime.now(UTC)
    run_id = f"cli__{when.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
    # Known before the dump starts, so a failure at any step can remove it.
    stage = tasks.staging_dir(config, tasks.make_backup_id(schedule.name, when, run_id))
    tasks.load_keys(config)  # no key ring: fail before a plaintext dump exists
    try:
        meta = tasks.dump(config, schedule, run_id, when)
        _step("dump", meta.backup_id)
        meta = tasks.encrypt(config, meta)
        _step("encrypt", meta.backup_id)
        meta = tasks.checksum(config, meta)
        _step("checksum", meta.backup_id)
        for target in schedule.targets:
            tasks.upload(config, meta, target)
        for target in schedule.targets:
            tasks.verify(config, meta, target)
        tasks.cleanup(config, meta, schedule.name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return meta.backup_id


def _step(name: str, backup_id: str) -> None:
    print(f"{name}: {backup_id} ok", file=sys.stderr)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (restored after: main() may run in a
    test's process)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m include.backup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="config file (default: $BACKUP_CONFIG or include/backup_config.yaml)"
    )
    common.add_argument(
        "--key-file", help="JSON key file (default: $BACKUP_KEY_FILE, else the Airflow connection)"
    )
    long_work = argparse.ArgumentParser(add_help=False)
    long_work.add_argument(
        "--quiet", action="store_true", help="no progress (default: a bar on a terminal, else stderr lines)"
    )
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("validate", help="check a config file without Airflow running")
    p.add_argument(
        "path", nargs="?", help="config file (default: $BACKUP_CONFIG or include/backup_config.yaml)"
    )
    p.set_defaults(handler=_cmd_validate)

    p = sub.add_parser(
        "backup", parents=[common, long_work], help="take a backup of a schedule now, without Airflow"
    )
    p.add_argument("schedule", help="schedule name from the config")
    p.set_defaults(handler=_cmd_backup)

    p = sub.add_parser("list", parents=[common], help="list the backups a target holds")
    p.add_argument("--target", required=True, help="target name from the config")
    p.add_argument("--source", help="only this source")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--rebuild-index", action="store_true", help="rebuild the catalog index from the manifests first"
    )
    p.set_defaults(handler=_cmd_list)

    p = sub.add_parser("verify", parents=[common, long_work], help="re-read and re-hash a backup")
    p.add_argument("backup_id")
    p.add_argument("--target", help="only this target (default: every target)")
    p.add_argument("--deep", action="store_true", help="also decrypt and decompress to the end")
    p.set_defaults(handler=_cmd_verify)

    p = sub.add_parser("restore", parents=[common, long_work], help="restore a backup and its chain")
    p.add_argument("backup_id", nargs="?", help="backup to restore (optional with --source)")
    p.add_argument(
        "--into", required=True, help="directory (files) or database name / conn:<conn_id> (postgres)"
    )
    p.add_argument("--source", help="source name: without BACKUP_ID, restore its newest backup or --until")
    p.add_argument("--until", help="point in time (ISO-8601, UTC if no offset): replay logs up to it")
    p.add_argument("--target", help="target to restore from (default: the first that holds it)")
    p.add_argument("--only", help="comma-separated tables or paths to restore")
    p.add_argument("--overwrite", action="store_true", help="restore over a non-empty destination")
    p.set_defaults(handler=_cmd_restore)

    p = sub.add_parser("prune", parents=[common], help="apply a schedule's retention (GFS) now")
    p.add_argument("--schedule", required=True, help="schedule name from the config")
    p.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.set_defaults(handler=_cmd_prune)

    p = sub.add_parser("decrypt", parents=[common], help="decrypt a payload container to a file")
    p.add_argument("input", help="the encrypted payload (as stored at a target)")
    p.add_argument("out", help="where to write the plaintext")
    p.add_argument("--decompress", choices=["zstd", "gzip"], help="also decompress")
    p.set_defaults(handler=_cmd_decrypt)

    keys_verb.register(sub, common)
    audit_cli.add_parser(sub, common, _cmd_audit)
    return parser


def _cmd_audit(args: argparse.Namespace) -> int:
    config = _config(args)
    return audit_cli.run(args, config, lambda: _keys(args, config))


def _progress_display(args: argparse.Namespace) -> AbstractContextManager[None]:
    """Where the long verbs show their progress: nothing with ``--quiet``; a live bar on a
    terminal; else the log lines on stderr. stdout keeps only the result lines."""
    if getattr(args, "quiet", False):
        return progress.quiet()
    if sys.stderr.isatty():
        return progress.live_bars()
    return progress.log_lines_to(sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int | None = None
    try:
        status = _dispatch(args)
        return status
    finally:  # every verb that touches backups leaves an audit record, whatever its outcome
        audit_cli.after_verb(args, status, getattr(args, "audit_error", None), lambda: _audit_keys(args))


def _audit_keys(args: argparse.Namespace) -> Any:
    return _keys(args, None if args.key_file or os.environ.get("BACKUP_KEY_FILE") else _config(args))


def _dispatch(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    try:
        with _progress_display(args):
            return handler(args)
    except BackupError as exc:
        args.audit_error = exc
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        args.audit_error = exc
        print(f"error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

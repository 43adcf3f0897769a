"""The ``wal-push`` and ``wal-fetch`` verbs, run by PostgreSQL once per WAL file::

    archive_command = 'python -m include.backup wal-push --config /etc/backup.yaml %p'
    restore_command = 'python -m include.backup wal-fetch --config /etc/backup.yaml %f %p'

include/backup/__main__.py sends these two verbs here before the main CLI is imported:
nothing on this path imports Airflow or the config schema (start-up is most of a push).

Exit status: 0 done. wal-push: 1 on any failure (PostgreSQL keeps the file and retries).
wal-fetch: 1 when no target holds the file (the normal end of archive recovery) or when it
fails authentication (recovery ends at the last good file; the reason is on stderr and in
``<cache>/<name>.refused``); 2 on another error. Never above 125 (PostgreSQL would abort).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path

from include.backup.errors import BackupError, IntegrityError
from include.backup.wal.fetch import (
    NotArchived,
    fetch_bytes,
    following,
    prefetch_into,
    take_from_cache,
    write_whole,
)
from include.backup.wal.push import copy_to_spool, push_file
from include.backup.wal.settings import WalSettings, build_wal_target, config_path, load_keys, load_settings

VERBS = ("wal-push", "wal-fetch")
DEFAULT_PREFETCH = 8
CACHE_NAME = ".afbk-prefetch"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: $BACKUP_CONFIG)")
    p.add_argument("--source", help="the postgres source of this server (default: the only one "
                   "with a log schedule)")  # fmt: skip
    p.add_argument("--key-file", help="key ring file (default: $BACKUP_KEY_FILE, else the keys "
                   "connection from AIRFLOW_CONN_<ID>)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m include.backup")
    sub = parser.add_subparsers(dest="verb", required=True)
    push = sub.add_parser("wal-push", help="archive_command: archive one WAL file (%%p)")
    _common(push)
    push.add_argument("path", help="the WAL file (PostgreSQL's %%p)")
    fetch = sub.add_parser("wal-fetch", help="restore_command: restore one WAL file (%%f) to %%p")
    _common(fetch)
    fetch.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH,
                       help=f"segments fetched ahead (default {DEFAULT_PREFETCH}; 0: none)")  # fmt: skip
    fetch.add_argument("--cache", help=f"prefetch directory (default: {CACHE_NAME} beside %%p)")
    fetch.add_argument("--prefetch-worker", action="store_true", help=argparse.SUPPRESS)
    fetch.add_argument("name", help="the WAL file name (PostgreSQL's %%f)")
    fetch.add_argument("dest", nargs="*", help="where to write it (PostgreSQL's %%p)")
    return parser


def _targets_and_keys(args: argparse.Namespace) -> tuple[WalSettings, list[object], object]:
    settings = load_settings(config_path(args.config), args.source)
    keys = load_keys(args.key_file, settings.key_conn_id)
    return settings, [build_wal_target(n, c) for n, c in settings.targets], keys


def _push(args: argparse.Namespace) -> int:
    settings, targets, keys = _targets_and_keys(args)
    path = Path(args.path)
    push_file(path, settings.source, targets, keys)  # type: ignore[arg-type]
    if settings.spool is not None and settings.spool.is_dir():
        copy_to_spool(path, settings.spool)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    if args.prefetch_worker:  # the detached helper: args.name and args.dest are all names
        settings, targets, keys = _targets_and_keys(args)
        source = settings.source
        prefetch_into(Path(args.cache), [args.name, *args.dest],
                      lambda n: fetch_bytes(targets, source, n, keys)[0], args.prefetch)  # type: ignore[arg-type]  # fmt: skip
        return 0
    if len(args.dest) != 1:
        print("wal-fetch: usage: wal-fetch [options] %f %p", file=sys.stderr)
        return 2
    dest = Path(args.dest[0])
    cache = Path(args.cache) if args.cache else dest.parent / CACHE_NAME
    seg_size = 0
    try:
        if not take_from_cache(cache, args.name, dest):
            settings, targets, keys = _targets_and_keys(args)
            data, record = fetch_bytes(targets, settings.source, args.name, keys)  # type: ignore[arg-type]
            write_whole(dest, data)
            seg_size = record.size
    except NotArchived:
        return 1
    except IntegrityError as exc:
        print(f"wal-fetch: refusing {args.name}: {exc}", file=sys.stderr)
        with contextlib.suppress(OSError):  # a read-only place: no prefetch, no note
            cache.mkdir(parents=True, exist_ok=True)
            (cache / (args.name + ".refused")).write_text(f"{exc}\n")
        return 1
    _spawn_prefetch(args, cache, seg_size or (dest.stat().st_size if dest.is_file() else 0))
    return 0


def _spawn_prefetch(args: argparse.Namespace, cache: Path, seg_size: int) -> None:
    """One detached process fetching the next segments not yet cached nor being fetched."""
    if args.prefetch <= 0 or seg_size <= 0 or seg_size & (seg_size - 1):
        return
    wanted = [n for n in following(args.name, args.prefetch, seg_size)
              if not any((cache / (n + s)).exists() for s in ("", ".refused", ".lock"))]  # fmt: skip
    if not wanted:
        return
    with contextlib.suppress(OSError):  # a read-only place: no prefetch, no note
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "include.backup", "wal-fetch", "--prefetch-worker",
               "--cache", str(cache), "--prefetch", str(args.prefetch)]  # fmt: skip
        for flag in ("config", "source", "key_file"):
            if getattr(args, flag):
                cmd += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
        subprocess.Popen(  # noqa: S603 - our own program, no shell
            [*cmd, *wanted], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )  # fmt: skip


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _push(args) if args.verb == "wal-push" else _fetch(args)
    except BackupError as exc:
        print(f"{args.verb}: error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"{args.verb}: error: {exc}", file=sys.stderr)
    return 1 if args.verb == "wal-push" else 2



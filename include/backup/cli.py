"""Command line: ``python -m include.backup VERB ...``. Works with Airflow stopped.

Verbs: validate, list, verify, restore, decrypt. Each returns a process exit code;
errors print one clear message (never a traceback for expected failures, never a secret).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace], int]


def _cmd_validate(args: argparse.Namespace) -> int:
    from include.backup.config.loader import validate_command

    return validate_command(args.path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m include.backup", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("validate", help="check a config file without Airflow running")
    p.add_argument("path", nargs="?", help="config file (default: $BACKUP_CONFIG or include/backup_config.yaml)")
    p.set_defaults(handler=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from include.backup.errors import BackupError

    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

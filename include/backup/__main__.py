"""``python -m include.backup VERB``: wal-push / wal-fetch go to their own small CLI
before the main one is imported (PostgreSQL runs them once per WAL file: the main CLI's
imports cost more than a push), every other verb to include/backup/cli.py."""

import sys

if len(sys.argv) > 1 and sys.argv[1] in ("wal-push", "wal-fetch"):
    from include.backup.wal.cli import main as wal_main  # lazy: the fast path, see above

    raise SystemExit(wal_main(sys.argv[1:]))

from include.backup.cli import main  # noqa: E402 - after the fast path on purpose

raise SystemExit(main())

"""A throwaway PostgreSQL cluster, sample "event manager" data, and a fingerprint to compare
two databases row for row.

Why one module of about 780 lines: it is the public test helper users import
(include.backup.testing), kept as one self-contained file with no dependency on the rest of
the library.

Used by the integration tests and by ``make demo``. The cluster runs on 127.0.0.1 with
``trust`` authentication (plus any password users added with :meth:`PgCluster.create_user`)
and is stopped and deleted by :meth:`PgCluster.stop`, by the context manager, or at
interpreter exit as a safety net, so that no server is ever left running.

    with PgCluster() as pg:
        load_sample_data(pg, "events", rows=1000)
        print(db_fingerprint(pg.uri(), "events"))
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PG_OS_USER = "postgres"
"""The OS user that owns and runs the cluster when we are root (initdb refuses root)."""

SUPERUSER = "postgres"
"""The database superuser created by initdb (``-U``)."""

MISSING_BINARIES = (
    "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin; "
    "install them with: apt-get install -y postgresql-15"
)


class PgClusterError(RuntimeError):
    """The throwaway cluster could not be created, started or used."""


# --- binaries ------------------------------------------------------------------------------


def _version_key(path: str) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin: numeric, so 15 > 9.6."""
    version = Path(path).parent.name
    return tuple(int(p) for p in re.findall(r"\d+", version)) or (0,)


def find_server_bin_dir() -> Path:
    """The directory holding initdb/pg_ctl/postgres: the highest installed Debian version,
    else what ``pg_config --bindir`` says."""
    candidates = [
        d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.isfile(os.path.join(d, "initdb"))
    ]
    if candidates:
        return Path(max(candidates, key=_version_key))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            out = ""
        if out and os.path.isfile(os.path.join(out, "initdb")):
            return Path(out)
    raise PgClusterError(MISSING_BINARIES)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- the cluster ---------------------------------------------------------------------------


class PgCluster:
    """A private PostgreSQL server in a temporary directory.

    ``base_dir``: where the data directory, socket, WAL archive and log go (created if
    missing; default: a fresh directory under /tmp). It must be reachable by the postgres
    OS user when we run as root, so not under pytest's 0700 ``tmp_path``.
    ``port``: default a free port. ``archive``: turn on WAL archiving into
    :attr:`wal_archive_dir` (for base backups and point-in-time recovery).
    ``settings``: extra postgresql.conf settings, e.g. ``{"max_wal_senders": "4"}``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        port: int | None = None,
        archive: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._requested_base = Path(base_dir) if base_dir is not None else None
        self._requested_port = port
        self.archive = archive
        self.extra_settings = dict(settings or {})
        self._base: Path | None = None
        self._created_base = False
        self._port: int | None = None
        self._bin_dir: Path | None = None
        self._running = False

    # -- context manager

    def __enter__(self) -> PgCluster:  # noqa: PYI034 - start() returns self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- paths and addresses

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_server_bin_dir()
        return self._bin_dir

    @property
    def base_dir(self) -> Path:
        if self._base is None:
            raise PgClusterError("the cluster is not started: call start() (or use `with PgCluster()`)")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def wal_archive_dir(self) -> Path:
        return self.base_dir / "wal_archive"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise PgClusterError("the cluster is not started: call start() (or use `with PgCluster()`)")
        return self._port

    @property
    def running(self) -> bool:
        return self._running

    def uri(self, dbname: str = "postgres") -> str:
        """libpq URI for the superuser (no password: the cluster trusts 127.0.0.1)."""
        return f"postgres://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def conn_params(self, dbname: str = "postgres") -> dict[str, Any]:
        """Keyword arguments for psycopg2.connect."""
        return {"host": self.host, "port": self.port, "user": SUPERUSER, "dbname": dbname}

    # -- lifecycle

    def start(self) -> PgCluster:
        """initdb, configure and start the server; returns self. Cleans up if anything fails."""
        if self._running:
            return self
        bin_dir = self.bin_dir  # fail with the install hint before creating anything
        try:
            self._make_base_dir()
            self._initdb(bin_dir)
            self._start_server(bin_dir)
        except BaseException:
            self._cleanup_after_failed_start()
            raise
        atexit.register(self._stop_at_exit)
        log.info("PostgreSQL cluster running on %s:%s (data %s)", self.host, self.port, self.data_dir)
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its files. Safe to call twice."""
        atexit.unregister(self._stop_at_exit)
        if self._base is None:
            return
        if self._running or (self.data_dir / "postmaster.pid").exists():
            self._stop_server()
        self._remove_files()

    def detach(self) -> None:
        """Leave the server running after this process exits (``make up``; ``make down``
        stops it with ``pg_ctl``)."""
        atexit.unregister(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception:  # an atexit hook must not raise; the log says what was left
            log.exception("could not stop the PostgreSQL cluster in %s", self._base)

    def _make_base_dir(self) -> None:
        if self._requested_base is None:
            # /tmp, not TMPDIR or pytest's tmp_path: the postgres OS user has to traverse
            # every parent directory, and those are often private to root.
            self._base = Path(tempfile.mkdtemp(prefix="pgcluster-", dir="/tmp"))
            self._created_base = True
        else:
            base = self._requested_base.resolve()
            data = base / "data"
            # Checked before self._base is set: the clean-up after a failed start must
            # never delete a data directory that was there before us.
            if data.exists() and any(data.iterdir()):
                raise PgClusterError(
                    f"{data} already exists and is not empty; give PgCluster an empty "
                    "base_dir (or none for a fresh one under /tmp)"
                )
            self._created_base = not base.exists()
            base.mkdir(parents=True, exist_ok=True)
            self._base = base
        os.chmod(self._base, 0o700)
        self.wal_archive_dir.mkdir(exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if _running_as_root():
            owner = _postgres_os_user()
            for path in (self._base, self.wal_archive_dir, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            # The check that catches a base_dir under a private parent (pytest's tmp_path).
            probe = subprocess.run(
                _as_owner(["test", "-w", str(self._base)]), check=False, capture_output=True, timeout=30
            )
            if probe.returncode != 0:
                raise PgClusterError(
                    f"the {PG_OS_USER} OS user cannot write to {self._base} (a parent directory "
                    "is probably private to root, like pytest's tmp_path); use a base_dir under "
                    "/tmp or leave base_dir unset"
                )

    def _initdb(self, bin_dir: Path) -> None:
        # UTF8 and the C locale explicitly: the sample data holds non-ASCII text, and the
        # machine's default locale may be POSIX (which would give SQL_ASCII).
        self._run_owner(
            [
                str(bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "--auth=trust",
                "-U", SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # throwaway data: durability is not worth the seconds
            ],
            what="initdb",
        )
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# settings of the throwaway test cluster\ninclude 'pgcluster.conf'\n")

    def _write_settings(self, port: int) -> None:
        settings: dict[str, str] = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            # Tests and demos do not survive a power cut anyway; these make them faster.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "logging_collector": "off",
        }
        if self.archive:
            # The spool path quoted for /bin/sh (a quote in it must not end the quoting)
            # and its '%' doubled (PostgreSQL expands %f/%p in the command).
            archive = shlex.quote(str(self.wal_archive_dir)).replace("%", "%%")
            settings["archive_mode"] = "on"
            # Never overwrite a segment already archived (the documented safe command).
            settings["archive_command"] = _conf_str(f"test ! -f {archive}/%f && cp %p {archive}/%f")
            settings["archive_timeout"] = "60"
        for key, value in self.extra_settings.items():
            settings[key] = value
        text = "".join(f"{k} = {v}\n" for k, v in settings.items())
        conf = self.data_dir / "pgcluster.conf"
        conf.write_text(text, encoding="utf-8")
        if _running_as_root():
            owner = _postgres_os_user()
            os.chown(conf, owner.pw_uid, owner.pw_gid)

    def _start_server(self, bin_dir: Path) -> None:
        # A port picked by free_port() can be taken by someone else before the server binds
        # it; with no port requested, try a few fresh ones before giving up.
        attempts = 1 if self._requested_port else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port(self.host)
            self._write_settings(port)
            self._port = port
            try:
                self._run_owner(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D", str(self.data_dir),
                        "-l", str(self.log_path),
                        "-w", "-t", "60",
                        "start",
                    ],
                    what="pg_ctl start",
                )
            except PgClusterError:
                if attempt < attempts and "already in use" in self._log_tail():
                    continue
                raise
            self._running = True
            return

    def _stop_server(self) -> None:
        try:
            pg_ctl = str(self.bin_dir / "pg_ctl")
            self._run_owner(
                [pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"],
                what="pg_ctl stop",
            )
        except PgClusterError as exc:
            # Already stopped (a test may kill it on purpose) or stuck: make sure no
            # postmaster survives us either way.
            self._kill_postmaster()
            log.debug("pg_ctl stop failed (%s); killed the postmaster if it was still running", exc)
        self._running = False

    def crash(self) -> None:
        """Stop the server the hard way (``pg_ctl stop -m immediate``, no checkpoint) and
        keep its files: for tests of a server that goes away mid-operation. :meth:`stop`
        still cleans up afterwards."""
        self._run_owner(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
            what="pg_ctl stop -m immediate",
        )
        self._running = False

    def resume(self) -> None:
        """Start the server again on the same port and files after :meth:`crash`: for tests
        of a server that comes back (a flapping primary)."""
        self._run_owner(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
             "-w", "-t", "60", "start"],
            what="pg_ctl start",
        )  # fmt: skip
        self._running = True

    def _kill_postmaster(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster and children
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _remove_files(self) -> None:
        if self._base is None:
            return
        if self._created_base:
            shutil.rmtree(self._base, ignore_errors=True)
        else:  # a caller's directory: remove only what we put there
            for path in (self.data_dir, self.socket_dir, self.wal_archive_dir):
                shutil.rmtree(path, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)
        self._base = None
        self._port = None

    def _cleanup_after_failed_start(self) -> None:
        if self._base is not None and (self.data_dir / "postmaster.pid").exists():
            self._stop_server()
        self._running = False
        self._remove_files()

    # -- running things

    def _run_owner(self, argv: list[str], *, what: str) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the cluster's owner; raise with its output on failure."""
        # cwd = base dir: runuser keeps root's cwd, which postgres may not be allowed to read.
        proc = subprocess.run(
            _as_owner(argv),
            check=False,  # the failure is raised below, with the server log
            cwd=self._base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            tail = self._log_tail()
            raise PgClusterError(
                f"{what} failed (exit {proc.returncode}): {detail}"
                + (f"\nserver log ({self.log_path}):\n{tail}" if tail else "")
            )
        return proc

    def run_as_owner(self, argv: list[str], *, what: str | None = None) -> str:
        """Run a command as the OS user that owns the cluster (e.g. pg_basebackup into a
        directory the server may read later); returns its stdout."""
        return self._run_owner(argv, what=what or Path(argv[0]).name).stdout

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, PgClusterError):
            return ""

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL (one or several statements) with the psql binary as the superuser and
        return its unaligned, tuples-only output (``a|b`` per row, NULL as empty).
        Statements run one by one (so CREATE DATABASE works); the first error stops it."""
        proc = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X", "-q", "-A", "-t",
                "-v", "ON_ERROR_STOP=1",
                "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", db,
                "-f", "-",
            ],
            input=sql.encode("utf-8"),
            check=False,  # raised below with psql's message
            capture_output=True,
            env={**os.environ, "PGCLIENTENCODING": "UTF8"},
            timeout=600,
        )
        if proc.returncode != 0:
            raise PgClusterError(
                f"psql on database {db!r} failed (exit {proc.returncode}): "
                f"{proc.stderr.decode('utf-8', 'replace').strip()}"
            )
        return proc.stdout.decode("utf-8").rstrip("\n")

    def database_exists(self, name: str) -> bool:
        # _sq quotes the name as an SQL string literal, so S608 does not apply.
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = {_sq(name)}") == "1"  # noqa: S608

    def create_database(self, name: str, *, exist_ok: bool = False) -> None:
        if exist_ok and self.database_exists(name):
            return
        self.psql(f"CREATE DATABASE {_ident(name)}")

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    def create_user(self, name: str, password: str, *, superuser: bool = True) -> None:
        """A login role that must authenticate with its password (scram-sha-256) over TCP:
        for tests that prove a password travels only where it should."""
        attrs = "SUPERUSER" if superuser else "CREATEDB"
        self.psql(f"CREATE ROLE {_ident(name)} LOGIN {attrs} PASSWORD {_sq(password)}")
        hba = self.data_dir / "pg_hba.conf"
        # pg_hba is first-match: put the password rule above initdb's "trust" lines.
        rule = f"host all {_ident(name)} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(rule + hba.read_text(encoding="utf-8"), encoding="utf-8")
        self.psql("SELECT pg_reload_conf()")
        time.sleep(0.2)  # the postmaster re-reads pg_hba asynchronously after SIGHUP

    # -- streaming replication

    def start_standby(self, base_dir: Path | str | None = None, port: int | None = None) -> PgCluster:
        """A hot standby of this running cluster: ``pg_basebackup -R -X stream`` into a new
        data directory, then started with its own port and socket. It streams WAL from
        this cluster over 127.0.0.1 (initdb's pg_hba trusts local replication connections)
        until it is promoted. Stop it like any PgCluster (``stop()`` or ``with``)."""
        if not self._running:
            raise PgClusterError("start the primary before creating a standby of it")
        standby = PgCluster(base_dir=base_dir, port=port, settings={"hot_standby": "on"})
        bin_dir = standby.bin_dir
        try:
            standby._make_base_dir()
            standby._run_owner(
                [
                    str(bin_dir / "pg_basebackup"),
                    "-D", str(standby.data_dir),
                    "-h", self.host, "-p", str(self.port), "-U", SUPERUSER,
                    "-R",  # standby.signal + primary_conninfo in postgresql.auto.conf
                    "-X", "stream",
                    "--checkpoint=fast",
                    "--no-sync",  # throwaway data, as initdb --no-sync above
                ],
                what="pg_basebackup",
            )
            # The copy carries the primary's pgcluster.conf: _start_server rewrites it with
            # the standby's own port and socket directory.
            standby._start_server(bin_dir)
        except BaseException:
            standby._cleanup_after_failed_start()
            raise
        atexit.register(standby._stop_at_exit)
        log.info("PostgreSQL standby of %s:%s on port %s", self.host, self.port, standby.port)
        return standby

    def wait_for_standby(self, standby: PgCluster, timeout: float = 60.0) -> str:
        """Wait until ``standby`` has replayed everything written here so far; returns that
        WAL position (``pg_current_wal_insert_lsn()`` of this cluster when called).

        The insert position, not ``pg_current_wal_lsn()`` (the write position): these
        clusters run with ``synchronous_commit = off``, so a commit just made may still sit
        in WAL buffers behind the write position, and waiting for that would return before
        the standby has it."""
        lsn = self.psql("SELECT pg_current_wal_insert_lsn()")
        deadline = time.monotonic() + timeout
        while True:
            caught_up = standby.psql(
                f"SELECT coalesce(pg_last_wal_replay_lsn() >= {_sq(lsn)}::pg_lsn, false)"  # noqa: S608 - an LSN we read
            )
            if caught_up == "t":
                return lsn
            if time.monotonic() > deadline:
                raise PgClusterError(
                    f"standby {standby.host}:{standby.port} did not replay up to {lsn} within "
                    f"{timeout:g} s; its log:\n{standby._log_tail()}"
                )
            time.sleep(0.1)

    def __repr__(self) -> str:
        state = f"{self.host}:{self._port}" if self._running else "stopped"
        return f"<PgCluster {state} {self._base or ''}>"


# --- sample data ---------------------------------------------------------------------------

SAMPLE_TABLES = ("users", "events", "guests", "transactions")

_SAMPLE_SCHEMA = """
DROP VIEW IF EXISTS upcoming_events;
DROP TABLE IF EXISTS transactions, guests, events, users CASCADE;
DROP SEQUENCE IF EXISTS invoice_number_seq;

CREATE SEQUENCE invoice_number_seq START 100001;

CREATE TABLE users (
    id          serial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    phone       text,
    country     char(2) NOT NULL,
    created_at  timestamptz NOT NULL,
    profile     jsonb,
    avatar      bytea
);

CREATE TABLE events (
    id            serial PRIMARY KEY,
    organizer_id  integer NOT NULL REFERENCES users (id),
    title         text NOT NULL,
    description   text,
    venue         text,
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL CHECK (ends_at > starts_at),
    capacity      integer NOT NULL CHECK (capacity > 0),
    ticket_price  numeric(10, 2) NOT NULL,
    tags          text[] NOT NULL DEFAULT '{}',
    metadata      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_starts_at_idx ON events (starts_at);

CREATE TABLE guests (
    id            serial PRIMARY KEY,
    event_id      integer NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    user_id       integer NOT NULL REFERENCES users (id),
    status        text NOT NULL CHECK (status IN ('invited', 'accepted', 'declined', 'checked_in')),
    invited_at    timestamptz NOT NULL,
    responded_at  timestamptz,
    note          text,
    UNIQUE (event_id, user_id)
);
CREATE INDEX guests_user_id_idx ON guests (user_id);

CREATE TABLE transactions (
    id          bigserial PRIMARY KEY,
    guest_id    integer NOT NULL REFERENCES guests (id),
    invoice_no  bigint NOT NULL UNIQUE DEFAULT nextval('invoice_number_seq'),
    amount      numeric(12, 2) NOT NULL,
    currency    char(3) NOT NULL,
    paid_at     timestamptz NOT NULL,
    reference   uuid NOT NULL,
    receipt     bytea,
    refunded    boolean NOT NULL DEFAULT false
);

CREATE VIEW upcoming_events AS
    SELECT e.id, e.title, e.starts_at, count(g.id) AS confirmed_guests
    FROM events e
    LEFT JOIN guests g ON g.event_id = e.id AND g.status IN ('accepted', 'checked_in')
    GROUP BY e.id, e.title, e.starts_at;

COMMENT ON TABLE events IS 'Événements — sample data for backup tests';
"""

# Every value derives from the row number, so the same ``rows`` gives byte-identical data.
_SAMPLE_DATA = """
INSERT INTO users (id, email, full_name, phone, country, created_at, profile, avatar)
SELECT i,
       'user' || i || '@example.com',
       (ARRAY['Zoë Ångström', 'José Muñoz', 'Łukasz Żółć', 'Søren Kierkegård', '李雷',
              'Ольга Петрова', 'Nguyễn Văn An', 'Mary O''Brien', 'Émile Zola', 'Ana María'])[1 + i % 10]
           || ' ' || i,
       CASE WHEN i % 7 = 0 THEN NULL ELSE '+1-555-' || lpad(i::text, 7, '0') END,
       (ARRAY['US', 'FR', 'DE', 'JP', 'BR'])[1 + i % 5],
       timestamptz '2024-01-01 00:00:00+00' + i * interval '37 minutes',
       CASE WHEN i % 11 = 0 THEN NULL
            ELSE jsonb_build_object('newsletter', i % 2 = 0, 'langs', jsonb_build_array('en', 'fr'),
                                    'score', (i * 13) % 100, 'motto', 'naïve café ☕') END,
       CASE WHEN i % 3 = 0 THEN NULL ELSE '\\x00ff'::bytea || decode(md5(i::text), 'hex') END
FROM generate_series(1, {users}) AS i;

INSERT INTO events (id, organizer_id, title, description, venue, starts_at, ends_at, capacity,
                    ticket_price, tags, metadata)
SELECT i,
       1 + (i * 7) % {users},
       'Event #' || i || ' — ' || (ARRAY['Gala', 'Konferenz', 'Fête', '会議', 'Meetup'])[1 + i % 5],
       CASE WHEN i % 4 = 0 THEN NULL ELSE repeat('Lorem ipsum dolor sit amet. ', 1 + i % 5) END,
       CASE WHEN i % 6 = 0 THEN NULL ELSE 'Hall ' || chr(65 + i % 26) END,
       timestamptz '2024-03-01 18:00:00+00' + i * interval '1 day 3 hours',
       timestamptz '2024-03-01 22:00:00+00' + i * interval '1 day 3 hours',
       50 + i % 200,
       round((i % 100) * 1.25 + 0.99, 2),
       ARRAY[(ARRAY['music', 'tech', 'food', 'art'])[1 + i % 4], 'year-2024'],
       jsonb_build_object('online', i % 3 = 0, 'organizer_note', NULL)
FROM generate_series(1, {events}) AS i;

INSERT INTO guests (id, event_id, user_id, status, invited_at, responded_at, note)
SELECT i,
       1 + i % {events},
       i,
       (ARRAY['invited', 'accepted', 'declined', 'checked_in'])[1 + i % 4],
       timestamptz '2024-02-01 09:00:00+00' + i * interval '11 minutes',
       CASE WHEN i % 4 = 0 THEN NULL
            ELSE timestamptz '2024-02-02 09:00:00+00' + i * interval '13 minutes' END,
       CASE WHEN i % 9 = 0 THEN 'Végétarien 🌱, +1' WHEN i % 5 = 0 THEN '' ELSE NULL END
FROM generate_series(1, {users}) AS i;

INSERT INTO transactions (id, guest_id, invoice_no, amount, currency, paid_at, reference,
                          receipt, refunded)
SELECT i,
       i,
       100000 + i,
       round(((i * 37) % 50000) / 100.0 + 1, 2),
       (ARRAY['USD', 'EUR', 'JPY'])[1 + i % 3],
       timestamptz '2024-02-03 12:00:00+00' + i * interval '17 minutes',
       md5('txn' || i)::uuid,
       CASE WHEN i % 4 = 0 THEN NULL ELSE convert_to('Reçu n° ' || i, 'UTF8') END,
       i % 25 = 0
FROM generate_series(1, {users}) AS i;

SELECT setval(pg_get_serial_sequence('users', 'id'), {users});
SELECT setval(pg_get_serial_sequence('events', 'id'), {events});
SELECT setval(pg_get_serial_sequence('guests', 'id'), {users});
SELECT setval(pg_get_serial_sequence('transactions', 'id'), {users});
SELECT setval('invoice_number_seq', 100000 + {users});
ANALYZE;
"""


def load_sample_data(cluster: PgCluster, dbname: str, rows: int = 1000) -> dict[str, int]:
    """Create (or re-create) the sample "event manager" schema in ``dbname`` and fill it
    deterministically: ``rows`` users, guests and transactions, ``rows // 4`` events.

    The schema has foreign keys, indexes, a view, a standalone sequence, NULLs, non-ASCII
    text (including 4-byte UTF-8), bytea, jsonb, arrays, numerics and timestamps: the
    things a dump/restore can get wrong. The database is created if missing; the sample
    objects are dropped first, anything else in it is left alone. Returns the row counts.
    """
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    cluster.create_database(dbname, exist_ok=True)
    counts = {"users": rows, "events": max(1, rows // 4), "guests": rows, "transactions": rows}
    script = _SAMPLE_SCHEMA + _SAMPLE_DATA.format(users=rows, events=counts["events"])
    cluster.psql("BEGIN;\n" + script + "\nCOMMIT;", db=dbname)
    return counts


# --- fingerprint ---------------------------------------------------------------------------

_USER_TABLES = """
SELECT n.nspname, c.relname,
       coalesce((SELECT array_agg(a.attname ORDER BY k.ord)
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS pk
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND n.nspname NOT LIKE 'pg\\_temp%%'
ORDER BY 1, 2
"""


def table_key(schema: str, table: str) -> str:
    """``users`` for public tables, ``schema.table`` otherwise (the same naming the
    PostgreSQL source uses in its stats)."""
    return table if schema == "public" else f"{schema}.{table}"


def db_fingerprint(conn: str | Mapping[str, Any] | PgCluster, dbname: str) -> dict[str, dict[str, Any]]:
    """``{table: {"rows": n, "checksum": md5}}`` for every user table of ``dbname``.

    The checksum is an md5 over each row's text form, in primary-key order (whole-row
    order for tables without one), computed in the server. Two databases with equal
    fingerprints hold the same data. ``conn``: a libpq URI, psycopg2.connect keyword
    arguments, or a PgCluster; ``dbname`` overrides the database it names.
    """
    import psycopg2  # type: ignore[import-untyped]  # lazy: psycopg2: loaded when PostgreSQL is used
    from psycopg2 import sql  # type: ignore[import-untyped]  # lazy: psycopg2: loaded when PostgreSQL is used

    if isinstance(conn, PgCluster):
        conn = conn.conn_params()
    if isinstance(conn, str):
        connection = psycopg2.connect(conn, dbname=dbname)
    else:
        connection = psycopg2.connect(**{**dict(conn), "dbname": dbname})
    try:
        connection.autocommit = True
        with connection.cursor() as cur:
            # The text form of a row depends on these: pin them so that two sessions (or
            # two servers) render the same data identically.
            cur.execute(
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';"
                " SET extra_float_digits = 3; SET bytea_output = 'hex'"
            )
            cur.execute(_USER_TABLES)
            tables = cur.fetchall()
            result: dict[str, dict[str, Any]] = {}
            for schema, table, pk in tables:
                ident = sql.Identifier(schema, table)
                if pk:
                    order = sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(col) for col in pk)
                else:
                    order = sql.SQL("t::text")
                cur.execute(
                    sql.SQL(
                        "SELECT count(*), md5(coalesce(string_agg(md5(t::text), '' ORDER BY {order}), ''))"
                        " FROM {table} AS t"
                    ).format(order=order, table=ident)
                )
                count, checksum = cur.fetchone()
                result[table_key(schema, table)] = {"rows": int(count), "checksum": checksum}
            return result
    finally:
        connection.close()


# --- small helpers -------------------------------------------------------------------------


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _postgres_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise PgClusterError(
            f"running as root but there is no {PG_OS_USER!r} OS user to run the server as "
            "(initdb refuses root); install postgresql-15 (it creates the user) or run as a "
            "non-root user"
        ) from None


def _as_owner(argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` as the cluster owner."""
    if _running_as_root():
        return ["runuser", "-u", PG_OS_USER, "--", *argv]
    return argv


def _sq(value: str) -> str:
    """An SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _conf_str(value: str) -> str:
    """A postgresql.conf string value (single quotes doubled inside)."""
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    """An SQL identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'

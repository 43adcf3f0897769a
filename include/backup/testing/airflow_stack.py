"""A real Airflow deployment on 127.0.0.1 for end-to-end tests and benchmarks.

:class:`AirflowStack` starts a throwaway PostgreSQL metadata database (:class:`PgCluster`),
writes an Airflow home (LocalExecutor, SimpleAuthManager with one ``admin`` user whose
password is written to the passwords file beforehand, so ``POST /auth/token`` works without
reading generated passwords from the logs), runs ``airflow db migrate``, then starts
``api-server``, ``scheduler``, ``dag-processor`` and ``triggerer``, each in its own process
group with its output in ``<home>/<component>.out``, and waits until
``/api/v2/monitor/health`` reports every component healthy. Leaving the context (or
:meth:`AirflowStack.stop`, or interpreter exit as a safety net) kills every process group it
started (SIGTERM, then SIGKILL) and stops the cluster, so nothing is left listening.

    with AirflowStack(base, dags_folder, {"BACKUP_CONFIG": str(cfg)}, parallelism=8) as stack:
        with stack.client() as api:
            api.post("/dags/backup__daily/dagRuns", json={"logical_date": None})

Everything the deployment needs is in :attr:`AirflowStack.env`; ``env_extra`` is applied last,
so it can add connections (``AIRFLOW_CONN_*``), project settings, the caller's timing and
scheduling choices (heartbeats, re-parse intervals, ``use_job_schedule``: Airflow's
defaults unless set there), or override any Airflow setting chosen here. Users:
tests/e2e/conftest.py, tests/e2e/test_celery.py, bench/bench_scheduler.py and scripts/up.py
(``make up``).

``executor="CeleryExecutor"`` adds a Redis broker (:class:`RedisServer`), the metadata DB as
Celery's result backend and ``celery_workers`` workers (``airflow celery worker``), each in
its own process group (components ``celery-worker-1`` …), with its own Celery hostname
(``worker1@<host>``) which is also the ``hostname`` its task instances report (through
``[core] hostname_callable`` = :func:`celery_worker_hostname`), all sharing the caller's
staging directory. :meth:`AirflowStack.stop_worker`, :meth:`AirflowStack.kill_worker`
(SIGKILL, a machine lost) and :meth:`AirflowStack.start_worker` (again, with extra
environment such as a fault hook) take one worker away and bring it back, and
:attr:`AirflowStack.redis` can be stopped and started on its port (a broker outage).
``metadata_dir``, ``port`` and ``password`` pin what is otherwise fresh
per start, and :meth:`AirflowStack.detach` leaves everything running after the caller exits
(``make up``; ``make down`` stops it by process group).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from include.backup.testing.postgres import PgCluster, free_port
from include.backup.testing.redis import RedisServer

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
ADMIN_USER = "admin"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_KEYS = ("metadatabase", "scheduler", "dag_processor", "triggerer")
"""The /api/v2/monitor/health entries that must say ``healthy``."""
START_TIMEOUT_S = 420.0  # a ceiling: a healthy stack is used as soon as it answers; seen 249 s at load 15-20
STOP_TIMEOUT_S = 30.0
INHERITED_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
"""Settings of the calling environment that must not leak into the deployment."""
INHERITED_NAMES = ("BACKUP_KEY_FILE",)
EXECUTORS = ("LocalExecutor", "CeleryExecutor")
WORKER_NAME_ENV = "BACKUP_CELERY_WORKER_NAME"
"""Set in each Celery worker's environment: its name, for :func:`celery_worker_hostname`."""
WORKER_READY_MARK = " ready."
"""What a Celery worker logs once it consumes from the broker (``worker1@host ready.``)."""


def celery_worker_hostname() -> str:
    """``[core] hostname_callable`` of the Celery workers: ``<worker name>@<fqdn>`` (the
    worker's Celery node name), so that task instances show which worker ran them even when
    all workers share one machine; the plain FQDN outside a worker."""
    name = os.environ.get(WORKER_NAME_ENV)
    fqdn = socket.getfqdn()
    return f"{name}@{fqdn}" if name else fqdn


def worker_argv(index: int, concurrency: int, bin_dir: Path) -> list[str]:
    """The command line of Celery worker ``index`` (1-based). ``--skip-serve-logs``: two
    workers on one host would fight over the log server's port, and the api-server reads the
    task logs from the shared local log folder."""
    return [
        str(bin_dir / "airflow"), "celery", "worker",
        "--celery-hostname", f"worker{index}@%h",
        "--concurrency", str(concurrency),
        "--skip-serve-logs",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def celery_env(broker_url: str, result_backend: str, concurrency: int) -> dict[str, str]:
    """The settings of a CeleryExecutor deployment (broker, result backend, slots)."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
    }


def kill_process_group(pgid: int) -> None:
    """SIGKILL a process group; one already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class AirflowStackError(RuntimeError):
    """The deployment could not be started (the message carries each component's log tail)."""


def _fernet_key() -> str:
    from cryptography.fernet import Fernet  # lazy: only when a test stack is set up

    return Fernet.generate_key().decode()


def airflow_env(
    base_env: Mapping[str, str],
    *,
    home: Path,
    dags_folder: Path,
    plugins_folder: Path | None,
    port: int,
    db_uri: str,
    passwords_file: Path,
    parallelism: int,
    max_active_tasks_per_dag: int,
    pythonpath: Path = REPO_ROOT,
    env_extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every Airflow process of the deployment.

    ``base_env`` without its Airflow settings, connections, variables and BACKUP_KEY_FILE
    (a developer's shell must not change what is measured or tested), then the deployment's
    settings, then ``env_extra``. Fresh secrets each call.

    The deployment's settings are only what makes it one small deployment on 127.0.0.1
    (executor, database, auth, ports, one API worker and one parsing process). Timing and
    scheduling choices (heartbeats, re-parse intervals, ``[scheduler] use_job_schedule``)
    stay at Airflow's defaults unless the caller sets them in ``env_extra``: the e2e tests
    shorten them, the benchmark keeps production values."""
    env = {
        k: v
        for k, v in base_env.items()
        if not k.startswith(INHERITED_PREFIXES) and k not in INHERITED_NAMES
    }
    url = f"http://127.0.0.1:{port}"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max_active_tasks_per_dag),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_uri,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONPATH": str(pythonpath),
        }
    )
    if plugins_folder is not None:
        env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(plugins_folder)
    env.update(env_extra or {})
    return env


def component_argv(component: str, port: int, bin_dir: Path) -> list[str]:
    """The command line of one component."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown Airflow component {component!r}; expected one of {', '.join(COMPONENTS)}")
    argv = [str(bin_dir / "airflow"), component]
    if component == "api-server":
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    elif component in ("scheduler", "triggerer"):
        # Their log server binds every interface (host "" is hard-coded in
        # airflow.utils.serve_logs); servers here bind to loopback only, and the api-server
        # reads the task logs from the shared local log folder.
        argv.append("--skip-serve-logs")
    return argv


def all_healthy(health: Mapping[str, Any] | None) -> bool:
    """Whether a /api/v2/monitor/health answer reports every component healthy."""
    if not health:
        return False
    return all((health.get(k) or {}).get("status") == "healthy" for k in HEALTH_KEYS)


def stop_process_groups(
    procs: Mapping[str, subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT_S
) -> None:
    """SIGTERM every group, wait up to ``timeout`` in all, then SIGKILL what is left: a
    group may hold children that outlive its leader (task supervisors, uvicorn workers)."""
    for proc in procs.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


class AirflowStack:
    """api-server, scheduler, dag-processor and triggerer with LocalExecutor and a
    PostgreSQL metadata database, on 127.0.0.1; see the module docstring.

    ``base_dir`` must exist; the Airflow home is ``base_dir/airflow`` (created). The
    metadata cluster lives under /tmp (the postgres OS user must reach it)."""

    def __init__(
        self,
        base_dir: Path,
        dags_folder: Path,
        env_extra: Mapping[str, str] | None = None,
        *,
        parallelism: int = 8,
        max_active_tasks_per_dag: int = 16,
        plugins_folder: Path | None = REPO_ROOT / "plugins",
        pythonpath: Path = REPO_ROOT,
        start_timeout_s: float = START_TIMEOUT_S,
        bin_dir: Path | None = None,
        executor: str = "LocalExecutor",
        celery_workers: int = 2,
        worker_concurrency: int | None = None,
        metadata_dir: Path | None = None,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        if executor not in EXECUTORS:
            raise ValueError(f"executor {executor!r} is not supported; use one of {', '.join(EXECUTORS)}")
        if executor == "CeleryExecutor" and celery_workers < 1:
            raise ValueError(f"celery_workers ({celery_workers}) must be at least 1 with the CeleryExecutor")
        if parallelism < 1 or max_active_tasks_per_dag < 1:
            raise ValueError(
                f"parallelism ({parallelism}) and max_active_tasks_per_dag "
                f"({max_active_tasks_per_dag}) must be at least 1"
            )
        if not Path(dags_folder).is_dir():
            raise ValueError(
                f"dags_folder {dags_folder} is not a directory; create it and put the DAG files in it"
            )
        self.base_dir = Path(base_dir)
        self.dags_folder = Path(dags_folder)
        self.env_extra = dict(env_extra or {})
        self.parallelism = parallelism
        self.max_active_tasks_per_dag = max_active_tasks_per_dag
        self.plugins_folder = plugins_folder
        self.pythonpath = pythonpath
        self.start_timeout_s = start_timeout_s
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.home = self.base_dir / "airflow"
        self.password = password or secrets.token_urlsafe(12)
        self.executor = executor
        self.celery_workers = celery_workers if executor == "CeleryExecutor" else 0
        # the same total slots as LocalExecutor's parallelism, split over the workers
        self.worker_concurrency = worker_concurrency or max(1, parallelism // max(1, self.celery_workers))
        self.metadata_dir = metadata_dir
        self.requested_port = port
        self.redis: RedisServer | None = None
        self.port = 0
        self.url = ""
        self.env: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metadata_db: PgCluster | None = None
        self._token: str | None = None

    # -- lifecycle

    def __enter__(self) -> AirflowStack:  # noqa: PYI034 - start() returns self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> AirflowStack:
        """Start everything and wait until it is healthy; on any failure stop what was
        started and raise :class:`AirflowStackError` (or the PgCluster error)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        passwords_file = self.home / "simple_auth_manager_passwords.json"
        passwords_file.write_text(json.dumps({ADMIN_USER: self.password}) + "\n")
        atexit.register(self.stop)  # a safety net if the caller dies before stop()
        self.metadata_db = PgCluster(self.metadata_dir).start()
        self.metadata_db.create_database("airflow")
        self.port = self.requested_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env_extra = dict(self.env_extra)
        if self.executor == "CeleryExecutor":
            self.redis = RedisServer(self.home / "redis.out").start()
            backend = f"db+postgresql://postgres@127.0.0.1:{self.metadata_db.port}/airflow"
            env_extra = {**celery_env(self.redis.url, backend, self.worker_concurrency), **env_extra}
        self.env = airflow_env(
            os.environ,
            home=self.home,
            dags_folder=self.dags_folder,
            plugins_folder=self.plugins_folder,
            port=self.port,
            db_uri=f"postgresql+psycopg2://postgres@127.0.0.1:{self.metadata_db.port}/airflow",
            passwords_file=passwords_file,
            parallelism=self.parallelism,
            max_active_tasks_per_dag=self.max_active_tasks_per_dag,
            pythonpath=self.pythonpath,
            env_extra=env_extra,
        )
        self._migrate()
        for component in COMPONENTS:
            self._spawn(component)
        since = {name: self._log_size(name) for name in self.worker_names}
        for index in range(1, self.celery_workers + 1):
            self._spawn_worker(index)
        self._wait_healthy()
        self._wait_workers_ready(since)

    def _migrate(self) -> None:
        migrate = subprocess.run(
            [str(self.bin_dir / "airflow"), "db", "migrate"],
            env=self.env,
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,  # raised below with its output
        )
        if migrate.returncode != 0:
            raise AirflowStackError(
                f"airflow db migrate failed (exit {migrate.returncode}):\n"
                f"{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"
            )

    @property
    def worker_names(self) -> list[str]:
        """The components of the Celery workers (``celery-worker-1`` …); none with LocalExecutor."""
        return [f"celery-worker-{i}" for i in range(1, self.celery_workers + 1)]

    def _spawn_worker(self, index: int, env_extra: Mapping[str, str] | None = None) -> None:
        env = {
            **self.env,
            WORKER_NAME_ENV: f"worker{index}",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.celery_worker_hostname",
            **(env_extra or {}),
        }
        argv = worker_argv(index, self.worker_concurrency, self.bin_dir)
        self._spawn(f"celery-worker-{index}", argv, env, append=True)

    def _wait_workers_ready(self, since: Mapping[str, int] | None = None) -> None:
        """Wait for each worker's ready line, in its output after ``since[name]`` bytes (a
        restarted worker appends to its log, which already holds an earlier ready line)."""
        deadline = time.monotonic() + self.start_timeout_s
        for name in since or self.worker_names:
            offset = (since or {}).get(name, 0)
            while WORKER_READY_MARK not in self._log_since(name, offset):
                if self.procs[name].poll() is not None or time.monotonic() > deadline:
                    raise AirflowStackError(
                        f"Celery worker {name} did not become ready within {self.start_timeout_s:.0f} s "
                        f"(exit code {self.procs[name].poll()}):\n{self.logs(name)}"
                    )
                time.sleep(0.5)

    def _log_size(self, component: str) -> int:
        path = self.log_path(component)
        return path.stat().st_size if path.exists() else 0

    def _log_since(self, component: str, offset: int) -> str:
        path = self.log_path(component)
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def _worker(self, index: int) -> str:
        name = f"celery-worker-{index}"
        if not 1 <= index <= self.celery_workers:
            raise ValueError(
                f"no Celery worker {index}: this deployment has workers 1..{self.celery_workers}"
            )
        return name

    def start_worker(self, index: int, env_extra: Mapping[str, str] | None = None) -> None:
        """(Re)start Celery worker ``index`` with ``env_extra`` on top of the deployment's
        environment (a test arms a fault hook on one worker this way) and wait until it
        consumes from the broker. A worker still running is stopped first."""
        name = self._worker(index)
        if name in self.procs and self.procs[name].poll() is None:
            self.stop_worker(index)
        offset = self._log_size(name)
        self._spawn_worker(index, env_extra)
        self._wait_workers_ready({name: offset})

    def stop_worker(self, index: int) -> None:
        """Stop Celery worker ``index`` as an operator would (SIGTERM: Celery's warm
        shutdown lets running tasks finish), SIGKILL after the stop timeout."""
        name = self._worker(index)
        stop_process_groups({name: self.procs[name]})

    def kill_worker(self, index: int) -> None:
        """SIGKILL Celery worker ``index``'s process group, as a machine lost: the tasks it
        runs live in process groups of their own (Airflow's supervisor), so the caller
        kills those too (:func:`kill_process_group`)."""
        proc = self.procs[self._worker(index)]
        kill_process_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def _spawn(
        self,
        component: str,
        argv: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        append: bool = False,
    ) -> None:
        # the child keeps its own copy of the file
        with open(self.log_path(component), "ab" if append else "wb") as out:
            self.procs[component] = subprocess.Popen(
                argv or component_argv(component, self.port, self.bin_dir),
                env=dict(env or self.env),
                cwd=self.base_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as one at stop()
            )

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        health: dict[str, Any] | None = None
        while not all_healthy(health := self.health()):
            dead = [c for c, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                detail = "\n".join(f"--- {c} ({self.log_path(c)})\n{self.logs(c)}" for c in self.procs)
                raise AirflowStackError(
                    f"Airflow did not become healthy within {self.start_timeout_s:.0f} s "
                    f"(exited: {dead or 'none'}; health: {health}):\n{detail}"
                )
            time.sleep(1)

    def stop(self) -> None:
        """Kill every process group started here, then stop the metadata cluster. Safe to
        call twice."""
        atexit.unregister(self.stop)
        try:
            stop_process_groups(self.procs)
        finally:
            self.procs = {}
            if self.redis is not None:
                self.redis.stop()
                self.redis = None
            if self.metadata_db is not None:
                self.metadata_db.stop()
                self.metadata_db = None

    def detach(self) -> None:
        """Leave every process and the metadata cluster running when this process exits
        (``make up``): the caller records :attr:`procs`' pids and stops them itself."""
        atexit.unregister(self.stop)
        if self.redis is not None:
            self.redis.detach()
        if self.metadata_db is not None:
            self.metadata_db.detach()

    # -- use

    def health(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def token(self) -> str:
        """A JWT for the REST API (fetched once)."""
        if self._token is None:
            r = httpx.post(
                f"{self.url}/auth/token",
                json={"username": ADMIN_USER, "password": self.password},
                timeout=30,
            )
            r.raise_for_status()
            self._token = str(r.json()["access_token"])
        return self._token

    def client(self, timeout: float = 30) -> httpx.Client:
        """An httpx client on ``/api/v2`` with the token; the caller closes it."""
        return httpx.Client(
            base_url=f"{self.url}/api/v2",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=timeout,
        )

    def api_client(self) -> Any:
        """An ``apache-airflow-client`` ApiClient on this deployment, with the token; use
        it in a ``with`` block. Build the API classes on it (``ConnectionApi(client)``)."""
        # Imported here: the REST client is a test dependency (requirements-dev), not one of
        # the runtime pins the image installs.
        import airflow_client.client as airflow_client  # lazy: REST client: only against a running test stack

        config = airflow_client.Configuration(host=self.url, access_token=self.token())
        return airflow_client.ApiClient(config)

    def log_path(self, component: str) -> Path:
        return self.home / f"{component}.out"

    def logs(self, component: str, tail: int = 5000) -> str:
        """The last ``tail`` characters of a component's output."""
        path = self.log_path(component)
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def settings(self) -> dict[str, str]:
        """The settings that bound concurrency, for a benchmark to print ("default" where
        the deployment leaves Airflow's default)."""
        keys = (
            "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__CORE__PARALLELISM",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
            "AIRFLOW__API__WORKERS",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY",
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT",
        )
        return {
            k.removeprefix("AIRFLOW__").lower().replace("__", "."): self.env.get(k, "default") for k in keys
        }

    def wait_for_dags(self, dag_ids: set[str], timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed every DAG in ``dag_ids``."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        with self.client() as api:
            while time.monotonic() < deadline:
                seen = self._dag_ids(api)
                if dag_ids <= seen:
                    return
                time.sleep(1)
            errors = api.get("/importErrors").json()
        missing = sorted(dag_ids - seen)
        raise AirflowStackError(
            f"{len(missing)} DAG(s) not parsed within {timeout:.0f} s (first: {missing[:5]}); "
            f"import errors: {json.dumps(errors)[:3000]}\n--- dag-processor\n{self.logs('dag-processor')}"
        )

    @staticmethod
    def _dag_ids(api: httpx.Client) -> set[str]:
        ids: set[str] = set()
        while True:  # pages of at most [api] maximum_page_limit (100 by default)
            r = api.get("/dags", params={"limit": 100, "offset": len(ids)})
            r.raise_for_status()
            page = {d["dag_id"] for d in r.json()["dags"]}
            if not page - ids:
                return ids
            ids |= page

    def __repr__(self) -> str:
        state = self.url if self.procs else "stopped"
        return f"<AirflowStack {self.executor} {state} home={self.home}>"

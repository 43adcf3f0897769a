"""docker-compose.yaml, the Dockerfile and the compose backup config, checked without a
Docker engine (none runs in CI; `docker compose config` is not required).

What a user of `docker compose up` would otherwise find out the hard way:

- the file parses (x-airflow-common's anchors resolved by yaml.safe_load); every service an
  Airflow service depends on exists and has a healthcheck; every long-running service has
  one; every published port is bound to 127.0.0.1; every image is pinned;
- the image is built from the Dockerfile, whose base is the official image of the Airflow
  (and Python) version requirements.txt is pinned for;
- all Airflow components share the staging volume, the Fernet key, the JWT secret and the
  API secret key (a component with its own JWT secret makes tasks fail with 403s);
- deploy/compose/backup_config.yaml (BACKUP_CONFIG) validates with the project's schema, and
  every connection it names is an AIRFLOW_CONN_<ID> of the Airflow services that points at
  a service of this file, with the connection type its target or source needs;
- the PostgreSQL source archives WAL into the volume the workers read as wal_archive_dir,
  the MongoDB source is the replica set its connection names, and the files sources' paths
  are mounted on the workers;
- the shell scripts compose runs parse;
- `make up` (include/backup/devstack.py) and this file describe one deployment: every
  compose service is either one that `make up` starts (``SERVICES``, one list read by both)
  or listed with the reason it is compose-only, and the Airflow components match;
- deploy/compose/init_dev.py (the dev-init service) creates every bucket, container and
  directory the targets need and seeds MongoDB, once, against the real local services of
  the integration tests (marker integration), with the compose file's dev key ring.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from include.backup import devstack
from include.backup.config.loader import load_config
from include.backup.config.schema import BackupConfig, FilesSource, PostgresSource
from include.backup.keys import KeyRing
from include.backup.targets import build_target
from include.backup.testing.airflow_stack import COMPONENTS
from tests.integration.mongo_service import MongoServer
from tests.integration.services import AzureService, GCSService, S3Service, SFTPService, unique

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SHARED_SECRETS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")
# The Airflow connection type each target / source kind is read with (docs/targets.md).
CONN_TYPES = {
    "s3": "aws",
    "azure_blob": "wasb",
    "gcs": "google_cloud_platform",
    "sftp": "sftp",
    "ftp": "ftp",
    "postgres": "postgres",
    "mongo": "mongo",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built on x-airflow-common: they run the project's Airflow image."""
    image = compose["x-airflow-common"]["image"]
    found = {name: svc for name, svc in compose["services"].items() if svc.get("image") == image}
    assert found, f"no service runs the Airflow image {image}"
    return found


@pytest.fixture(scope="module")
def dev_services(compose: dict[str, Any], airflow_services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything else: Airflow's Postgres and Redis, and the development services."""
    return {n: s for n, s in compose["services"].items() if n not in airflow_services}


@pytest.fixture(scope="module")
def one_shot(compose: dict[str, Any]) -> set[str]:
    """Services that run to completion (init steps) or only on `docker compose run`."""
    names = {
        dep
        for svc in compose["services"].values()
        if isinstance(svc.get("depends_on"), dict)
        for dep, cond in svc["depends_on"].items()
        if (cond or {}).get("condition") == "service_completed_successfully"
    }
    return names | {n for n, s in compose["services"].items() if "debug" in (s.get("profiles") or [])}


@pytest.fixture(scope="module")
def worker_env(compose: dict[str, Any]) -> dict[str, str]:
    return _env(compose["services"]["airflow-worker"])


@pytest.fixture(scope="module")
def backup_config(compose: dict[str, Any], worker_env: dict[str, str]) -> BackupConfig:
    """The config BACKUP_CONFIG names, found through the worker's mounts, fully valid."""
    path = _host_path(compose["services"]["airflow-worker"], worker_env["BACKUP_CONFIG"])
    assert path is not None and path.is_file(), f"BACKUP_CONFIG {worker_env['BACKUP_CONFIG']} is not mounted"
    loaded = load_config(path)
    assert not loaded.issues, f"{path}: {loaded.issues}"
    return loaded.config


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _default(str(v)) for k, v in env.items()}


def _depends_on(svc: dict[str, Any]) -> list[str]:
    deps = svc.get("depends_on") or {}
    return list(deps) if isinstance(deps, (dict, list)) else []


def _mount(vol: str | dict[str, Any]) -> tuple[str, str]:
    """(source, target) of a short ("src:dst[:mode]") or long-syntax volume entry."""
    if isinstance(vol, dict):
        return str(vol.get("source", "")), str(vol.get("target", ""))
    source, _, rest = vol.partition(":")
    return source, rest.split(":", 1)[0]


def _mounts(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every volume entry."""
    out = []
    for vol in svc.get("volumes") or []:
        source, target = _mount(vol)
        ro = vol.get("read_only", False) if isinstance(vol, dict) else vol.endswith(":ro")
        out.append((source, target, bool(ro)))
    return out


def _host_path(svc: dict[str, Any], container_path: str) -> Path | None:
    """Where ``container_path`` comes from in the repository, through a bind mount."""
    for source, target, _ in _mounts(svc):
        rel = _relative(container_path, target)
        if rel is not None and source.startswith("."):
            return (ROOT / source / rel).resolve()
    return None


def _relative(path: str, mount_point: str) -> str | None:
    try:
        return str(PurePosixPath(path).relative_to(mount_point))
    except ValueError:
        return None


def _volume_at(svc: dict[str, Any], container_path: str) -> tuple[str, bool] | None:
    """(volume, read_only) of the mount holding ``container_path``."""
    for source, target, ro in _mounts(svc):
        if _relative(container_path, target) is not None:
            return source, ro
    return None


def _pinned_airflow() -> str:
    match = re.search(r"^apache-airflow==([\w.]+)\s*$", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, "requirements.txt does not pin apache-airflow"
    return match.group(1)


def _locked_python() -> str:
    match = re.search(r"--python-version\s+(\d+\.\d+)", (ROOT / "requirements.txt").read_text())
    assert match, "requirements.txt does not say which Python it was compiled for"
    return match.group(1)


def _default(value: str) -> str:
    """What compose makes of ``value`` with no variables set: ``${VAR:-default}`` ->
    default, ``${VAR}`` -> empty, ``$$`` -> ``$``."""
    value = re.sub(r"(?<!\$)\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)
    value = re.sub(r"(?<!\$)\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", value)
    return value.replace("$$", "$")


def _connection(value: str) -> dict[str, Any]:
    """An AIRFLOW_CONN_ value (JSON or URI form) as {conn_type, host, extra, ...}."""
    if value.lstrip().startswith("{"):
        conn = json.loads(value)
        conn.setdefault("extra", {})
        return conn
    parts = urlsplit(value)
    return {"conn_type": parts.scheme.replace("postgresql", "postgres"), "host": parts.hostname, "extra": {}}


def _conn_ids(config: BackupConfig) -> dict[str, str]:
    """conn_id -> the connection type the config needs it to be."""
    ids = {config.dr.smtp_conn_id: "smtp", config.encryption.key_conn_id: "generic"}
    for item in (*config.targets.values(), *config.sources.values()):
        conn_id = getattr(item, "conn_id", None)
        if conn_id:
            ids[conn_id] = CONN_TYPES[item.type]
    # Failover: a secondary or test environment given as conn:<id>, the switch's connection;
    # each is a server of the same kind as the source.
    for source, failover in config.dr.failover.items():
        kind = CONN_TYPES[config.sources[source].type]
        places = [p for p in (failover.secondary, failover.test_environment) if p and p.startswith("conn:")]
        for place in places:
            ids[place.removeprefix("conn:")] = kind
        if failover.switch and failover.switch.conn_id:
            ids[failover.switch.conn_id] = kind
    return ids


def _hosts(conn: dict[str, Any]) -> set[str]:
    """The host names a connection reaches: its host, and URLs in the extra."""
    hosts = {str(conn["host"])} if conn.get("host") else set()
    if hosts and "://" in next(iter(hosts)):  # wasb: the account URL is the host
        hosts = {urlsplit(next(iter(hosts))).hostname or ""}
    for value in conn["extra"].values():
        if isinstance(value, str) and value.startswith("http"):
            hosts.add(urlsplit(value).hostname or "")
    return hosts


# --- the Airflow services --------------------------------------------------------------


def test_core_airflow_components_are_present(airflow_services: dict[str, dict[str, Any]]) -> None:
    commands = {str(svc.get("command", "")) for svc in airflow_services.values()}
    for component in ("api-server", "scheduler", "dag-processor", "triggerer", "celery worker"):
        assert component in commands, f"no service runs `airflow {component}`"
    assert "airflow-init" in airflow_services


def test_dependencies_exist_and_have_healthchecks(
    compose: dict[str, Any], airflow_services: dict[str, dict[str, Any]]
) -> None:
    services = compose["services"]
    for name, svc in airflow_services.items():
        for dep in _depends_on(svc):
            assert dep in services, f"{name} depends on undefined service {dep!r}"
            condition = (
                (svc["depends_on"][dep] or {}).get("condition")
                if isinstance(svc["depends_on"], dict)
                else None
            )
            if condition == "service_completed_successfully":
                continue  # a one-shot init container: completion, not health
            assert services[dep].get("healthcheck", {}).get("test"), (
                f"{dep} (needed by {name}) has no healthcheck"
            )


def test_long_running_services_have_healthchecks(compose: dict[str, Any], one_shot: set[str]) -> None:
    assert {"airflow-init", "dev-init"} <= one_shot
    for name, svc in compose["services"].items():
        if name in one_shot:
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_published_ports_bind_localhost_only(compose: dict[str, Any], dev_services: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} is not bound to 127.0.0.1"
            else:
                assert str(port).startswith("127.0.0.1:"), (
                    f"{name}: port {port!r} is published on every interface; write 127.0.0.1:HOST:CONTAINER"
                )
    for name in ("s3", "azurite", "gcs-emulator", "sftp", "mailpit", "pg-source", "mongo-source"):
        assert dev_services.get(name, {}).get("ports"), (
            f"development service {name} is missing or unpublished"
        )


def test_bind_mounted_paths_exist(compose: dict[str, Any]) -> None:
    named_volumes = set(compose.get("volumes") or {})
    seen = set()
    for name, svc in compose["services"].items():
        for source, _, _ in _mounts(svc):
            if source.startswith((".", "/")):
                path = (ROOT / source).resolve() if source.startswith(".") else Path(source)
                assert path.exists(), f"{name} mounts {source}, which is not in the repository"
                seen.add(source.rstrip("/"))
            else:
                assert source in named_volumes, f"{name} uses undeclared volume {source!r}"
    assert {"./dags", "./plugins", "./include"} <= seen


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = _default(str(svc.get("image", "")))
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition("@")[0].rpartition(":") if "@" in image else image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image} has no tag; pin one"
        assert tag != "latest", f"{name}: image {image} is not pinned (:latest)"


def test_image_is_built_from_the_pinned_airflow(
    compose: dict[str, Any], airflow_services: dict[str, dict[str, Any]]
) -> None:
    pinned, python = _pinned_airflow(), _locked_python()
    common = compose["x-airflow-common"]
    context = (
        common.get("build")
        if isinstance(common.get("build"), str)
        else (common.get("build") or {}).get("context")
    )
    assert context == ".", "x-airflow-common must build the image from ./Dockerfile"
    image = _default(str(common["image"]))
    assert image.rpartition(":")[2] == pinned, f"image {image}: its tag should be the pinned Airflow {pinned}"
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert bases == [f"apache/airflow:{pinned}-python{python}"], (
        f"Dockerfile FROM {bases}: requirements.txt pins apache-airflow=={pinned}, "
        f"compiled for Python {python}"
    )
    text = DOCKERFILE.read_text()
    assert "-r /opt/airflow/requirements.txt" in text and '"apache-airflow==${AIRFLOW_VERSION}"' in text
    for name, svc in airflow_services.items():
        assert (
            "_PIP_ADDITIONAL_REQUIREMENTS" not in svc.get("environment", {})
            or not _env(svc)["_PIP_ADDITIONAL_REQUIREMENTS"]
        ), f"{name}: packages belong in the image, not _PIP_ADDITIONAL_REQUIREMENTS"


def test_staging_volume_shared_by_every_airflow_service(airflow_services: dict[str, dict[str, Any]]) -> None:
    mounts: dict[str, str] = {}
    for name, svc in airflow_services.items():
        for source, target, _ in _mounts(svc):
            if source == "backup-staging":
                mounts[name] = target
    assert set(mounts) == set(airflow_services), f"not mounted on: {set(airflow_services) - set(mounts)}"
    paths = set(mounts.values())
    assert len(paths) == 1, f"staging mounted at different paths: {mounts}"
    path = paths.pop()
    for name, svc in airflow_services.items():
        assert _env(svc).get("BACKUP_STAGING_DIR") == path, f"{name}: BACKUP_STAGING_DIR != {path}"


def test_airflow_services_share_their_secrets(airflow_services: dict[str, dict[str, Any]]) -> None:
    from cryptography.fernet import Fernet

    for key in SHARED_SECRETS:
        values = {name: _env(svc).get(key) for name, svc in airflow_services.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), f"{key} differs: {values}"
        assert next(iter(values.values())), f"{key} is empty"
    Fernet(_env(next(iter(airflow_services.values())))["AIRFLOW__CORE__FERNET_KEY"])  # a valid key


def test_celery_executor_with_redis_and_postgres(
    compose: dict[str, Any], airflow_services: dict[str, dict[str, Any]]
) -> None:
    services = compose["services"]
    assert "redis" in services and "redis" in str(services["redis"]["image"])
    assert "postgres" in services and "postgres" in str(services["postgres"]["image"])
    for name, svc in airflow_services.items():
        env = _env(svc)
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        assert env.get("AIRFLOW__CELERY__BROKER_URL", "").startswith("redis://"), name
        assert "@redis:" in env["AIRFLOW__CELERY__BROKER_URL"], name
        assert "@postgres/" in env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""), name
        assert env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "").startswith(
            "http://airflow-apiserver:"
        ), name
    worker = services["airflow-worker"]
    assert "redis" in _depends_on(worker) and "postgres" in _depends_on(worker)


def test_init_service_migrates_and_creates_staging(compose: dict[str, Any]) -> None:
    init = compose["services"]["airflow-init"]
    assert _env(init).get("_AIRFLOW_DB_MIGRATE") == "true"
    script = "\n".join(map(str, init.get("command") or []))
    assert "/opt/airflow/staging" in script


def test_login_matches_the_auth_manager(compose: dict[str, Any]) -> None:
    """SimpleAuthManager reads its users' passwords from the file airflow-init writes; FAB's
    `airflow users create` (_AIRFLOW_WWW_USER_CREATE) does not exist without FAB."""
    init = compose["services"]["airflow-init"]
    env = _env(init)
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    assert env.get("_AIRFLOW_WWW_USER_CREATE") != "true"
    user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")[0]
    assert user == env["_AIRFLOW_WWW_USER_USERNAME"]
    password_file = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    assert password_file in "\n".join(map(str, init["command"]))
    api = compose["services"]["airflow-apiserver"]
    volume = _volume_at(api, password_file)
    assert volume is not None and not volume[1], (
        "the api-server must be able to open the password file read-write"
    )


def test_shell_scripts_parse(compose: dict[str, Any]) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the scripts"
    scripts = {
        "airflow-init": _default("\n".join(map(str, compose["services"]["airflow-init"]["command"][1:])))
    }
    for path in (ROOT / "deploy" / "compose" / "pg-source").glob("*.sh"):
        scripts[str(path.relative_to(ROOT))] = path.read_text()
    for name, script in scripts.items():
        result = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_make_up_and_compose_run_the_same_services(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    started = {s.compose: s.name for s in devstack.SERVICES}
    unknown = set(started) - services
    assert not unknown, f"devstack.SERVICES names {unknown}, which are no services of docker-compose.yaml"
    stale = set(devstack.COMPOSE_ONLY) - services
    assert not stale, f"devstack.COMPOSE_ONLY lists {stale}, which docker-compose.yaml no longer has"
    both = set(started) & set(devstack.COMPOSE_ONLY)
    assert not both, f"{both}: both started by make up and listed as compose-only"
    missing = services - set(started) - set(devstack.COMPOSE_ONLY)
    assert not missing, (
        f"docker-compose.yaml runs {sorted(missing)}, which make up neither starts nor lists as "
        "compose-only: add each to devstack.SERVICES (and start it) or to COMPOSE_ONLY with the reason"
    )


def test_make_up_runs_the_airflow_components_compose_runs(compose: dict[str, Any]) -> None:
    airflow = {s.name: s.compose for s in devstack.SERVICES if s.compose.startswith("airflow-")}
    assert set(airflow) == {*COMPONENTS, "celery-worker"}, "make up's Airflow components changed"
    for name, service in airflow.items():
        command = str(compose["services"][service].get("command", ""))
        assert command == name.replace("-worker", " worker"), f"{service} runs {command!r}; make up: {name}"
    celery_only = {s.compose for s in devstack.SERVICES if s.celery_only}
    assert celery_only == {"redis", "airflow-worker"}
    assert compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_ftp_dev_service(compose: dict[str, Any], worker_env: dict[str, str]) -> None:
    ftp = compose["services"]["ftp"]
    assert (ROOT / ftp["build"] / "Dockerfile").is_file()
    args = ftp["command"]
    conn = _connection(worker_env["AIRFLOW_CONN_FTP_DEV"])
    assert conn["host"] == "ftp" and conn["conn_type"] == "ftp"
    assert str(conn["port"]) == args[args.index("--port") + 1]
    login = (args[args.index("--username") + 1], args[args.index("--password") + 1])
    assert (conn["login"], conn["password"]) == login
    assert "--write" in args, "the ftp target needs write access"
    pinned = re.search(r"pyftpdlib==([\d.]+)", (ROOT / ftp["build"] / "Dockerfile").read_text())
    dev_pin = re.search(r"^pyftpdlib==([\d.]+)", (ROOT / "requirements-dev.txt").read_text(), re.M)
    assert pinned and dev_pin and pinned.group(1) == dev_pin.group(1), "the image runs the tests' FTP server"


# --- the development services and the compose backup config ------------------------------


def test_compose_backup_config_validates(backup_config: BackupConfig, worker_env: dict[str, str]) -> None:
    kinds = {t.type for t in backup_config.targets.values()}
    assert {"local", "s3", "azure_blob", "gcs", "sftp", "ftp"} <= kinds, f"a dev store has no target: {kinds}"
    sources = backup_config.sources
    scheduled = {(s.source, s.type.value) for s in backup_config.schedules}
    by_kind: set[tuple[str, str]] = set()
    for source, btype in scheduled:
        cfg = sources[source]
        kind = f"postgres-{cfg.method}" if isinstance(cfg, PostgresSource) else cfg.type
        by_kind.add((kind, btype))
    wanted = {
        ("postgres-logical", "FULL"),
        ("postgres-physical", "FULL"),
        ("postgres-physical", "TRANSACTION_LOG"),
        ("mongo", "FULL"),
        ("mongo", "TRANSACTION_LOG"),
        ("files", "FULL"),
        ("files", "INCREMENTAL"),
    }
    assert wanted <= by_kind, f"no schedule for {wanted - by_kind}"
    assert backup_config.dr.notification_emails, "alerts need recipients (mailpit catches them all)"
    assert backup_config.staging_dir in (None, worker_env["BACKUP_STAGING_DIR"])


def test_every_connection_the_config_names_is_defined(
    backup_config: BackupConfig, airflow_services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    services = set(compose["services"])
    for conn_id, conn_type in _conn_ids(backup_config).items():
        var = f"AIRFLOW_CONN_{conn_id.upper()}"
        for name, svc in airflow_services.items():
            assert var in _env(svc), f"{name}: {var} is not set (the config names connection {conn_id!r})"
        conn = _connection(_env(compose["services"]["airflow-worker"])[var])
        assert conn["conn_type"] == conn_type, f"{var}: conn_type {conn['conn_type']!r}, needs {conn_type!r}"
        unknown = _hosts(conn) - services
        assert not unknown, f"{var} points at {unknown}, which is no service of docker-compose.yaml"


def test_dev_connections_fit_their_services(
    backup_config: BackupConfig, compose: dict[str, Any], worker_env: dict[str, str]
) -> None:
    services = compose["services"]
    ring = json.loads(worker_env[f"AIRFLOW_CONN_{backup_config.encryption.key_conn_id.upper()}"])["extra"]
    assert KeyRing.from_json(ring).active_id.startswith("dev"), "the compose key ring must say it is dev-only"
    assert "secret_keys" in ring and "keys" not in ring, "keys go under the masked field (docs/keys.md)"
    smtp = _connection(worker_env[f"AIRFLOW_CONN_{backup_config.dr.smtp_conn_id.upper()}"])
    assert smtp["host"] == "mailpit" and smtp["extra"].get("disable_tls") and smtp["extra"].get("disable_ssl")
    assert str(smtp["port"]) in " ".join(map(str, services["mailpit"]["ports"]))
    mongo_args = services["mongo-source"]["command"]
    for source in backup_config.sources.values():
        if source.type == "mongo":
            conn = _connection(worker_env[f"AIRFLOW_CONN_{source.conn_id.upper()}"])
            replset = mongo_args[mongo_args.index("--replSet") + 1]
            assert conn["extra"].get("replicaSet") == replset, "the connection must name the replica set"
    gcs_host = urlsplit(worker_env["STORAGE_EMULATOR_HOST"]).hostname
    assert gcs_host == "gcs-emulator" and "-scheme" in services[gcs_host]["command"]
    gcs_args = services[gcs_host]["command"]
    assert gcs_args[gcs_args.index("-scheme") + 1] == "http"
    assert urlsplit(gcs_args[gcs_args.index("-external-url") + 1]).hostname == gcs_host


def test_wal_spool_is_shared_with_the_workers(backup_config: BackupConfig, compose: dict[str, Any]) -> None:
    pg = compose["services"]["pg-source"]
    settings = dict(arg.split("=", 1) for arg in pg["command"] if "=" in arg)
    assert settings.get("wal_level") in ("replica", "logical") and settings.get("archive_mode") == "on"
    spool_dir = re.search(r"(/\S+)/%f\b", settings["archive_command"])
    assert spool_dir, f"archive_command does not copy into a directory: {settings['archive_command']}"
    server_volume = _volume_at(pg, spool_dir.group(1))
    assert server_volume and not server_volume[1], "the spool must be a writable volume on pg-source"
    worker = compose["services"]["airflow-worker"]
    physical = [
        s for s in backup_config.sources.values() if isinstance(s, PostgresSource) and s.method == "physical"
    ]
    assert physical, "no physical postgres source"
    for source in physical:
        assert source.wal_archive_dir
        assert _volume_at(worker, source.wal_archive_dir) == (server_volume[0], True), (
            f"wal_archive_dir {source.wal_archive_dir} is not pg-source's spool volume, mounted read-only"
        )
    assert (ROOT / "deploy/compose/pg-source").is_dir() and any(
        (ROOT / "deploy/compose/pg-source").glob("*.sql")
    )


def test_files_and_local_paths_are_mounted_on_the_workers(
    backup_config: BackupConfig, compose: dict[str, Any]
) -> None:
    worker = compose["services"]["airflow-worker"]
    for name, source in backup_config.sources.items():
        if isinstance(source, FilesSource):
            for path in source.paths:
                host = _host_path(worker, path)
                assert host is not None and host.is_dir(), (
                    f"source {name}: {path} is not mounted on the workers"
                )
    named = set(compose.get("volumes") or {})
    for name, target in backup_config.targets.items():
        if target.type == "local":
            volume = _volume_at(worker, target.path)
            assert volume and volume[0] in named and not volume[1], (
                f"target {name}: {target.path} is not on a writable named volume of the workers"
            )


def _init_dev() -> ModuleType:
    path = ROOT / "deploy" / "compose" / "init_dev.py"
    spec = importlib.util.spec_from_file_location("init_dev", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_dev_init_prepares_every_store_once(
    moto_server: S3Service,
    azurite: AzureService,
    gcs_emulator: GCSService,
    sshd: SFTPService,
    mongo_server: MongoServer,
    worker_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What dev-init does at `docker compose up`, against the integration tests' servers:
    afterwards a backup can write to every target, and a second run changes nothing."""
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_ENCRYPTION", worker_env["AIRFLOW_CONN_BACKUP_ENCRYPTION"])
    names = {kind: unique(kind) for kind in ("s3", "azure", "gcs", "sftp")}
    database = unique("events").replace("-", "_")
    config = BackupConfig.model_validate(
        {
            "targets": {
                "local": {"type": "local", "path": str(tmp_path / "backups" / "local")},
                "s3": {"type": "s3", "conn_id": moto_server.conn_id, "bucket": names["s3"]},
                "azure": {"type": "azure_blob", "conn_id": azurite.conn_id, "container": names["azure"]},
                "gcs": {"type": "gcs", "conn_id": gcs_emulator.conn_id, "bucket": names["gcs"]},
                "sftp": {"type": "sftp", "conn_id": sshd.conn_id, "path": names["sftp"]},
            },
            "sources": {"events_mongo": {"type": "mongo", "conn_id": "events_mongo", "database": database}},
        }
    )
    init_dev = _init_dev()
    init_dev.prepare(config)
    init_dev.prepare(config)  # idempotent: nothing fails, nothing is seeded twice

    for name, cfg in config.targets.items():
        target = build_target(name, cfg)
        target.put_bytes("probe/object", b"written after dev-init")
        assert target.read_bytes("probe/object") == b"written after dev-init", name
    users = mongo_server.client()[database]["users"]
    assert users.count_documents({}) == len(init_dev._sample_documents()["users"])

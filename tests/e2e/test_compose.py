"""docker-compose.yaml checked without a Docker engine: it parses (anchors of
x-airflow-common resolved by yaml.safe_load), every service the Airflow services depend on
exists and has a healthcheck, every bind-mounted host path exists in the repository, the
image tag matches the pinned Airflow version, the staging volume is shared by every Airflow
service, and the CeleryExecutor has its Redis broker and Postgres metadata DB."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {
        name: svc
        for name, svc in compose["services"].items()
        if "apache/airflow" in str(svc.get("image", ""))
    }
    assert found, "no service runs the apache/airflow image"
    return found


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _depends_on(svc: dict[str, Any]) -> list[str]:
    deps = svc.get("depends_on") or {}
    return list(deps) if isinstance(deps, (dict, list)) else []


def _mount(vol: str | dict[str, Any]) -> tuple[str, str]:
    """(source, target) of a short ("src:dst[:mode]") or long-syntax volume entry."""
    if isinstance(vol, dict):
        return str(vol.get("source", "")), str(vol.get("target", ""))
    source, _, rest = vol.partition(":")
    return source, rest.split(":", 1)[0]


def _pinned_airflow() -> str:
    match = re.search(r"^apache-airflow==([\w.]+)\s*$", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, "requirements.txt does not pin apache-airflow"
    return match.group(1)


def _default(value: str) -> str:
    """``${VAR:-default}`` -> default (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


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


def test_long_running_airflow_services_have_healthchecks(airflow_services: dict[str, dict[str, Any]]) -> None:
    for name, svc in airflow_services.items():
        if name == "airflow-init":
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_bind_mounted_paths_exist(compose: dict[str, Any]) -> None:
    named_volumes = set(compose.get("volumes") or {})
    seen = set()
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes") or []:
            source, _ = _mount(vol)
            if source.startswith((".", "/")):
                path = (ROOT / source).resolve() if source.startswith(".") else Path(source)
                assert path.exists(), f"{name} mounts {source}, which is not in the repository"
                seen.add(source.rstrip("/"))
            else:
                assert source in named_volumes, f"{name} uses undeclared volume {source!r}"
    assert {"./dags", "./plugins", "./include"} <= seen


def test_image_tag_matches_pinned_airflow(
    compose: dict[str, Any], airflow_services: dict[str, dict[str, Any]]
) -> None:
    pinned = _pinned_airflow()
    for name, svc in airflow_services.items():
        image = _default(str(svc["image"]))
        assert image == f"apache/airflow:{pinned}", f"{name}: {image} (requirements.txt pins {pinned})"


def test_staging_volume_shared_by_every_airflow_service(airflow_services: dict[str, dict[str, Any]]) -> None:
    mounts: dict[str, str] = {}
    for name, svc in airflow_services.items():
        for vol in svc.get("volumes") or []:
            source, target = _mount(vol)
            if source == "backup-staging":
                mounts[name] = target
    assert set(mounts) == set(airflow_services), f"not mounted on: {set(airflow_services) - set(mounts)}"
    paths = set(mounts.values())
    assert len(paths) == 1, f"staging mounted at different paths: {mounts}"
    path = paths.pop()
    for name, svc in airflow_services.items():
        assert _env(svc).get("BACKUP_STAGING_DIR") == path, f"{name}: BACKUP_STAGING_DIR != {path}"


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

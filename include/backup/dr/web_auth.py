"""Access control of the DR app in the api-server: FastAPI dependencies that ask Airflow's
auth manager (``get_auth_manager()``) about the logged-in user, narrow its answer by the
``dr`` role lists (dr/access.py), answer 403 naming what is missing, and record every
decision in the audit trail.

* ``read`` (the page, ``/api/metrics*``, ``/api/backups``, ``/api/openapi.json``): the auth
  manager lets the user read the runs of every backup DAG of the config (``backup__*``,
  ``is_authorized_dag(GET, DagAccessEntity.RUN)``), and ``dr.reader_roles`` holds one of
  the user's roles;
* ``audit`` (``/api/audit`` and the page's Audit section): the auth manager lets the user
  read the key ring's connection (``encryption.key_conn_id``: whoever may read it could
  sign any record, so it is the permission that guards the trail), and
  ``dr.audit_roles`` (default ``[admin]``) holds one of the user's roles.

A request without a valid login never reaches this: Airflow's ``get_user`` answers 401
first, and nothing is recorded (anyone could otherwise fill the trail). Every request
with a login is recorded (action ``dr_read`` or ``audit``, result ``ok`` or ``refused``
with the reason), written in a background thread so the answer does not wait on the
targets; writing never fails the request (audit.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, HTTPException, Request

from include.backup import audit
from include.backup.config.schema import DRSettings, EncryptionSettings
from include.backup.dr.access import describe, role_allows, user_roles

log = logging.getLogger(__name__)

Need = Literal["read", "audit"]
ACTION: dict[str, str] = {"read": "dr_read", "audit": "audit"}
AUDIT_HIDDEN = "the audit trail is shown only to the roles of dr.audit_roles with access to the key ring"
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dr-audit")  # records in request order
_pending: list[Future[Any]] = []


@dataclass(frozen=True)
class Settings:
    """What the checks read from the config (its defaults when it cannot be loaded)."""

    dag_ids: tuple[str, ...]
    reader_roles: list[str] | None
    audit_roles: list[str] | None
    key_conn_id: str


def settings_of(config: Any) -> Settings:
    dr = config.dr if config is not None else DRSettings()
    enc = config.encryption if config is not None else EncryptionSettings()
    dag_ids = tuple(s.dag_id for s in config.schedules) if config is not None else ()
    return Settings(dag_ids, dr.reader_roles, dr.audit_roles, enc.key_conn_id)


def _may_read_runs(manager: Any, user: Any, dag_ids: tuple[str, ...]) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import (  # lazy: Airflow: api-server only
        DagAccessEntity,
        DagDetails,
    )

    if not dag_ids:  # no schedules: read access to DAG runs at all
        return bool(manager.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN, user=user))
    requests = [
        {"method": "GET", "access_entity": DagAccessEntity.RUN, "details": DagDetails(id=d)} for d in dag_ids
    ]
    return bool(manager.batch_is_authorized_dag(requests, user=user))


def _may_read_key_ring(manager: Any, user: Any, conn_id: str) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        ConnectionDetails,  # lazy: Airflow: api-server only
    )

    return bool(
        manager.is_authorized_connection(method="GET", details=ConnectionDetails(conn_id=conn_id), user=user)
    )


def why_denied(need: Need, user: Any, settings: Settings, manager: Any) -> str | None:
    """None when ``user`` may; else what is missing, in words a user can act on."""
    roles = user_roles(user)
    if need == "read":
        if not _may_read_runs(manager, user, settings.dag_ids):
            dags = ", ".join(settings.dag_ids) or "any DAG"
            return f"reading DR figures needs read access to the runs of the backup DAGs ({dags}) in Airflow"
        if not role_allows(settings.reader_roles, roles):
            return (
                f"DR figures are for the roles in dr.reader_roles ({describe(settings.reader_roles)}); "
                f"you have {describe(sorted(roles))}"
            )
        return None
    if not _may_read_key_ring(manager, user, settings.key_conn_id):
        return (
            f"the audit trail needs read access to the key ring's connection "
            f"({settings.key_conn_id!r}) in Airflow: an admin's permission"
        )
    if not role_allows(settings.audit_roles, roles):
        return (
            f"the audit trail is for the roles in dr.audit_roles ({describe(settings.audit_roles)}); "
            f"you have {describe(sorted(roles))}"
        )
    return None


def record_access(config: Any, need: Need, actor: str, what: str, why: str | None) -> None:
    """Queue the audit record of one decision (never raises, never waits)."""
    entry = audit.Entry(
        action=ACTION[need],
        result="refused" if why else "ok",
        reason=f"{what}: {why}" if why else what,
        actor=actor,
    )
    try:
        _pending.append(_writer.submit(audit.record_safely, config, entry))
        _pending[:] = [f for f in _pending if not f.done()]
    except RuntimeError as exc:  # the interpreter is shutting down
        log.warning("audit record of %s not written: %s", entry.action, exc)


def flush(timeout: float = 60) -> None:
    """Wait for the queued records (tests; a clean shutdown)."""
    for f in list(_pending):
        f.result(timeout=timeout)


def _user_name(user: Any) -> str:
    try:
        return str(user.get_name())
    except Exception:  # noqa: BLE001 - a user class without a name: its id
        return str(getattr(user, "get_id", lambda: "unknown")())


def _load_or_none(load: Callable[[], Any]) -> Any:
    try:
        return load().config
    except Exception:  # noqa: BLE001 - the page shows the config error; the checks use the defaults
        return None


def decide(request: Request, user: Any, need: Need, load: Callable[[], Any], manager: Any) -> None:
    """Check, record, then raise 403 or let the request through. The page learns from
    ``request.state.dr_audit_allowed`` whether to show its Audit section."""
    config = _load_or_none(load)
    settings = settings_of(config)
    why = why_denied(need, user, settings, manager)
    record_access(config, need, _user_name(user), f"{request.method} {request.url.path}", why)
    if why:
        raise HTTPException(403, f"Forbidden: {why}")
    request.state.dr_audit_allowed = need == "audit" or why_denied("audit", user, settings, manager) is None


def audit_allowed(request: Request) -> bool:
    """Whether the page may show the Audit section (True without auth: tests, a proxy)."""
    return bool(getattr(request.state, "dr_audit_allowed", True))


def requires(need: Need, load: Callable[[], Any]) -> Any:
    """The FastAPI dependency for ``need``: Airflow's ``get_user`` (401 without a valid
    JWT from ``Authorization: Bearer`` or the UI's ``_token`` cookie), then :func:`decide`
    with the api-server's auth manager."""
    from airflow.api_fastapi.app import get_auth_manager  # lazy: Airflow: api-server only
    from airflow.api_fastapi.core_api.security import get_user  # lazy: Airflow: api-server only

    def check(request: Request, user: Any = Depends(get_user)) -> None:  # noqa: B008 - FastAPI declares dependencies as defaults
        decide(request, user, need, load, get_auth_manager())

    return Depends(check)

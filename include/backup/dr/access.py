"""Who may do what with the DR parts, by the role lists of ``dr`` (docs/security.md#access-control).

The auth manager decides first (Airflow's API: a login, DAG run read access, its DAG-level
permissions); these role lists only narrow what it allows, never widen it:

* ``dr.reader_roles``: roles that may read the DR page and ``/dr/api/`` (None: anyone the
  auth manager lets read the backup DAGs' runs);
* ``dr.audit_roles``: roles that may read the audit trail (default ``[admin]``);
* ``dr.operator_roles``: roles that may trigger ``restore``, ``failover`` and ``dr_test``.
  The DAGs carry it as FAB ``access_control``; their first task also checks the run's
  triggering user (:func:`trigger_refusal`), which is what holds with the simple auth
  manager, where every USER may trigger every DAG.

Role names match case-insensitively (the simple auth manager's ``OP``, FAB's ``Op``).
No Airflow import at module level: the config checks and the CLI import this.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from include.backup.errors import RestoreRefused

OPERATOR_DAGS = ("restore", "failover", "dr_test")
# What an operator role gets on those DAGs under FAB: see and trigger them, read their runs.
FAB_OPERATOR_PERMISSIONS: dict[str, set[str]] = {
    "DAGs": {"can_read"},
    "DAG Runs": {"can_read", "can_create"},
}


def fold(names: Iterable[str]) -> frozenset[str]:
    """Role names as compared: case-insensitive, surrounding blanks ignored."""
    return frozenset(str(n).strip().casefold() for n in names if str(n).strip())


def user_roles(user: Any) -> frozenset[str]:
    """The role names an auth manager's user carries: the simple auth manager's ``role``
    (one name), FAB's ``roles`` (Role objects with ``name``, or names). Users of auth
    managers that expose no role names have none."""
    names: list[str] = []
    role = getattr(user, "role", None)
    if isinstance(role, str):
        names.append(role)
    for r in getattr(user, "roles", None) or []:
        name = r if isinstance(r, str) else getattr(r, "name", None)
        if isinstance(name, str):
            names.append(name)
    return fold(names)


def role_allows(allowed: list[str] | None, roles: frozenset[str]) -> bool:
    """``allowed`` None: no narrowing; else one of ``roles`` is in it."""
    return allowed is None or bool(fold(allowed) & roles)


def describe(allowed: list[str] | None) -> str:
    return ", ".join(allowed) if allowed else "-"


def configured_auth_manager() -> str:
    """``[core] auth_manager`` (a class path)."""
    from airflow.configuration import conf  # lazy: Airflow: only where DAGs are built

    return str(conf.get("core", "auth_manager", fallback=""))


def fab_access_control(config: Any, auth_manager: str | None = None) -> dict[str, dict[str, set[str]]] | None:
    """The ``access_control`` of the operator DAGs: only under the FAB auth manager (the
    only one that reads it; Airflow deprecates it for the others) and only when
    ``dr.operator_roles`` is set."""
    roles = config.dr.operator_roles
    if not roles:
        return None
    auth_manager = configured_auth_manager() if auth_manager is None else auth_manager
    if "FabAuthManager" not in auth_manager:
        return None
    return {role: {k: set(v) for k, v in FAB_OPERATOR_PERMISSIONS.items()} for role in roles}


# --- the triggering user of a run (in the DAG's first task) ---------------------------


class UnknownUser(LookupError):
    """The triggering user's roles cannot be found."""


def simple_auth_roles(user_name: str, users_setting: str, all_admins: bool = False) -> frozenset[str]:
    """The role of ``user_name`` in the simple auth manager's ``[core]
    simple_auth_manager_users`` (``name:ROLE[:teams],...``)."""
    if all_admins:  # [core] simple_auth_manager_all_admins: everyone is an admin
        return frozenset({"admin"})
    for item in users_setting.split(","):
        parts = item.strip().split(":")
        if len(parts) >= 2 and parts[0] == user_name:
            return fold([parts[1]])
    raise UnknownUser(f"user {user_name!r} is not one of the simple auth manager's users")


def trigger_refusal(dag_id: str, operator_roles: list[str] | None, user_name: str | None,
                    roles_of: Any) -> str | None:  # fmt: skip
    """Why a run of ``dag_id`` triggered by ``user_name`` is refused, or None.

    ``roles_of(user_name)`` gives the user's roles (raises :class:`UnknownUser`, or returns
    None when this deployment's auth manager cannot tell them from a worker). No
    triggering user: the scheduler started it (a ``dr_monitor`` drill or auto-failover of
    a scheduled run), which the config itself asked for."""
    if operator_roles is None or user_name is None:
        return None
    try:
        roles = roles_of(user_name)
    except UnknownUser as exc:
        return (
            f"{dag_id} may only be triggered by the roles in dr.operator_roles "
            f"({describe(operator_roles)}); {exc}, so its role cannot be checked: trigger it as "
            "one of them (the REST API or the UI)"
        )
    if roles is None or role_allows(operator_roles, roles):
        return None
    return (
        f"{dag_id} may only be triggered by the roles in dr.operator_roles ({describe(operator_roles)}); "
        f"user {user_name!r} has {describe(sorted(roles))}: ask one of them to trigger it, or add "
        "the role to dr.operator_roles"
    )


def airflow_roles_of(user_name: str) -> frozenset[str] | None:
    """The roles of a user of this deployment's auth manager, as a worker can see them:
    the simple auth manager's users setting; None for other auth managers (their users
    live in Airflow's database, out of a worker's reach: their ``access_control``
    decides)."""
    from airflow.configuration import conf  # lazy: Airflow: only in a running task

    if "SimpleAuthManager" not in configured_auth_manager():
        return None
    return simple_auth_roles(
        user_name,
        conf.get("core", "simple_auth_manager_users", fallback=""),
        conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False),
    )


def refuse_unless_operator(config: Any, context: Any, dag_id: str) -> None:
    """The first task of an operator DAG: raise RestoreRefused (the refusal path: XCom
    ``refusal``, log line, info mail) when the run's triggering user has no role of
    ``dr.operator_roles``, after recording the refused attempt in the audit trail."""
    from include.backup import audit  # lazy: audit loads the key ring and target code

    dag_run = context.get("dag_run")
    user = getattr(dag_run, "triggering_user_name", None)
    reason = trigger_refusal(dag_id, config.dr.operator_roles, user, airflow_roles_of)
    if reason is None:
        return
    params = context.get("params") or {}
    source = params.get("source") if params.get("source") in config.sources else None
    audit.note(config, dag_id, source=source, result="refused", reason=reason, actor=user,
               run_id=context.get("run_id") or getattr(dag_run, "run_id", None))  # fmt: skip
    raise RestoreRefused(reason)

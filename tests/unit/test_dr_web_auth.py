"""The DR app's access control (include/backup/dr/web_auth.py, dr/access.py) against
Airflow's real SimpleAuthManager: which role may read DR figures and the audit trail, the
403 it gets, and the audit record each decision leaves. The api-server itself is
tests/e2e/test_access_control.py."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.api_fastapi.app import _AuthManagerState
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from include.backup import audit_cli
from include.backup.config.loader import load_config
from include.backup.dr import access, web_auth
from include.backup.dr.web import Monitor, create_app
from include.backup.errors import ConfigError, RestoreRefused
from include.backup.keys import KeyRing


def write_config(tmp_path: Path, dr_extra: str = "") -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    path = tmp_path / "backup_config.yaml"
    path.write_text(
        textwrap.dedent(f"""
        staging_dir: {tmp_path}/staging
        dr: {{rpo_hours: 2{dr_extra}}}
        targets:
          disk1: {{type: local, path: {tmp_path}/t1}}
        sources:
          docs: {{type: files, paths: [{tmp_path}/docs]}}
        schedules:
          - {{name: docs_full, source: docs, type: FULL, cron: "@daily", targets: [disk1]}}
        """)
    )
    return path


class App:
    """The plugin's app (require_auth=True) with the logged-in user chosen per request."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.user: SimpleAuthManagerUser | None = None
        app = create_app(require_auth=True, monitor=Monitor(ttl=0, load=lambda: load_config(config_path)))
        app.dependency_overrides[get_user] = lambda: self.user
        self.client = TestClient(app)

    def get(self, path: str, role: str, name: str | None = None, **kw: Any) -> Any:
        self.user = SimpleAuthManagerUser(username=name or role.lower(), role=role)
        return self.client.get(path, **kw)

    def records(self) -> list[dict[str, Any]]:
        web_auth.flush()
        rows, problems = audit_cli.list_rows(load_config(self.config_path).config)
        assert problems == []
        return rows


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setattr(_AuthManagerState, "instance", SimpleAuthManager())

    def make(dr_extra: str = "") -> App:
        return App(write_config(tmp_path, dr_extra))

    yield make
    web_auth.flush()  # the records of this test's requests, while its key file is set


def test_by_default_every_role_reads_figures_and_only_admin_reads_the_audit(make_app):
    app = make_app()
    for role in ("VIEWER", "USER", "OP", "ADMIN"):
        assert app.get("/api/backups", role).status_code == 200, role
    for role in ("VIEWER", "USER", "OP"):
        r = app.get("/api/audit", role)
        assert r.status_code == 403, role
    assert "key ring's connection" in app.get("/api/audit", "VIEWER").json()["detail"]
    assert "dr.audit_roles (admin); you have op" in app.get("/api/audit", "OP").json()["detail"]
    assert app.get("/api/audit", "ADMIN").status_code == 200


def test_reader_roles_narrow_the_figures_and_name_what_is_missing(make_app):
    app = make_app(", reader_roles: [OP, ADMIN]")
    r = app.get("/api/metrics", "USER", name="uma")
    assert r.status_code == 403
    assert (
        r.json()["detail"]
        == "Forbidden: DR figures are for the roles in dr.reader_roles (OP, ADMIN); you have user"
    )
    assert app.get("/api/metrics/violations", "VIEWER").status_code == 403
    assert app.get("/api/metrics/success-rate", "OP").status_code == 200
    assert app.get("/api/health", "VIEWER").status_code == 200  # no figures: open


def test_a_denied_browser_gets_the_denied_page_and_the_api_json(make_app):
    app = make_app(", reader_roles: [admin]")
    page = app.get("/", "VIEWER", headers={"accept": "text/html"})
    assert page.status_code == 403
    assert page.headers["content-type"].startswith("text/html")
    assert "dr.reader_roles (admin)" in page.text and "Ask an Airflow admin" in page.text
    api = app.get("/api/backups", "VIEWER", headers={"accept": "text/html"})
    assert api.status_code == 403 and api.headers["content-type"] == "application/json"


def test_the_page_hides_the_audit_section_from_a_non_admin(make_app):
    app = make_app()
    app.get("/api/backups", "ADMIN", name="alice")  # leaves a record the admin's page lists
    web_auth.flush()
    viewer = app.get("/", "VIEWER", params={"refresh": 1})
    assert viewer.status_code == 200
    assert web_auth.AUDIT_HIDDEN in viewer.text
    assert "GET /api/backups" not in viewer.text
    admin = app.get("/", "ADMIN", name="alice", params={"refresh": 1})
    assert web_auth.AUDIT_HIDDEN not in admin.text
    assert "dr_read" in admin.text


def test_every_decision_with_a_login_leaves_an_audit_record(make_app):
    app = make_app(", reader_roles: [OP, ADMIN]")
    app.get("/api/metrics", "VIEWER", name="vic")
    app.get("/api/backups", "OP", name="olga")
    app.get("/api/audit", "OP", name="olga")
    app.get("/api/audit", "ADMIN", name="alice")
    got = [(r["actor"], r["action"], r["result"], r["reason"].split(":")[0]) for r in app.records()]
    assert got[:4] == [
        ("vic", "dr_read", "refused", "GET /api/metrics"),
        ("olga", "dr_read", "ok", "GET /api/backups"),
        ("olga", "audit", "refused", "GET /api/audit"),
        ("alice", "audit", "ok", "GET /api/audit"),
    ]
    assert "dr.reader_roles" in app.records()[0]["reason"]


def test_a_user_without_roles_is_read_as_none(make_app):
    assert access.user_roles(SimpleNamespace()) == frozenset()
    fab_user = SimpleNamespace(roles=[SimpleNamespace(name="Op"), SimpleNamespace(name="Viewer")])
    assert access.user_roles(fab_user) == {"op", "viewer"}


# --- the triggering user of an operator DAG ---------------------------------------------


USERS = "admin:ADMIN,viewer:VIEWER,operator:OP,uma:USER"


def roles_of(name: str) -> frozenset[str]:
    return access.simple_auth_roles(name, USERS)


@pytest.mark.parametrize(
    ("user", "refused"),
    [("operator", False), ("admin", False), ("uma", True), ("stranger", True), (None, False)],
)
def test_operator_roles_decide_who_may_trigger(user, refused):
    reason = access.trigger_refusal("failover", ["OP", "admin"], user, roles_of)
    assert (reason is not None) == refused
    if user == "uma":
        assert reason == (
            "failover may only be triggered by the roles in dr.operator_roles (OP, admin); user 'uma' "
            "has user: ask one of them to trigger it, or add the role to dr.operator_roles"
        )
    if user == "stranger":
        assert "'stranger' is not one of the simple auth manager's users" in reason


def test_no_operator_roles_leaves_triggers_to_the_auth_manager():
    assert access.trigger_refusal("restore", None, "uma", roles_of) is None
    assert access.simple_auth_roles("uma", USERS, all_admins=True) == {"admin"}


def test_refusing_a_trigger_raises_the_refusal_and_records_it(tmp_path, monkeypatch):
    KeyRing.generate(tmp_path / "keys.json", "k1")
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", USERS)
    config = load_config(write_config(tmp_path, ", operator_roles: [OP, ADMIN]")).config
    context = {
        "dag_run": SimpleNamespace(triggering_user_name="uma", run_id="manual__1"),
        "params": {"source": "docs"},
    }
    with pytest.raises(RestoreRefused, match="user 'uma' has user"):
        access.refuse_unless_operator(config, context, "restore")
    context["dag_run"].triggering_user_name = "operator"
    access.refuse_unless_operator(config, context, "restore")  # no exception
    (row,) = audit_cli.list_rows(config)[0]
    assert (row["actor"], row["action"], row["result"], row["source"], row["run_id"]) == (
        "uma",
        "restore",
        "refused",
        "docs",
        "manual__1",
    )


def test_fab_access_control_only_under_fab_and_with_operator_roles(tmp_path):
    config = load_config(write_config(tmp_path, ", operator_roles: [Op, Admin]")).config
    fab = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    assert access.fab_access_control(config, fab) == {
        "Op": {"DAGs": {"can_read"}, "DAG Runs": {"can_read", "can_create"}},
        "Admin": {"DAGs": {"can_read"}, "DAG Runs": {"can_read", "can_create"}},
    }
    assert access.fab_access_control(config, "airflow...SimpleAuthManager") is None
    assert access.fab_access_control(load_config(write_config(tmp_path)).config, fab) is None


def test_empty_role_lists_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"dr.operator_roles: give at least one non-empty role name"):
        load_config(write_config(tmp_path, ", operator_roles: []"))

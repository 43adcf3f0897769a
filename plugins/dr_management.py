"""Airflow plugin: the DR Management page and its JSON metrics API in the api-server.

- ``fastapi_apps``: the app of include/backup/dr/web.py mounted at ``/dr`` (page at
  ``/dr/``, JSON under ``/dr/api/``), behind Airflow's own auth (JWT from the
  ``Authorization: Bearer`` header or the UI's ``_token`` cookie).
- ``external_views``: a "DR Management" entry in the UI's navigation (the Plugins menu)
  that shows ``/dr/`` embedded in the Airflow UI at ``/plugin/dr-management``.

See docs/dr-management.md.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.backup.dr.web import create_app

URL_PREFIX = "/dr"

dr_app = create_app(require_auth=True)


class DRManagementPlugin(AirflowPlugin):
    name = "dr_management"
    fastapi_apps = [{"app": dr_app, "url_prefix": URL_PREFIX, "name": "DR Management"}]
    external_views = [
        {
            "name": "DR Management",
            "href": f"{URL_PREFIX}/",
            "url_route": "dr-management",
            "destination": "nav",
        }
    ]

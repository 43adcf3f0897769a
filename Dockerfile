# The project's Airflow image: the official apache/airflow image of the version pinned in
# requirements.txt, plus the project's pinned runtime requirements, the PostgreSQL 15 tools
# the postgres sources run, and the project code (dags/, plugins/, and include/ installed as
# a package) so the same image works where nothing is mounted (KubernetesExecutor pods).
# docker-compose.yaml builds it (`build: .`) and mounts the working tree over the baked-in
# code.
#
#   docker compose build          # or: docker build -t airflow-backup:3.3.2 .
#
# The tag must follow requirements.txt: Python 3.11 because requirements.txt is compiled for
# it (`make lock`), and the Airflow version pinned there (tests/e2e/test_compose.py checks
# both). Upgrading Airflow = change requirements.in, `make lock`, change this line.
FROM apache/airflow:3.3.2-python3.11

# PostgreSQL major version of the sources: pg_dump / pg_basebackup refuse servers newer than
# themselves, and point-in-time recovery starts a server of the source's major version.
# The source in docker-compose.yaml is PostgreSQL 15.
ARG PG_MAJOR=15

USER root
# PGDG's repository, so the client matches the source whatever Debian release the base
# image is built on (Debian ships a single PostgreSQL major per release). Server binaries
# (postgresql-15) are for restores of physical backups (pg_ctl); no cluster is created.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl postgresql-common zstd; \
    sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    . /etc/os-release; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" "postgresql-${PG_MAJOR}"; \
    apt-get autoremove -yqq --purge; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/*; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version

USER airflow
# The official way to add requirements: name the image's own Airflow (AIRFLOW_VERSION is set
# by the base image) next to them, so pip keeps the installed Airflow instead of re-installing
# or moving it. requirements.txt pins apache-airflow too: if the two ever disagree, pip
# refuses the conflicting pins and the build fails, instead of shipping an image whose
# Airflow differs from its tag.
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements.txt

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 include/ /opt/airflow/include/
# The project as a package (pyproject.toml), editable: `include.backup` imports in every
# process without PYTHONPATH, from /opt/airflow/include, which docker-compose.yaml mounts
# over. Its dependencies are installed above; setuptools comes with requirements.txt.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/airflow

ENV BACKUP_CONFIG=/opt/airflow/include/backup_config.yaml \
    BACKUP_STAGING_DIR=/opt/airflow/staging

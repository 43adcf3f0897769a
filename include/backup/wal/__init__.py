"""Continuous WAL archiving: ``wal-push`` (PostgreSQL's ``archive_command``) and
``wal-fetch`` (its ``restore_command``), one segment at a time, straight to the targets.

Start-up matters here: PostgreSQL runs ``archive_command`` once per 16 MiB segment, so
nothing on this path imports Airflow, pydantic or the config schema. Modules:
  record    the per-file record (signed like manifests) and the object layout at a target
  settings  the config, targets and key ring, read without Airflow
  push      compress, encrypt, upload one file; idempotent on retries
  fetch     fetch, verify, decrypt one file; prefetch the next ones in parallel
  archive   what the catalog, PITR, retention and the RPO monitor read: the pushed WAL
  cli       the two verbs (dispatched by include/backup/__main__.py before the main CLI)
"""

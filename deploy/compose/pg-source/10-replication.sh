#!/bin/bash
# Run once by the postgres image's entrypoint when it initialises an empty data directory
# (files in /docker-entrypoint-initdb.d). pg_basebackup (the physical source's FULL backups)
# opens a replication connection, which the image's "host all all all" line does not cover.
set -euo pipefail
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"

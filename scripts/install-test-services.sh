#!/usr/bin/env bash
# Install the servers the storage-target integration tests start on 127.0.0.1
# (tests/integration/services.py). Idempotent; run as root from anywhere, on Debian 12.
#
#   S3          moto_server            pip  moto[server]          (requirements-dev.txt)
#   GCS         gcp-storage-emulator   pip  gcp-storage-emulator  (requirements-dev.txt)
#   FTP         pyftpdlib              pip  pyftpdlib             (requirements-dev.txt)
#   Azure Blob  azurite-blob           npm  azurite               (tests/services/azurite/package*.json)
#   SFTP        sshd                   apt  openssh-server
#   Redis       redis-server           apt  redis-server          (Celery broker, tests/e2e/test_celery.py)
#
# The Python packages come with the venv (make venv installs requirements-dev.txt); this
# script installs them too when the venv exists, so it also works on its own.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive

APT_UPDATED=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-services: need root to apt-get install $*" >&2
        exit 1
    fi
    # Update the package lists only if they are missing or the install fails on stale ones.
    if [ "$APT_UPDATED" = 0 ] && [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' || true)" ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    if ! apt-get install -y -qq --no-install-recommends "$@"; then
        if [ "$APT_UPDATED" = 1 ]; then
            exit 1
        fi
        apt-get update -qq
        APT_UPDATED=1
        apt-get install -y -qq --no-install-recommends "$@"
    fi
}

# --- Chromium: renders the DR Management page in the browser test (headless, as root) ---
if ! command -v chromium >/dev/null 2>&1; then
    echo "install-test-services: installing chromium (DR page browser test)"
    apt_install chromium
fi

# --- SFTP: OpenSSH server (the tests run it with their own config, never as a service) ---
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
    echo "install-test-services: installing openssh-server"
    apt_install openssh-server
fi
if [ "$(id -u)" -eq 0 ]; then
    mkdir -p /run/sshd  # sshd's privilege separation directory
fi

# --- Redis: the Celery broker of the CeleryExecutor tests (started by the tests, never as a service) ---
if ! command -v redis-server >/dev/null 2>&1; then
    echo "install-test-services: installing redis-server"
    apt_install redis-server
fi

# --- Azure Blob: Azurite from npm, pinned by tests/services/azurite/package-lock.json ---
# Installed into tests/services/azurite/node_modules (not tracked); `npm ci` only when the
# installed version differs from the pinned one.
AZURITE_DIR=tests/services/azurite
if ! command -v npm >/dev/null 2>&1; then
    echo "install-test-services: installing nodejs and npm"
    apt_install nodejs npm
fi
if [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ] \
    || ! (cd "$AZURITE_DIR" && node -e 'const v=require("./node_modules/azurite/package.json").version, w=require("./package.json").devDependencies.azurite; process.exit(v===w?0:1)') 2>/dev/null; then
    echo "install-test-services: npm ci in $AZURITE_DIR (azurite)"
    (cd "$AZURITE_DIR" && npm ci --no-audit --no-fund)
fi

# --- S3, GCS, FTP: Python packages, into the project's venv ---
if [ -x .venv/bin/python ]; then
    missing=0
    for mod in moto flask flask_cors gcp_storage_emulator pyftpdlib; do
        .venv/bin/python -c "import $mod" 2>/dev/null || missing=1
    done
    if [ "$missing" = 1 ]; then
        echo "install-test-services: installing the test servers into .venv (requirements-dev.txt)"
        if [ -x .venv/bin/uv ]; then
            .venv/bin/uv pip install --python .venv/bin/python -r requirements.txt -r requirements-dev.txt
        else
            .venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
        fi
    fi
else
    echo "install-test-services: no .venv yet; 'make venv' installs moto, gcp-storage-emulator and pyftpdlib"
fi

echo "install-test-services: ok (sshd: $(command -v sshd || echo /usr/sbin/sshd), azurite $(cd "$AZURITE_DIR" && node -p 'require("./node_modules/azurite/package.json").version'))"

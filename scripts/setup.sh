#!/usr/bin/env bash
# The one set-up command (`make setup`): system packages with apt-get, then a
# virtual environment in .venv/ holding moteseal with its test dependencies.
# Works unchanged on Debian 12 and Raspberry Pi OS Bookworm, whose system
# Python refuses `pip install` outside a venv (PEP 668). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || need+=(socat)
# NATS server (JetStream + MQTT) for the clustered-broker tests (tests/cluster_fixtures.py).
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
# Headless Chromium and its driver for tests/e2e/test_dashboard_browser.py.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# systemd-analyze: tests/host/test_service.py verifies the units `moteseal service install` writes.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# PostgreSQL (initdb, postgres) for the sharded hub's registry tests (tests/pg_fixtures.py).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# The venv module with ensurepip is a separate Debian package.
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
    # Debian starts a system broker on 1883; moteseal starts its own brokers.
    ($SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true)
    # Likewise its PostgreSQL cluster on 5432: the tests start their own.
    ($SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true)
    ($SUDO systemctl disable --now nats-server >/dev/null 2>&1 || true)
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
# The 32-bit lane (tests/qemu): Cortex-M toolchain and qemu from Debian, the
# firmware into its cache. Not fatal: without it those tests skip with the reason.
PYTHON="$VENV/bin/python" ./qemu/setup.sh || echo "setup: qemu lane not set up; tests/qemu will skip" >&2
echo "moteseal is set up in $VENV/: run 'make test', or '$VENV/bin/moteseal demo'"

#!/usr/bin/env bash
# One set-up command: system packages (Mosquitto, socat) and the Python package
# with its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || need+=(socat)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
    # Debian starts a system broker on 1883; moteseal starts its own brokers.
    ($SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true)
fi
${PYTHON:-python3} -m pip install -q -e '.[test]'
# The 32-bit lane (tests/qemu): Cortex-M toolchain and qemu from Debian, the
# firmware into its cache. Not fatal: without it those tests skip with the reason.
./qemu/setup.sh || echo "setup: qemu lane not set up; tests/qemu will skip" >&2

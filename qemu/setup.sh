#!/usr/bin/env bash
# The qemu lane's set-up: Debian's Cortex-M toolchain, newlib and qemu, then
# the firmware into its cache (~/.cache/moteseal/qemu-fw, or
# $MOTESEAL_QEMU_CACHE). Safe to run again; a no-op once all is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
missing=$( ($PY qemu/qemu_fw.py --check || true) | sed -n "s/^missing: //p")
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
$PY qemu/qemu_fw.py
# The TLS variant (qemu/README.md): fetches Debian's mbedtls and micropython
# source packages once (deb-src, a private apt configuration, nothing
# installed). Optional: without them tests/qemu/test_qemu_tls.py skips.
$PY qemu/qemu_fw.py --tls >/dev/null \
    || echo "qemu/setup.sh: TLS firmware not built (see above); tests/qemu/test_qemu_tls.py will skip" >&2

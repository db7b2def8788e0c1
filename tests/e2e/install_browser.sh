#!/usr/bin/env bash
# Install the browser the e2e tests drive: Debian's chromium package (/usr/bin/chromium).
# Idempotent: does nothing when it is already there. Needs root (CI runs as root).
# Playwright's own browser download (`playwright install`) is never used: it cannot reach its
# download host from these machines, and the Debian build is all the tests need.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg (an unattended upgrade, a parallel run) instead of failing at once.
lock=(-o DPkg::Lock::Timeout=300)
apt-get "${lock[@]}" update -qq
apt-get "${lock[@]}" install -y -qq chromium >/dev/null
/usr/bin/chromium --version

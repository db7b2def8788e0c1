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
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version

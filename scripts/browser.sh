#!/bin/bash
# scripts/browser.sh -- headless Chromium for the deployment tests' UI checks (tests/deployment/),
# from Debian packages, as root. Idempotent: does nothing when chromium is already installed.
set -euo pipefail
missing=()
for p in chromium chromium-driver fonts-dejavu-core; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
chromium --version

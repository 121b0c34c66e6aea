#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the browser tests (tests/test_ui_browser.py), from
# Debian's packages: installed only when missing, non-interactively. Needs root (or sudo).
set -euo pipefail
if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
  echo "chromium: $(command -v chromium || command -v chromium-browser); chromedriver: $(command -v chromedriver)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "browser.sh: need root or sudo to apt-get install chromium"; exit 2; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
chromium --version
chromedriver --version

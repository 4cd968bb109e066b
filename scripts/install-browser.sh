#!/usr/bin/env bash
# Install what tests/test_serve_browser.py needs: Debian's chromium and the Python
# playwright package (its own browser download is not used: the test drives
# /usr/bin/chromium, so this works without access to Playwright's CDN).
#
# Usage: scripts/install-browser.sh [PYTHON]   (default: .venv/bin/python, else python3)
# Needs root (or sudo) for apt-get when chromium is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${1:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
start=$(date +%s)

if [[ ! -x /usr/bin/chromium ]]; then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null
fi
/usr/bin/chromium --version

if ! "$PYTHON" -c "import playwright" 2>/dev/null; then
    "$PYTHON" -m pip install -q "playwright>=1.40"
fi
"$PYTHON" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"

echo "install-browser: done in $(( $(date +%s) - start )) s"

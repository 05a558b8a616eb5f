#!/usr/bin/env bash
# System packages the tests need beyond Python and Node (Debian names). Installs the missing ones
# when it can (root, or passwordless sudo); otherwise says what to install and fails.
#   systemd     systemd-analyze verify of the agent's unit (tests/test_service_unit.py); a real user
#               manager and journald for tests/test_systemd_real.py and tests/test_readme_quickstart.py
#   golang-go   Go's text/template renders Ollama templates (tests/test_ollama_template.py, test_deploy.py)
#   chromium    opens the demo's HTML report with its images (tests/test_demo.py)
#   postgresql  a real PostgreSQL server for the shared-store tests (tests/test_postgres_*.py)
set -euo pipefail
declare -A needs=([systemd-analyze]=systemd [go]=golang-go [chromium]=chromium)
missing=()
for cmd in "${!needs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
# Debian keeps the server's programs off PATH, in /usr/lib/postgresql/<N>/bin.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "ccrl: the tests need these Debian packages: ${missing[*]}" >&2
  echo "      install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "ccrl: installing system packages: ${missing[*]}"
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# Set up a fresh Debian machine for xdsi: the Debian packages (dcmtk, dicom3tools, PostgreSQL)
# and a virtual environment in .venv with the project installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in storescu:dcmtk dciodvfy:dicom3tools; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair##*:}")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
echo "setup done: .venv/bin/xdsi --help"

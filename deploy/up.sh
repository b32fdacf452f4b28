#!/usr/bin/env bash
# Bring up the facekeys compose stack (key store, recovery, Prometheus, Grafana) on this host's loopback.
#   deploy/up.sh            # build + start, detached
#   deploy/up.sh --wait     # any extra arguments go to `docker compose up`
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
secret="$here/secrets/grafana_admin_password"
if [[ ! -s "$secret" ]]; then
  umask 077
  python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$secret"
  echo "Grafana admin password written to $secret"
fi
exec docker compose -f "$here/compose.yaml" up -d --build "$@"

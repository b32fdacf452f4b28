#!/usr/bin/env bash
# Bring up the facekeys compose stack (key store, recovery, Prometheus, Grafana) on this host's loopback.
#   deploy/up.sh            # build, make missing secrets, start detached
#   deploy/up.sh --wait     # any extra arguments go to `docker compose up`
#
# Secrets (first run only): the one-shot `secrets-init` container (the key store image running
# `facekeys-bootstrap`, no network, as your uid) writes deploy/secrets/facekeys/: a deployment CA, TLS
# certificates, audit/transform/master/grant keys (`facekeys secrets init`) and credentials (`facekeys
# creds issue`): tokens in deploy/secrets/facekeys/clients/<name>.token, shown nowhere else. Existing
# secrets are never overwritten. See deploy/README.md "Secrets".
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
compose=(docker compose -f "$here/compose.yaml")
umask 077

grafana="$here/secrets/grafana_admin_password"
if [[ ! -s "$grafana" ]]; then
  python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$grafana"
  echo "Grafana admin password written to $grafana"
fi

fk="$here/secrets/facekeys"
if [[ ! -s "$fk/keystore/credentials.json" ]]; then
  mkdir -p "$fk"
  "${compose[@]}" --profile tools build secrets-init
  FACEKEYS_UID="$(id -u)" FACEKEYS_GID="$(id -g)" "${compose[@]}" --profile tools run --rm secrets-init
  echo "facekeys secrets written to $fk (move $fk/ca/ca.key offline; client tokens in $fk/clients/)"
fi
# Compose mounts secret files as they are on the host (owner and mode kept), and the services run as
# uid 10001: the files the services read are 0644 inside folders only you can enter (0700).
chmod 0700 "$here/secrets" "$fk" "$fk"/*/
chmod 0644 "$fk"/keystore/* "$fk"/recovery/* "$grafana"

exec "${compose[@]}" up -d --build "$@"

#!/usr/bin/env bash
# Hot, consistent backup of the key store's LMDB (wraps deploy/backup.py = facekeys-backup in the image).
#
#   deploy/backup.sh local   DATA_DIR DEST_DIR   # a store on this host (server may be running)
#   deploy/backup.sh compose DEST_DIR            # the compose stack's key store container
#   deploy/backup.sh k8s     DEST_DIR [POD]      # the StatefulSet pod (default facekeys-keystore-0, ns facekeys)
#
# DEST_DIR/<UTC time>/ receives lmdb/data.mdb, keyring (encryption at rest) + MANIFEST.json. The master
# key is never in a backup: keep it apart. Restore: deploy/restore.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
python="${PYTHON:-python3}"
mode="${1:-}"
case "$mode" in
  local)
    [[ $# -eq 3 ]] || { echo "usage: $0 local DATA_DIR DEST_DIR" >&2; exit 2; }
    mkdir -p "$3"
    exec "$python" "$here/backup.py" backup --data-dir "$2" --out "$3/$stamp"
    ;;
  compose)
    [[ $# -eq 2 ]] || { echo "usage: $0 compose DEST_DIR" >&2; exit 2; }
    dc=(docker compose -f "$here/compose.yaml")
    "${dc[@]}" exec -T keystore facekeys-backup backup --data-dir /data --out "/data/backups/$stamp"
    mkdir -p "$2"
    "${dc[@]}" cp "keystore:/data/backups/$stamp" "$2/$stamp"
    "${dc[@]}" exec -T keystore rm -rf "/data/backups/$stamp"
    "$python" "$here/backup.py" verify "$2/$stamp"
    ;;
  k8s)
    [[ $# -ge 2 ]] || { echo "usage: $0 k8s DEST_DIR [POD]" >&2; exit 2; }
    pod="${3:-facekeys-keystore-0}"
    k=(kubectl -n "${FACEKEYS_NAMESPACE:-facekeys}")
    "${k[@]}" exec "$pod" -- facekeys-backup backup --data-dir /data --out "/data/backups/$stamp"
    mkdir -p "$2/$stamp"
    "${k[@]}" exec "$pod" -- tar -C "/data/backups/$stamp" -cf - . | tar -C "$2/$stamp" -xf -
    "${k[@]}" exec "$pod" -- rm -rf "/data/backups/$stamp"
    "$python" "$here/backup.py" verify "$2/$stamp"
    ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac

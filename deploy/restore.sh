#!/usr/bin/env bash
# Restore a backup made by deploy/backup.sh. The key store must be STOPPED (LMDB is replaced under it).
#
#   deploy/restore.sh local BACKUP_DIR DATA_DIR [--force]
#       --force moves an existing store aside into DATA_DIR/pre-restore-<time>/ instead of refusing.
#
# Compose and Kubernetes: see deploy/README.md "Backup and restore" (stop the service, run
# `facekeys-backup restore` in a one-off container / pod that mounts the data volume, start again).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
if [[ "${1:-}" != local || $# -lt 3 || $# -gt 4 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
exec "$python" "$here/backup.py" restore "$2" --data-dir "$3" ${4:+"$4"}

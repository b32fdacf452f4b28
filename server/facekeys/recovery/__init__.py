"""facekeys.recovery: regenerate matched faces and reveal them in archived video, for grant holders.

    RecoveryServer(RecoveryConfig(checkpoint=..., keystore=..., grant_public_key=..., archive_root=...,
                                  output_root=...)).start()
    `facekeys recover-serve --help` for the command line; proto/facekeys/v1/recovery.proto for the API.

Imported lazily: `facekeys.recovery.reveal` works without grpc/torch being loaded.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RecoveryConfig": "app",
    "RecoveryServer": "app",
    "serve": "app",
    "RecoveryEngine": "engine",
    "VideoJob": "engine",
    "PlacementConfig": "reveal",
    "reveal_video": "reveal",
    "OutputVideoConfig": "video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facekeys.recovery' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

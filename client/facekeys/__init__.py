"""facekeys: a privacy-preserving face key store.

The public surface is small; heavier parts load on first use, so a client-only install (grpcio,
protobuf, numpy) can `import facekeys` without FAISS, LMDB or torch:

    from facekeys import Client, NewKey, Where             # talk to a key store service
    from facekeys import KeyStore, StoreConfig, MatchQuery  # or embed the engine (facekeys[server])
"""

from importlib import import_module

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import FacekeysError
from facekeys.layers import parse_layers
from facekeys.records import Filter, MatchQuery, NewKey, Obfuscation, Where

_LAZY = {
    "Client": "facekeys.client",
    "KeyStore": "facekeys.store",
    "StoreConfig": "facekeys.store",
}

__all__ = ["N_LAYERS", "DIM", "FacekeysError", "parse_layers", "NewKey", "Where", "Obfuscation", "Filter",
           "MatchQuery", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facekeys' has no attribute {name!r}")

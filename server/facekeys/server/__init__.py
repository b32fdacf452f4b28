"""The gRPC key store service around the engine."""

from .app import KeyStoreServer, ServerConfig, serve

__all__ = ["KeyStoreServer", "ServerConfig", "serve"]

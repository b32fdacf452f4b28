"""facekeys.indexer: detect, track and obfuscate faces in video, and hand each face track on as a key.

    from facekeys.indexer import obfuscate_video, DetectorConfig, TrackerConfig, ObfuscationConfig
    tracks = obfuscate_video("cam.mp4", "cam.obf.mp4", DetectorConfig(upscale=2.0))
    latents = keys_for_tracks(tracks, FaceEncoder(...))   # (len(tracks), 18, 512)

Batch indexing with a journal (the library behind `facekeys index`, see cli.py):

    Indexer(IndexConfig(out_dir="obf"), encoder=FaceEncoder(...), sink=EmbeddedSink("keys/")).run(
        [Source("cam1.mp4", "cam-01", start_time=1.7e9)])

Public API (imported lazily, so `facekeys.indexer.video` loads only PyAV + numpy, not OpenCV/onnxruntime:
the recovery service reads and writes video with it).
"""

from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {  # public name -> submodule defining it
    "Detection": "detect",
    "DetectorConfig": "detect",
    "make_detector": "detect",
    "Track": "track",
    "Tracker": "track",
    "TrackerConfig": "track",
    "ObfuscationConfig": "obfuscate",
    "obfuscate": "obfuscate",
    "EncoderConfig": "video",
    "VideoError": "video",
    "obfuscate_video": "pipeline",
    "keys_for_tracks": "pipeline",
    "Indexer": "index",
    "IndexConfig": "index",
    "Source": "index",
    "FileResult": "index",
    "RunResult": "index",
    "EmbeddedSink": "sinks",
    "ServerSink": "sinks",
    "SinkError": "sinks",
}

__all__ = list(_EXPORTS)


class _Package(types.ModuleType):
    """This package's module type: public names resolve on first use (see _EXPORTS).

    `obfuscate` names both a submodule and its function; importing the submodule binds the package attribute
    to the module, so the attribute is a property here and always gives the function (as the eager imports did).
    """

    def __getattr__(self, name: str):
        if name not in _EXPORTS:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{_EXPORTS[name]}"), name)
        if name != "obfuscate":
            self.__dict__[name] = value
        return value

    def __dir__(self):
        return sorted(set(self.__dict__) | set(__all__))

    @property
    def obfuscate(self):
        return self.__getattr__("obfuscate")

    @obfuscate.setter
    def obfuscate(self, value):  # the import system binding the submodule: reachable via sys.modules
        pass


sys.modules[__name__].__class__ = _Package

"""facekeys.indexer: detect, track and obfuscate faces in video, and hand each face track on as a key.

    from facekeys.indexer import obfuscate_video, DetectorConfig, TrackerConfig, ObfuscationConfig
    tracks = obfuscate_video("cam.mp4", "cam.obf.mp4", DetectorConfig(upscale=2.0))
    latents = keys_for_tracks(tracks, FaceEncoder(...))   # (len(tracks), 18, 512)

Batch indexing with a journal (the library behind `facekeys index`, see cli.py):

    Indexer(IndexConfig(out_dir="obf"), encoder=FaceEncoder(...), sink=EmbeddedSink("keys/")).run(
        [Source("cam1.mp4", "cam-01", start_time=1.7e9)])
"""

from .detect import Detection, DetectorConfig, make_detector
from .index import FileResult, IndexConfig, Indexer, RunResult, Source
from .obfuscate import ObfuscationConfig, obfuscate
from .pipeline import keys_for_tracks, obfuscate_video
from .sinks import EmbeddedSink, ServerSink, SinkError
from .track import Track, Tracker, TrackerConfig
from .video import EncoderConfig, VideoError

__all__ = [
    "Detection",
    "DetectorConfig",
    "make_detector",
    "Track",
    "Tracker",
    "TrackerConfig",
    "ObfuscationConfig",
    "obfuscate",
    "EncoderConfig",
    "VideoError",
    "obfuscate_video",
    "keys_for_tracks",
    "Indexer",
    "IndexConfig",
    "Source",
    "FileResult",
    "RunResult",
    "EmbeddedSink",
    "ServerSink",
    "SinkError",
]

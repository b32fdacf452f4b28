"""facekeys.indexer: detect, track and obfuscate faces in video, and hand each face track on as a key.

    from facekeys.indexer import obfuscate_video, DetectorConfig, TrackerConfig, ObfuscationConfig
    tracks = obfuscate_video("cam.mp4", "cam.obf.mp4", DetectorConfig(upscale=2.0))
    latents = keys_for_tracks(tracks, FaceEncoder(...))   # (len(tracks), 18, 512)
"""

from .detect import Detection, DetectorConfig, make_detector
from .obfuscate import ObfuscationConfig, obfuscate
from .pipeline import keys_for_tracks, obfuscate_video
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
]

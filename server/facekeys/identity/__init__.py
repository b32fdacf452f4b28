"""facekeys.identity: a real face-identity model (dlib's ResNet 128-D face descriptor, its 5/68-point shape
predictors, HOG and MMOD CNN face detectors; weights from the face-recognition-models package).

Importing this package loads nothing (dlib itself is imported on first use); see `dlib_model`.
"""

from .dlib_model import (
    CHIP_SIZE,
    DESCRIPTOR_DIM,
    SAME_PERSON_DISTANCE,
    WEIGHT_FILES,
    DlibFaceModel,
    default_models_dir,
    distances,
    load,
)

__all__ = ["CHIP_SIZE", "DESCRIPTOR_DIM", "SAME_PERSON_DISTANCE", "WEIGHT_FILES", "DlibFaceModel",
           "default_models_dir", "distances", "load"]

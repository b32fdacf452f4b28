import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # indexer_media helpers

pytest.importorskip("onnx")
pytest.importorskip("skimage")


@pytest.fixture(scope="session")
def centerface():
    from facekeys.indexer.detect import make_detector

    return make_detector()


@pytest.fixture(scope="session")
def leak_detector():
    """Judge of leaks: CenterFace at its class threshold (0.5), run on output frames."""
    from facekeys.indexer.detect import DetectorConfig, make_detector

    return make_detector(DetectorConfig(threshold=0.5))

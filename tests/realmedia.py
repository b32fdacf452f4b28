"""Real media from packages, fetched once and cached (never committed: their licences are their own).

- Debian `opencv-doc`: `Megamind.avi`, `vtest.avi` (surveillance, small faces), `messi5.jpg` and the docs'
  face images, under usr/share/doc/opencv-doc/ of the package (`apt-get download` + `dpkg -x`);
- Debian `facedetect`: its examples (`grace_hopper_512x512.jpg`);
- the PyPI sdist of `face_recognition==1.3.0`: `tests/test_images/` (several photos of Obama, one of Biden);
- the `insightface==2.1` wheel: `data/images/t1.jpg` (a group photo).

The cache is FACEKEYS_MEDIA_CACHE, else ~/.cache/facekeys-media; each source is unpacked into a folder of its
own, made under a temporary name and renamed when complete, so an interrupted fetch is redone. A fetch that
fails raises MediaUnavailable with the command's error (tests/conftest.py makes a skip a failure in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

__all__ = ["MediaUnavailable", "cache_root", "opencv_doc_data", "opencv_doc_html", "facedetect_examples",
           "face_recognition_images", "insightface_images", "read_rgb"]


class MediaUnavailable(RuntimeError):
    pass


def cache_root() -> Path:
    root = Path(os.environ.get("FACEKEYS_MEDIA_CACHE") or Path.home() / ".cache" / "facekeys-media")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise MediaUnavailable(f"{' '.join(cmd)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}")


def _cached(name: str, fetch) -> Path:
    """cache_root()/name, made by fetch(tmp_folder) into a temporary folder renamed into place when done."""
    final = cache_root() / name
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_root()))
    try:
        fetch(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _debian(package: str, into: Path) -> None:
    """apt-get download + dpkg -x (apt-get update once if the package lists are missing)."""
    dl = into / "deb"
    dl.mkdir()
    try:
        _run(["apt-get", "download", package], dl)
    except MediaUnavailable:
        _run(["apt-get", "update", "-qq"], dl)
        _run(["apt-get", "download", package], dl)
    (deb,) = dl.glob(f"{package}_*.deb")
    _run(["dpkg", "-x", str(deb), str(into / "root")], into)
    shutil.rmtree(dl)


def _pip_download(spec: str, into: Path, sdist: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), spec]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    _run(cmd, into)
    (got,) = [p for p in into.iterdir() if p.is_file()]
    return got


def opencv_doc_data() -> Path:
    """usr/share/doc/opencv-doc/examples/data of Debian's opencv-doc (Megamind.avi, vtest.avi, messi5.jpg, ...)."""
    return _cached("opencv-doc", lambda d: _debian("opencv-doc", d)) / "root/usr/share/doc/opencv-doc/examples/data"


def opencv_doc_html() -> Path:
    """The opencv-doc HTML images folder (messi_face.jpg, julia_facedetect_sample.jpg, facereg.jpg, ...)."""
    return opencv_doc_data().parents[1] / "opencv4" / "html"


def facedetect_examples() -> Path:
    """usr/share/doc/facedetect/examples of Debian's facedetect (grace_hopper_512x512.jpg, ...)."""
    return _cached("facedetect", lambda d: _debian("facedetect", d)) / "root/usr/share/doc/facedetect/examples"


def face_recognition_images() -> dict[str, Path]:
    """{file name: path} of tests/test_images/ in the face_recognition 1.3.0 sdist (obama*.jpg, biden.jpg, ...)."""

    def fetch(d: Path) -> None:
        sdist = _pip_download("face_recognition==1.3.0", d, sdist=True)
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if "/tests/test_images/" in m.name and m.isfile()]
            for m in members:
                (d / Path(m.name).name).write_bytes(tf.extractfile(m).read())
        sdist.unlink()

    root = _cached("face_recognition-1.3.0", fetch)
    return {p.name: p for p in sorted(root.iterdir())}


def insightface_images() -> dict[str, Path]:
    """{file name: path} of data/images/ in the insightface 2.1 wheel (t1.jpg: a group photo; mask_*.jpg)."""

    def fetch(d: Path) -> None:
        wheel = _pip_download("insightface==2.1", d, sdist=False)
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith("insightface/data/images/") and name.endswith(".jpg"):
                    (d / Path(name).name).write_bytes(zf.read(name))
        wheel.unlink()

    root = _cached("insightface-2.1", fetch)
    return {p.name: p for p in sorted(root.iterdir())}


def read_rgb(path: Path):
    """An image file as (H, W, 3) uint8 RGB."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MediaUnavailable(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

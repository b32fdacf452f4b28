# Sourced by the device scripts (the image has no facekeys install): lays out a `facekeys` package tree as
# pyproject.toml's package-dir says (the client tree copied, every other facekeys.<sub> symlinked) and sets FK
# to the folder to put on PYTHONPATH.
FK=$(mktemp -d)/pkg
mkdir -p "$FK"
cp -r client/facekeys "$FK/facekeys"
python3 - "$FK" <<'PY'
import os, sys, tomllib
fk = sys.argv[1]
for name, path in tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"].items():
    parts = name.split(".")
    if len(parts) == 2 and not path.startswith("client/facekeys/"):  # facekeys.<sub> outside the client tree
        os.symlink(os.path.abspath(path), os.path.join(fk, "facekeys", parts[1]))
PY

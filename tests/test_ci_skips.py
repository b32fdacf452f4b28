"""CI's rule on skips (tests/conftest.py): under CI=true a skipped test fails, unless it is marked `gpu`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CASES = '''
import pytest

def test_tool_missing():
    pytest.skip("tool missing")

@pytest.mark.gpu
def test_needs_a_gpu():
    pytest.skip("needs a GPU")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
'''


@pytest.mark.parametrize("ci, summary", [("true", "1 failed, 1 skipped, 1 xfailed"), ("", "2 skipped, 1 xfailed")])
def test_a_skip_fails_under_ci_unless_it_needs_a_gpu(tmp_path, ci, summary):
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                        "-o", "markers=gpu", "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert summary in r.stdout.splitlines()[-1], r.stdout
    if ci:
        assert "FAILED test_cases.py::test_tool_missing - skipped under CI=true" in r.stdout

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # deploytools helpers (--import-mode=importlib)
sys.path.insert(0, str(Path(__file__).parents[1]))  # fkhelpers


@pytest.fixture(scope="session")
def deployment_secrets(tmp_path_factory):
    """One run of facekeys-bootstrap (CA, certificates, keys, credentials, tokens), shared read-only."""
    from deploytools import bootstrap

    return bootstrap(tmp_path_factory.mktemp("fk-secrets") / "out")

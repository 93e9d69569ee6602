import os

import pytest

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


@pytest.fixture
def rdir(tmp_path):
    """A fresh result directory path (not created)."""
    return tmp_path / "results"

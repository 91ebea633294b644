"""The model tests' fixture that writes safetensors files (the writer is
tests/checkpoint_files.py's, written from the format description)."""
import pytest

from checkpoint_files import safetensors_bytes


@pytest.fixture(scope="session")
def save_safetensors():
    """``save(path, {name: ndarray}, metadata=None) -> path``."""
    def save(path, arrays, metadata=None):
        path.write_bytes(safetensors_bytes(arrays, metadata))
        return path
    return save

"""A minimal safetensors writer for the tests, written from the format
description (8-byte little-endian header length, JSON header, tensors back
to back), so the reader is not checked against itself."""
import json
import struct

import numpy as np
import pytest

DTYPE_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
               np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
               np.dtype(np.int32): "I32"}


def safetensors_bytes(arrays, metadata=None):
    """The bytes of a safetensors file holding ``name -> ndarray``."""
    header = {} if metadata is None else {"__metadata__": metadata}
    data = b""
    for name, array in arrays.items():
        raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.fixture(scope="session")
def save_safetensors():
    """``save(path, {name: ndarray}, metadata=None) -> path``."""
    def save(path, arrays, metadata=None):
        path.write_bytes(safetensors_bytes(arrays, metadata))
        return path
    return save

"""What the model tests and the fuzz harnesses write as checkpoint files,
written from the formats' descriptions so that the readers are not checked
against themselves: the safetensors layout and BertModel's tensor table.
(pytest puts ``tests/`` on ``sys.path``: pyproject.toml's ``pythonpath``.)"""
import json

#: safetensors dtype names of the NumPy dtypes the tests write
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64",
                      "int32": "I32"}


def safetensors_bytes(arrays, metadata=None):
    """The bytes of a safetensors file holding ``name -> ndarray`` back to back
    (8-byte little-endian header length, JSON header, data), with an optional
    ``__metadata__`` dict of strings."""
    header = {} if metadata is None else {"__metadata__": metadata}
    data = b""
    for name, array in arrays.items():
        raw = array.astype(array.dtype.newbyteorder("<"), order="C").tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[array.dtype.name],
                        "shape": list(array.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def bert_tensor_shapes(config, pooler=True):
    """BertModel tensor name -> shape for a config.json dict (``pooler``:
    with the pooler's two tensors, which attnref does not read)."""
    V, D, F = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    shapes = {"embeddings.word_embeddings.weight": (V, D),
              "embeddings.position_embeddings.weight": (config["max_position_embeddings"], D),
              "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], D),
              "embeddings.LayerNorm.weight": (D,), "embeddings.LayerNorm.bias": (D,)}
    if pooler:
        shapes["pooler.dense.weight"], shapes["pooler.dense.bias"] = (D, D), (D,)
    for index in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{index}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[f"{layer}.{name}.weight"], shapes[f"{layer}.{name}.bias"] = (D, D), (D,)
        shapes[f"{layer}.intermediate.dense.weight"] = (F, D)
        shapes[f"{layer}.intermediate.dense.bias"] = (F,)
        shapes[f"{layer}.output.dense.weight"] = (D, F)
        shapes[f"{layer}.output.dense.bias"] = (D,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{layer}.{name}.weight"], shapes[f"{layer}.{name}.bias"] = (D,), (D,)
    return shapes

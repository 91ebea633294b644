"""Fuzz harness of whole checkpoint directories (attnref.models.load_model,
hence load_bert, BertConfig.from_json, BertTokenizer.from_pretrained and the
safetensors reader together): a tiny valid BERT checkpoint with one or two
of its files damaged, removed, or replaced by a directory. See
docs/fuzzing.md."""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attnref.models import load_model
from attnref.models.wordpiece import SPECIAL_TOKENS

from checkpoint_files import bert_tensor_shapes, safetensors_bytes

from ._fuzzing import corpus, damaged, json_documents_like, scratch, value_error_or

EXAMPLES = int(os.environ.get("ATTNREF_FUZZ_EXAMPLES", "100"))
READER = "checkpoint"
CONFIG = {"vocab_size": 12, "hidden_size": 4, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 4, "hidden_act": "gelu",
          "layer_norm_eps": 1e-12, "max_position_embeddings": 8, "type_vocab_size": 2,
          "model_type": "bert"}
TOKENIZER_CONFIG = {"do_lower_case": True, "model_max_length": 8, "cls_token": "[CLS]"}
VOCAB_LINES = list(SPECIAL_TOKENS) + ["the", "cat", "##s", "sat", ".", "a", "b"]


def check(directory):
    """The property: a model that encodes a sentence, or a ValueError naming
    the directory (and within it the file)."""
    model = value_error_or(lambda where: load_model(str(where)), directory)
    if model is not None:
        output = model.encode("the cats sat")
        T, D = len(output.tokens), model.config.hidden_size
        assert output.hidden_states.shape == (model.config.num_hidden_layers + 1, T, D)


FILES = ["config.json", "tokenizer_config.json", "vocab.txt", "model.safetensors"]
DAMAGE = ["config", "tokenizer config", "vocabulary", "drop tensor", "tensor shape",
          "tensor dtype", "truncate weights", "flip weights", "remove file", "directory"]


@st.composite
def checkpoints(draw):
    """``file name -> bytes`` (None: a directory in its place) of a tiny valid
    checkpoint with one or two kinds of damage from DAMAGE."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tensors = {name: rng.standard_normal(shape).astype(np.float32)
               for name, shape in bert_tensor_shapes(CONFIG, pooler=False).items()}
    files = {"config.json": json.dumps(CONFIG).encode(),
             "tokenizer_config.json": json.dumps(TOKENIZER_CONFIG).encode(),
             "vocab.txt": "".join(line + "\n" for line in VOCAB_LINES).encode()}
    weights_damage, removed, directories = None, set(), set()
    for damage in draw(st.lists(st.sampled_from(DAMAGE), min_size=1, max_size=2, unique=True)):
        if damage == "config":
            files["config.json"] = draw(json_documents_like(CONFIG))
        elif damage == "tokenizer config":
            files["tokenizer_config.json"] = draw(json_documents_like(TOKENIZER_CONFIG))
        elif damage == "vocabulary":
            lines = draw(st.lists(st.sampled_from(VOCAB_LINES) | st.text(max_size=4),
                                  max_size=16))
            files["vocab.txt"] = "".join(line + "\n" for line in lines).encode()
        elif damage in ("drop tensor", "tensor shape", "tensor dtype"):
            name = draw(st.sampled_from(sorted(tensors)))
            if damage == "drop tensor":
                del tensors[name]
            elif damage == "tensor shape":
                shape = draw(st.lists(st.integers(0, 13), max_size=3))
                tensors[name] = rng.standard_normal(shape).astype(np.float32)
            else:
                dtype = draw(st.sampled_from(["float16", "float64", "int32", "int64"]))
                tensors[name] = tensors[name].astype(dtype)
        elif damage in ("truncate weights", "flip weights"):
            weights_damage = damage
        else:
            (removed if damage == "remove file" else directories).add(
                draw(st.sampled_from(FILES)))
    blob = safetensors_bytes(tensors)
    if weights_damage == "truncate weights":
        blob = blob[:draw(st.integers(0, len(blob) - 1))]   # always shorter than whole
    elif weights_damage == "flip weights":
        blob = damaged(draw, blob, "flip")
    files["model.safetensors"] = blob
    files.update(dict.fromkeys(directories))
    return {name: data for name, data in files.items() if name not in removed}


@settings(max_examples=EXAMPLES, deadline=None)
@given(files=checkpoints())
def test_damaged_checkpoints(files):
    directory = scratch("checkpoint")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for name, data in files.items():
        if data is None:
            (directory / name).mkdir()
        else:
            (directory / name).write_bytes(data)
    check(directory)


@pytest.mark.parametrize("case", corpus(READER), ids=lambda case: case.name)
def test_corpus(case):
    check(case)

"""Fuzz harness of config.json (attnref.models.BertConfig.from_json): a real
BERT config with fields deleted, changed to any JSON value or added, any
JSON document, odd JSON text and arbitrary bytes. See docs/fuzzing.md."""
import os

import pytest
from hypothesis import given, settings

from attnref.models import BertConfig

from ._fuzzing import corpus, json_documents_like, scratch, value_error_or

EXAMPLES = int(os.environ.get("ATTNREF_FUZZ_EXAMPLES", "100"))
READER = "config"
# all-MiniLM-L6-v2's config.json
MINILM_CONFIG = {
    "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 384,
    "initializer_range": 0.02, "intermediate_size": 1536, "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
    "transformers_version": "4.8.2", "type_vocab_size": 2, "use_cache": True,
    "vocab_size": 30522}


def check(path):
    """The property: a BertConfig whose fields passed its checks, or a
    ValueError naming the file."""
    config = value_error_or(BertConfig.from_json, path)
    if config is not None:
        assert config.hidden_size % config.num_attention_heads == 0


@settings(max_examples=EXAMPLES, deadline=None)
@given(document=json_documents_like(MINILM_CONFIG))
def test_config_documents(document):
    path = scratch("config.json")
    path.write_bytes(document)
    check(path)


@pytest.mark.parametrize("case", corpus(READER), ids=lambda case: case.name)
def test_corpus(case):
    check(case)

"""Fuzz harness of tokenizer_config.json (attnref.models.BertTokenizer.from_pretrained):
a real BERT tokenizer config with fields deleted, changed to any JSON value
or added, any JSON document, odd JSON text and arbitrary bytes, beside a
valid vocab.txt. See docs/fuzzing.md."""
import os
import shutil

import pytest
from hypothesis import given, settings

from attnref.models import BertTokenizer
from attnref.models.wordpiece import SPECIAL_TOKENS

from ._fuzzing import corpus, json_documents_like, scratch, value_error_or

EXAMPLES = int(os.environ.get("ATTNREF_FUZZ_EXAMPLES", "100"))
READER = "tokenizer_config"
# all-MiniLM-L6-v2's tokenizer_config.json
MINILM_TOKENIZER_CONFIG = {
    "do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
    "cls_token": "[CLS]", "mask_token": "[MASK]", "tokenize_chinese_chars": True,
    "strip_accents": None, "name_or_path": "nreimers/MiniLM-L6-H384-uncased",
    "do_basic_tokenize": True, "never_split": None, "tokenizer_class": "BertTokenizer",
    "model_max_length": 512}
VOCAB = "\n".join(list(SPECIAL_TOKENS) + ["the", "cat", "sat", "."]) + "\n"


def check(path):
    """The property, for the tokenizer config at ``path``: a tokenizer that
    encodes a sentence, or a ValueError naming the file. The check runs in a
    directory of its own holding the config and a valid vocab.txt."""
    directory = scratch("tokenizer")
    directory.mkdir(exist_ok=True)
    (directory / "vocab.txt").write_text(VOCAB)
    config = directory / "tokenizer_config.json"
    if os.path.abspath(path) != os.path.abspath(config):
        shutil.copyfile(path, config)
    tokenizer = value_error_or(lambda where: BertTokenizer.from_pretrained(where.parent), config)
    if tokenizer is not None:
        assert tokenizer.encode("The cat sat.").tokens[0] == "[CLS]"


@settings(max_examples=EXAMPLES, deadline=None)
@given(document=json_documents_like(MINILM_TOKENIZER_CONFIG))
def test_tokenizer_config_documents(document):
    directory = scratch("tokenizer")
    directory.mkdir(exist_ok=True)
    (directory / "tokenizer_config.json").write_bytes(document)
    check(directory / "tokenizer_config.json")


@pytest.mark.parametrize("case", corpus(READER), ids=lambda case: case.name)
def test_corpus(case):
    check(case)

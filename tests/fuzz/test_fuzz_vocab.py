"""Fuzz harness of vocab.txt (attnref.models.load_vocab and
BertTokenizer.from_pretrained): a real vocabulary with lines dropped,
changed, added or cut, any text with every kind of line end, and arbitrary
bytes. See docs/fuzzing.md."""
import os
import shutil

import pytest
from hypothesis import given, settings, strategies as st

from attnref.models import BertTokenizer, load_vocab
from attnref.models.wordpiece import SPECIAL_TOKENS

from ._fuzzing import corpus, scratch, value_error_or

EXAMPLES = int(os.environ.get("ATTNREF_FUZZ_EXAMPLES", "100"))
READER = "vocab"
LINES = list(SPECIAL_TOKENS) + ["the", "cat", "##s", "sat", ".", "a"]


def check(path):
    """The property: a non-empty vocabulary of distinct non-negative ids (and
    a tokenizer that encodes a sentence, when it holds the special tokens),
    or a ValueError naming the file."""
    vocab = value_error_or(load_vocab, path)
    if vocab is None:
        return
    ids = list(vocab.values())
    assert ids and min(ids) >= 0 and len(set(ids)) == len(ids)
    directory = scratch("vocabulary")
    directory.mkdir(exist_ok=True)
    copy = directory / "vocab.txt"
    if os.path.abspath(path) != os.path.abspath(copy):
        shutil.copyfile(path, copy)
    tokenizer = value_error_or(BertTokenizer.from_pretrained, copy)
    if tokenizer is not None:
        encoding = tokenizer.encode("The cats sat.")
        assert len(encoding.tokens) == len(encoding.ids)


line_ends = st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x85", ""])


@st.composite
def vocabularies(draw):
    """The bytes of a vocab.txt: LINES with some dropped, changed or added,
    joined by drawn line ends, perhaps cut short or not UTF-8."""
    lines = [line for line in LINES if draw(st.integers(0, 9))]
    lines += draw(st.lists(st.text(max_size=6), max_size=4))
    lines = draw(st.permutations(lines)) if draw(st.booleans()) else lines
    text = "".join(line + draw(line_ends) for line in lines)
    data = text.encode(draw(st.sampled_from(["utf-8", "utf-16", "latin-1"])),
                       errors="replace")
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=vocabularies() | st.binary(max_size=128))
def test_vocabularies(data):
    path = scratch("vocab.txt")
    path.write_bytes(data)
    check(path)


@pytest.mark.parametrize("case", corpus(READER), ids=lambda case: case.name)
def test_corpus(case):
    check(case)

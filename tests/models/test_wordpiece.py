"""attnref.models.wordpiece on a hand-made vocabulary: each rule of BERT's
basic tokenizer and of WordPiece, with expected outputs worked out by hand
from google-research/bert ``tokenization.py``. The comparison with the
``transformers`` tokenizer on the real MiniLM vocabulary lives in
``test_bert_vs_transformers.py``."""
import json

import pytest
from hypothesis import given, strategies as st

from attnref.models import wordpiece
from attnref.models.wordpiece import (SPECIAL_TOKENS, BasicTokenizer, BertTokenizer,
                                      WordpieceTokenizer, is_cjk, is_punctuation, load_vocab)

WORDS = ["un", "##aff", "##able", "##a", "a", "b", "##b", "acao", "cora", "##cao", "e",
         "orgaos", "123", ",", "45", "reais", "!", "the", "cat", "中", "文", "hello",
         "world", ".", "'", "s", "don", "t", "$", "100"]
VOCAB = {token: index for index, token in enumerate(list(SPECIAL_TOKENS) + WORDS)}


def tokenizer(**options):
    return BertTokenizer(VOCAB, **options)


@pytest.mark.parametrize("text, words", [
    ("Hello  WORLD", ["hello", "world"]),
    ("Ação, coração e órgãos: 123,45 reais!",
     ["acao", ",", "coracao", "e", "orgaos", ":", "123", ",", "45", "reais", "!"]),
    ("naïve Zoë Ångström", ["naive", "zoe", "angstrom"]),
    ("a\x00b\ufffdc\x07d\u200be", ["abcde"]),              # NUL, U+FFFD, Cc, Cf dropped
    ("a\tb\nc\r\nd\u00a0e\u3000f\u2028g", list("abcdefg")),  # every whitespace splits
    ("$100 ^x `y` a+b=c ~|", ["$", "100", "^", "x", "`", "y", "`", "a", "+", "b", "=", "c",
                              "~", "|"]),                  # ASCII non-alphanumerics
    ("«Olá» ¿Qué? don't", ["«", "ola", "»", "¿", "que", "?", "don", "'", "t"]),
    ("中文abc日本", ["中", "文", "abc", "日", "本"]),
    ("한국", ["\u1112\u1161\u11ab\u1100\u116e\u11a8"]),  # not CJK; NFD splits it into jamo
    ("😀👍🏽 ½²", ["😀👍🏽", "½²"]),          # symbols (S*, N*) do not split
    ("ΟΔΟΣ", ["οδοσ"]),                                     # per-character lower-casing
    ("İ", ["i"]),
    ("", []),
    ("  \t ", []),
])
def test_basic_tokenizer_uncased(text, words):
    assert BasicTokenizer().tokenize(text) == words


def test_basic_tokenizer_options():
    text = "Ação [MASK] 中文"
    assert BasicTokenizer(do_lower_case=False).tokenize(text) == \
        ["Ação", "[", "MASK", "]", "中", "文"]
    assert BasicTokenizer(do_lower_case=False, strip_accents=True).tokenize(text)[0] == "Acao"
    assert BasicTokenizer(strip_accents=False).tokenize(text)[0] == "ação"
    assert BasicTokenizer(tokenize_chinese_chars=False).tokenize(text)[-1] == "中文"
    assert BasicTokenizer(never_split=["[MASK]"]).tokenize(text) == \
        ["acao", "[MASK]", "中", "文"]
    with pytest.raises(TypeError, match="text must be a str"):
        BasicTokenizer().tokenize(b"bytes")


def test_character_classes():
    assert all(is_punctuation(char) for char in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    assert all(is_punctuation(char) for char in "«»¿¡“”—…、。")
    assert not any(is_punctuation(char) for char in "aZ09 é½😀€")  # € is Sc, not ASCII
    assert is_cjk("中") and is_cjk("\U00020000") and is_cjk("\U0002B920")
    assert not is_cjk("あ") and not is_cjk("한") and not is_cjk("\U0002B820")


def test_wordpiece_greedy_longest_match_first():
    pieces = WordpieceTokenizer(VOCAB)
    assert pieces.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert pieces.tokenize("ab") == ["a", "##b"]
    assert pieces.tokenize("aaa") == ["a", "##a", "##a"]
    assert pieces.tokenize("coracao") == ["cora", "##cao"]
    assert pieces.tokenize("unx") == ["[UNK]"]          # one uncovered char spoils the word
    assert pieces.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert pieces.tokenize("a" * 101) == ["[UNK]"]       # max_input_chars_per_word
    assert WordpieceTokenizer(VOCAB, max_input_chars_per_word=2).tokenize("aaa") == ["[UNK]"]
    with pytest.raises(ValueError, match="unk_token"):
        WordpieceTokenizer({"a": 0})


def test_encode_adds_cls_sep_and_truncates_only_when_asked():
    encoding = tokenizer().encode("The cat's unaffable!")
    assert encoding.tokens == ["[CLS]", "the", "cat", "'", "s", "un", "##aff", "##able", "!",
                               "[SEP]"]
    assert encoding.ids == [VOCAB[token] for token in encoding.tokens]
    assert encoding.token_type_ids == [0] * 10 and encoding.tokens_total is None
    cut = tokenizer().encode("a b a b a b", max_length=4, truncation=True)
    assert cut.tokens == ["[CLS]", "a", "b", "[SEP]"] and len(cut.ids) == 4
    assert cut.tokens_total == 8                          # 6 tokens + [CLS] + [SEP]
    assert tokenizer(max_length=3).encode("a b", truncation=True).tokens == [
        "[CLS]", "a", "[SEP]"]
    assert tokenizer().encode("").tokens == ["[CLS]", "[SEP]"]
    assert tokenizer().encode("a b", max_length=4).tokens_total is None   # fits exactly
    with pytest.raises(ValueError, match=r"the text is 8 tokens .* at most 4 \(max_length\): "
                                         r"pass truncation=True .* encode_windows"):
        tokenizer().encode("a b a b a b", max_length=4)
    with pytest.raises(ValueError, match="at most 3"):
        tokenizer(max_length=3).encode("a b")
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        tokenizer().encode("a", max_length=1)
    with pytest.raises(TypeError, match="max_length must be an int"):
        tokenizer().encode("a", max_length=3.0)


def test_special_tokens_are_cut_from_the_raw_text():
    tokens = tokenizer().tokenize("hello[MASK]world [SEP] [mask] [CLS]x")
    assert tokens == ["hello", "[MASK]", "world", "[SEP]", "[UNK]", "[UNK]", "[UNK]", "[CLS]",
                      "[UNK]"]                            # "[", "mask", "]" are not in VOCAB


def test_ids_and_tokens_convert_both_ways():
    bert = tokenizer()
    assert bert.convert_tokens_to_ids(["the", "zebra"]) == [VOCAB["the"], VOCAB["[UNK]"]]
    assert bert.convert_ids_to_tokens([VOCAB["cat"]]) == ["cat"]
    with pytest.raises(ValueError, match=r"ids \[9999\]"):
        bert.convert_ids_to_tokens([9999])
    with pytest.raises(ValueError, match="lacks the special tokens"):
        BertTokenizer({"a": 0})


def test_load_vocab_and_from_pretrained(tmp_path):
    lines = list(SPECIAL_TOKENS) + ["Ação", "a", "##b", "a"]
    (tmp_path / "vocab.txt").write_bytes("\r\n".join(lines).encode() + b"\n")
    vocab = load_vocab(tmp_path / "vocab.txt")
    assert vocab["Ação"] == 5 and vocab["##b"] == 7
    assert vocab["a"] == 8                                # a repeated token keeps its last id
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": False, "model_max_length": 1000000000000000019884624838656}))
    cased = BertTokenizer.from_pretrained(tmp_path)
    assert cased.max_length == 512
    assert cased.encode("Ação ab").tokens == ["[CLS]", "Ação", "a", "##b", "[SEP]"]
    assert BertTokenizer.from_pretrained(tmp_path / "vocab.txt").vocab == cased.vocab
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"unk_token": {"content": "[UNK]", "lstrip": False}, "cls_token": "<s>"}))
    with pytest.raises(ValueError, match="cls_token is '<s>'"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_basic_tokenize": False}))
    with pytest.raises(ValueError, match="do_basic_tokenize"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty vocabulary"):
        load_vocab(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="nowhere: no such directory or vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path / "nowhere")


@given(st.text(max_size=40))
def test_any_text_gives_vocabulary_tokens(text):
    encoding = tokenizer().encode(text)
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert all(token in VOCAB for token in encoding.tokens)
    assert encoding.ids == [VOCAB[token] for token in encoding.tokens]


@given(st.sampled_from(["a", "b", "un"]),
       st.lists(st.sampled_from(["a", "b", "aff", "able"]), max_size=6))
def test_pieces_spell_the_word(first, rest):
    word = first + "".join(rest)
    pieces = WordpieceTokenizer(VOCAB).tokenize(word)
    assert "".join(piece.removeprefix("##") for piece in pieces) == word


def test_a_pair_is_cls_a_sep_b_sep_with_token_types():
    encoding = tokenizer().encode("The cat!", "a b")
    assert encoding.tokens == ["[CLS]", "the", "cat", "!", "[SEP]", "a", "b", "[SEP]"]
    assert encoding.token_type_ids == [0, 0, 0, 0, 0, 1, 1, 1]
    assert encoding.ids == [VOCAB[token] for token in encoding.tokens]
    with pytest.raises(ValueError, match="sentence pair is 8 tokens"):
        tokenizer().encode("The cat!", "a b", max_length=7)
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        tokenizer().encode("a", "b", max_length=2, truncation=True)
    empty = tokenizer().encode("a", "")                  # an empty second segment
    assert empty.tokens == ["[CLS]", "a", "[SEP]", "[SEP]"]
    assert empty.token_type_ids == [0, 0, 0, 1]
    with pytest.raises(TypeError, match="text_pair must be a str or None, got list"):
        tokenizer().encode("a", ["b"])


@pytest.mark.parametrize("first, second, limit, kept", [
    (6, 2, 7, (2, 2)),    # the short segment fits in half the budget (4): kept whole
    (2, 6, 7, (2, 2)),
    (6, 6, 9, (3, 3)),    # neither does: half each, the longer (here the pair) gets the odd one
    (7, 6, 10, (4, 3)),   # the longer gets the odd token
    (1, 9, 5, (1, 1)),
    (3, 3, 6, (1, 2)),
])
def test_a_pair_is_cut_longest_first(first, second, limit, kept):
    """Expected counts worked out from tokenizers' LongestFirst (budget = limit - 3);
    test_bert_vs_transformers checks the rule against transformers itself."""
    text, pair = " ".join(["a"] * first), " ".join(["b"] * second)
    encoding = tokenizer().encode(text, pair, max_length=limit, truncation=True)
    assert (encoding.tokens.count("a"), encoding.tokens.count("b")) == kept
    assert encoding.tokens_total == first + second + 3 and len(encoding.tokens) <= limit


def test_windows_cover_the_text_and_overlap_by_size_minus_stride():
    text = " ".join(["a", "b", "the", "cat", "hello", "world", "e", "45", "reais"])
    words = tokenizer().tokenize(text)                                   # 9 tokens
    windows = tokenizer().encode_windows(text, stride=3, max_length=6)    # 4 tokens each
    assert [(start, stop) for start, stop, _ in windows] == [(0, 4), (3, 7), (6, 9)]
    for start, stop, encoding in windows:
        assert encoding.tokens == ["[CLS]"] + words[start:stop] + ["[SEP]"]
        assert encoding.tokens_total == 11 and encoding.token_type_ids == [0] * len(encoding.ids)
    (only,) = tokenizer().encode_windows("a b", stride=1)
    assert only[:2] == (0, 2) and only[2].tokens_total is None           # one window: all read
    with pytest.raises(ValueError, match=r"stride must be an integer between 1 and 4 .* got 5"):
        tokenizer().encode_windows(text, stride=5, max_length=6)
    with pytest.raises(ValueError, match="got 0"):
        tokenizer().encode_windows(text, stride=0, max_length=6)


# Regression cases of issue 14: tokenizer_config.json of the wrong shape or
# types was an AttributeError or TypeError; vocab.txt was read without limits.
@pytest.fixture
def vocab_dir(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(list(SPECIAL_TOKENS) + WORDS) + "\n")
    return tmp_path


@pytest.mark.parametrize("text, message", [
    ("[]", "expected an object at the top level, got an array"),
    ("null", "expected an object at the top level, got null"),
    ("{" * 10 + "}", "not valid JSON"),
    ('{"model_max_length": true}', "the field 'model_max_length' must be an integer >= 2, "
                                   "got True"),
    ('{"model_max_length": 1}', "the field 'model_max_length' must be an integer >= 2"),
    ('{"model_max_length": 512.5}', "the field 'model_max_length' must be an integer"),
    ('{"do_lower_case": "false"}', "the field 'do_lower_case' must be a boolean"),
    ('{"strip_accents": 0}', "the field 'strip_accents' must be a boolean"),
    ('{"tokenize_chinese_chars": []}', "the field 'tokenize_chinese_chars' must be a boolean"),
    ('{"do_basic_tokenize": "yes"}', "the field 'do_basic_tokenize' must be a boolean"),
    ('{"unk_token": ["[UNK]"]}', "the field 'unk_token' must be a string or an object"),
    ('{"unk_token": {"lstrip": false}}', "unk_token: the field 'content' is missing"),
    ('{"sep_token": {"content": 3}}', "sep_token: the field 'content' must be a string"),
])
def test_malformed_tokenizer_config_is_a_value_error_naming_the_field(vocab_dir, text,
                                                                       message):
    (vocab_dir / "tokenizer_config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        BertTokenizer.from_pretrained(vocab_dir)
    assert str(vocab_dir / "tokenizer_config.json") in str(error.value)


def test_tokenizer_config_fields_of_the_right_type_are_used(vocab_dir):
    (vocab_dir / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": False, "strip_accents": None, "model_max_length": 16,
         "unk_token": None, "mask_token": {"content": "[MASK]", "lstrip": True}}))
    tokenizer = BertTokenizer.from_pretrained(vocab_dir)
    assert tokenizer.max_length == 16 and not tokenizer.basic.do_lower_case
    (vocab_dir / "tokenizer_config.json").write_text('{"model_max_length": 1e30}')
    assert BertTokenizer.from_pretrained(vocab_dir).max_length == 512   # "no limit"


@pytest.mark.parametrize("content, message", [
    (b"[PAD]\n\xff\xfe\n", "the vocabulary is not valid UTF-8"),
    (b"", "empty vocabulary file"),
])
def test_malformed_vocabulary_is_a_value_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "vocab.txt").write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_vocab(tmp_path / "vocab.txt")
    assert str(tmp_path / "vocab.txt") in str(error.value)


def test_vocabulary_size_is_bounded_and_special_files_refused(tmp_path, monkeypatch):
    (tmp_path / "vocab.txt").write_text("[PAD]\n" * 100)
    monkeypatch.setattr(wordpiece, "MAX_VOCAB_BYTES", 599)
    with pytest.raises(ValueError, match="vocab.txt: the vocabulary is 600 bytes, more than "
                                         "the 599 accepted"):
        load_vocab(tmp_path / "vocab.txt")
    (tmp_path / "directory").mkdir()
    (tmp_path / "directory" / "vocab.txt").mkdir()
    with pytest.raises(ValueError, match="the vocabulary is not a regular file"):
        BertTokenizer.from_pretrained(tmp_path / "directory")


def test_vocabulary_without_the_special_tokens_names_the_file(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\n")
    with pytest.raises(ValueError, match=r"vocab.txt: the vocabulary lacks the special "
                                         r"tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        BertTokenizer.from_pretrained(tmp_path)

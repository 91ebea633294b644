"""A pure-Python byte-level BPE tokenizer built from GGUF metadata.

The algorithm is GPT-2's (Radford et al. 2019; openai/gpt-2 ``encoder.py``),
as run by Hugging Face ``tokenizers`` (``ByteLevel`` pre-tokenizer + ``BPE``
+ ``ByteLevel`` decoder), which is what ``transformers`` builds for a GGUF
file whose ``tokenizer.ggml.model`` is ``"gpt2"``
(``transformers/integrations/gguf/gguf_tokenizer_mapping.py``):

1. Added tokens are cut out of the raw text first and kept whole, the longest
   at the leftmost place (``tokenizers`` ``AddedVocabulary``): the tokens of
   type *control* (3, special: ``<|im_start|>``, ``<|endoftext|>``) and
   *user-defined* (4, not special).
2. Pre-tokenize each stretch between them (:data:`SPLITS`): GPT-2's split

   ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``

   or, for ``"gpt2-digits"``, every ``\\p{N}`` character isolated first and
   GPT-2's split run on each stretch between them.
3. Each pre-token's UTF-8 bytes become characters by GPT-2's
   ``bytes_to_unicode`` table (printable bytes stay, the others move to
   U+0100..U+0143: a space is ``Ġ``, a newline ``Ċ``), then adjacent
   symbols merge, the pair of lowest merge rank first, until no pair has a
   rank; each symbol is a token id.
4. BOS and EOS are added as ``tokenizer.ggml.add_bos_token`` /
   ``add_eos_token`` say.

Decoding maps the characters of the tokens back to bytes and reads them as
UTF-8, an invalid sequence becoming U+FFFD (``String::from_utf8_lossy`` in
``tokenizers``, ``errors="replace"`` here).

Notes
-----
Which split a file gets. llama.cpp (``llama-vocab.cpp``) and SmolLM2's own
``tokenizer.json`` isolate digits for ``tokenizer.ggml.pre = "smollm"``
(``"\\p{N}"`` then GPT-2's split; ``Digits(individual_digits=True)`` then
``ByteLevel``). transformers 5, reading the GGUF file, has no split for the
name ``smollm`` and keeps GPT-2's. The two agree on digit runs (SmolLM2's
vocabulary has no merge across digits) and differ only where whitespace
precedes a number: ``"x =  42"`` is ``x Ġ= ĠĠ 4 2`` with digits isolated and
``x Ġ= Ġ Ġ 4 2`` in transformers (the run of spaces ends at the digit in the
first, the second space joins `` 4`` in the second), and `` ½`` is
``Ġ Â½`` against ``ĠÂ ½``. attnref is verified against transformers
(issue 16), so :meth:`ByteLevelBPE.from_gguf` reads the file as
transformers does by default (``follow="transformers"``) and as llama.cpp
does with ``follow="llama.cpp"`` (:data:`PRE_TOKENIZER_SPLITS`).

Character classes come from :mod:`unicodedata` (Unicode 14.0 on Python
3.11): ``\\p{L}`` is category L*, ``\\p{N}`` N*, and ``\\s`` the
White_Space property (Oniguruma's ``\\s``: U+0009..U+000D, U+0085 and
categories Zs, Zl, Zp). Code points assigned after the Python's Unicode
version are "other" here, and may be letters or numbers in ``tokenizers``.
"""
from __future__ import annotations

import heapq
import operator
import re
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

__all__ = [
    "SPLITS",
    "PRE_TOKENIZER_SPLITS",
    "TOKEN_TYPES",
    "bytes_to_unicode",
    "pre_tokenize",
    "chatml_default_system",
    "ByteLevelBPE",
]

#: llama.cpp's ``llama_token_type`` values (``tokenizer.ggml.token_type``).
TOKEN_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user-defined", 5: "unused",
               6: "byte"}
_CONTROL, _USER_DEFINED = 3, 4

#: The pre-tokenizer splits this module implements (module docstring, step 2).
SPLITS = ("gpt2", "gpt2-digits")

#: The split each ``tokenizer.ggml.pre`` name gets, per implementation followed:
#: transformers 5 (``GGUF_PRE_TOKENIZER_SPLITS``; a name it has no split for
#: keeps GPT-2's ``ByteLevel`` split) and llama.cpp (``llama_vocab::impl::load``
#: and ``llm_tokenizer_bpe``: ``LLAMA_VOCAB_PRE_TYPE_GPT2`` and ``_SMOLLM``).
PRE_TOKENIZER_SPLITS = {
    "transformers": {"default": "gpt2", "gpt2": "gpt2", "smollm": "gpt2"},
    "llama.cpp": {"gpt2": "gpt2", "smollm": "gpt2-digits"},
}

#: At most this many pre-tokens keep their merged ids in a tokenizer's cache.
_CACHE_LIMIT = 100_000
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")   # UTF-16 halves: no UTF-8 bytes


@lru_cache(maxsize=None)
def bytes_to_unicode():
    """GPT-2's table from each byte (0..255) to the character that spells it.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) are
    their own character; the other 68 bytes, in order, take U+0100 onwards
    (openai/gpt-2 ``encoder.py`` ``bytes_to_unicode``).

    Returns
    -------
    tuple of str
        256 one-character strings, indexed by byte.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling = {byte: chr(byte) for byte in printable}
    moved = 0
    for byte in range(256):
        if byte not in spelling:
            spelling[byte] = chr(0x100 + moved)
            moved += 1
    return tuple(spelling[byte] for byte in range(256))


# Pre-tokenizing runs Python's ``re`` on a stand-in string of the same length:
# every character replaced by an ASCII character of its class (ASCII letters,
# digits, space and apostrophe stay themselves, so the contractions still
# read), because ``re`` has no ``\p{L}``/``\p{N}`` and its ``\s`` is
# ``str.isspace`` (which adds U+001C..U+001F to White_Space).
_ASCII_WHITESPACE = "\t\n\x0b\x0c\r "
_GPT2_PATTERN = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\t\n\x0b\x0c\r A-Za-z0-9]+"
    r"|[\t\n\x0b\x0c\r ]+(?![^\t\n\x0b\x0c\r ])|[\t\n\x0b\x0c\r ]+")
_DIGIT = re.compile(r"[0-9]")
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                         + "".join(map(chr, range(0x2000, 0x200B))))


class _ClassOf(dict):
    """``str.translate`` table: code point -> the stand-in of its class,
    filled on first sight of each character."""

    def __missing__(self, code):
        char = chr(code)
        if char.isascii() and (char.isalnum() or char in " '"):
            stand_in = char
        elif char in _WHITE_SPACE:
            stand_in = "\t"
        else:
            category = unicodedata.category(char)[0]
            stand_in = {"L": "A", "N": "0"}.get(category, "!")
        self[code] = stand_in
        return stand_in


_CLASS_OF = _ClassOf()


def pre_tokenize(text, split="gpt2"):
    """The pre-tokens of ``text`` (no added tokens in it) under ``split``.

    Parameters
    ----------
    text : str
    split : {"gpt2", "gpt2-digits"}
        GPT-2's split, or GPT-2's split on the stretches between the
        ``\\p{N}`` characters, each of which is a pre-token of its own
        (module docstring, step 2).

    Returns
    -------
    list of str
        Consecutive pieces whose concatenation is ``text``.

    Examples
    --------
    >>> pre_tokenize("It's 2024!  ok")
    ['It', "'s", ' 2024', '!', ' ', ' ok']
    >>> pre_tokenize("x =  42", "gpt2-digits")
    ['x', ' =', '  ', '4', '2']
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    stand_in = text.translate(_CLASS_OF)
    if split == "gpt2":
        return [text[match.start():match.end()] for match in _GPT2_PATTERN.finditer(stand_in)]
    pieces, start = [], 0
    for digit in _DIGIT.finditer(stand_in):
        pieces += [text[match.start():match.end()]
                   for match in _GPT2_PATTERN.finditer(stand_in, start, digit.start())]
        pieces.append(text[digit.start()])
        start = digit.end()
    pieces += [text[match.start():match.end()]
               for match in _GPT2_PATTERN.finditer(stand_in, start, len(stand_in))]
    return pieces


def _index(key, value, *, minimum=0, maximum=None):
    """``value`` as a Python int in ``[minimum, maximum)``, else a ValueError naming ``key``."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{key} must be an integer, got a bool ({value!r})")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{key} must be an integer, got {type(value).__name__}") from None
    if number < minimum or (maximum is not None and number >= maximum):
        bound = f"in [{minimum}, {maximum})" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{key} must be {bound}, got {number}")
    return number


def _flag(key, value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{key} must be a bool, got {type(value).__name__}")


def _sequence(key, value):
    """``value`` as a list, accepting any sequence or 1-D array but not a string."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ValueError(f"{key} must be 1-D, got an array of shape {value.shape}")
        return value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{key} must be a sequence, got {type(value).__name__}")
    return list(value)


def _strings(key, value):
    items = _sequence(key, value)
    for position, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"{key}[{position}] must be a str, got {type(item).__name__}")
    return items


class ByteLevelBPE:
    """Byte-level BPE: GPT-2's byte alphabet, merges by rank (module docstring).

    Parameters
    ----------
    tokens : sequence of str
        The vocabulary, token id -> token, in GPT-2's byte alphabet
        (:func:`bytes_to_unicode`). A token using any other character is
        looked up by its UTF-8 bytes in that alphabet, as transformers does.
    merges : sequence of str
        ``"a b"``, best first: ``a``, ``b`` and ``a + b`` are tokens.
    token_types : sequence of int, optional
        :data:`TOKEN_TYPES` per token (all normal when None). Control tokens
        and the BOS, EOS, unknown and padding tokens are special: matched
        whole in the text, dropped by ``decode(skip_special_tokens=True)``;
        user-defined tokens are matched whole too. All only when spelled in
        the byte alphabet (transformers skips the others as mislabelled).
    split : {"gpt2", "gpt2-digits"}
        The pre-tokenizer (:func:`pre_tokenize`).
    bos_id, eos_id, unk_id, pad_id : int, optional
        Token ids of those roles. ``unk_id`` is not used for bytes: a byte
        the vocabulary has no token for (SmolLM2 lacks 21, among them
        ``\x04`` and the UTF-8 lead bytes 0xF1, 0xF2 of planes 4 to 11) is
        left out before merging, as transformers does (its ``BPE`` model
        for a GGUF ``gpt2`` vocabulary has no unknown token), so such text
        does not round-trip and the bytes either side of it may merge.
    add_bos, add_eos : bool
        Whether ``encode(..., add_special_tokens=True)`` adds BOS / EOS.
    chat_template : str, optional
        The model's Jinja chat template (:meth:`chat_prompt` reads ChatML).

    Raises
    ------
    ValueError
        Naming the argument (and the entry) and what is wrong with it: not a
        sequence, an entry of the wrong type, a duplicate or empty token, a
        merge that is not two tokens or makes no token, a repeated merge, a
        token type or id out of range, a flag that is not a bool.
    """

    def __init__(self, tokens, merges, *, token_types=None, split="gpt2", bos_id=None,
                 eos_id=None, unk_id=None, pad_id=None, add_bos=False, add_eos=False,
                 chat_template=None):
        tokens = _strings("tokens", tokens)
        if not tokens:
            raise ValueError("tokens must not be empty")
        merges = _strings("merges", merges)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        count = len(tokens)
        if token_types is None:
            token_types = [1] * count
        token_types = [_index(f"token_types[{i}]", value)
                       for i, value in enumerate(_sequence("token_types", token_types))]
        if len(token_types) != count:
            raise ValueError(f"token_types must have one entry per token ({count}), "
                             f"got {len(token_types)}")
        for position, kind in enumerate(token_types):
            if kind not in TOKEN_TYPES:
                raise ValueError(f"token_types[{position}] must be one of "
                                 f"{sorted(TOKEN_TYPES)} ({TOKEN_TYPES}), got {kind}")
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (
            None if value is None else _index(name, value, maximum=count)
            for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("unk_id", unk_id),
                                ("pad_id", pad_id)))
        self.add_bos, self.add_eos = _flag("add_bos", add_bos), _flag("add_eos", add_eos)
        for role, wanted in (("bos", self.add_bos), ("eos", self.add_eos)):
            if wanted and getattr(self, f"{role}_id") is None:
                raise ValueError(f"add_{role} is True but there is no {role}_id")
        if chat_template is not None and not isinstance(chat_template, str):
            raise ValueError(f"chat_template must be a str, got {type(chat_template).__name__}")
        self.chat_template = chat_template
        self.split = split
        self.tokens = tokens
        self.token_types = token_types

        alphabet = bytes_to_unicode()
        in_alphabet = frozenset(alphabet)
        self._ids = {}
        for token_id, token in enumerate(tokens):
            if not token:
                raise ValueError(f"tokens[{token_id}] is an empty string")
            spelled = token if in_alphabet.issuperset(token) else \
                "".join(alphabet[byte] for byte in token.encode("utf-8"))
            if spelled in self._ids:
                raise ValueError(f"tokens[{token_id}] = {token!r} duplicates "
                                 f"tokens[{self._ids[spelled]}]")
            self._ids[spelled] = token_id
        self._ranks = {}
        for rank, merge in enumerate(merges):
            pair = tuple(merge.split(" "))
            if len(pair) != 2 or not all(pair):
                raise ValueError(f"merges[{rank}] must be two tokens separated by one space, "
                                 f"got {merge!r}")
            for part in (*pair, pair[0] + pair[1]):
                if part not in self._ids:
                    raise ValueError(f"merges[{rank}] = {merge!r} names {part!r}, which is "
                                     f"not a token")
            if pair in self._ranks:
                raise ValueError(f"merges[{rank}] = {merge!r} repeats merges"
                                 f"[{self._ranks[pair]}]")
            self._ranks[pair] = rank

        self._byte_of = {char: byte for byte, char in enumerate(alphabet)}
        self._spelling = [token if in_alphabet.issuperset(token) else None for token in tokens]
        roles = {self.bos_id, self.eos_id, self.unk_id, self.pad_id} - {None}
        self._special_ids = frozenset(
            token_id for token_id, kind in enumerate(token_types)
            if (kind == _CONTROL or token_id in roles) and self._spelling[token_id] is not None)
        added = sorted({tokens[token_id] for token_id, kind in enumerate(token_types)
                        if (kind in (_CONTROL, _USER_DEFINED) or token_id in roles)
                        and self._spelling[token_id] is not None}, key=len, reverse=True)
        # Longest first, so the leftmost match is also the longest there.
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        # A byte the vocabulary has no token for is dropped before merging, so
        # its neighbours may merge across it: transformers' BPE for a GGUF
        # "gpt2" vocabulary has no unknown token (``unk_id`` above).
        self._encode_bytes = str.maketrans({
            byte: alphabet[byte] if alphabet[byte] in self._ids else None for byte in range(256)})
        self._cache = {}

    @classmethod
    def from_gguf(cls, metadata, *, follow="transformers"):
        """The tokenizer a GGUF file's metadata describes.

        Parameters
        ----------
        metadata : mapping
            GGUF key -> value (``attnref.models.gguf.read_gguf(path).metadata``):
            ``tokenizer.ggml.model`` (must be ``"gpt2"``), ``.tokens``,
            ``.merges``, ``.token_type``, ``.pre``, ``.bos_token_id``,
            ``.eos_token_id``, ``.unknown_token_id``, ``.padding_token_id``,
            ``.add_bos_token``, ``.add_eos_token``, and
            ``tokenizer.chat_template``; arrays as any sequence.
        follow : {"transformers", "llama.cpp"}
            Whose reading of ``tokenizer.ggml.pre`` to reproduce
            (:data:`PRE_TOKENIZER_SPLITS`; module docstring, Notes).

        Raises
        ------
        ValueError
            Naming the key and what is wrong with its value.
        """
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
        if follow not in PRE_TOKENIZER_SPLITS:
            raise ValueError(f"follow must be one of {list(PRE_TOKENIZER_SPLITS)}, "
                             f"got {follow!r}")
        model = metadata.get("tokenizer.ggml.model")
        if not (isinstance(model, str) and model == "gpt2"):
            raise ValueError(f"tokenizer.ggml.model must be 'gpt2' (byte-level BPE), got "
                             f"{model!r}: attnref reads no other GGUF tokenizer")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in metadata:
                raise ValueError(f"{key} is missing")
        pre = metadata.get("tokenizer.ggml.pre", "default")
        splits = PRE_TOKENIZER_SPLITS[follow]
        if not isinstance(pre, str) or pre not in splits:
            raise ValueError(f"tokenizer.ggml.pre must be one of {sorted(splits)} (as "
                             f"{follow} reads them), got {pre!r}")

        try:
            return cls(
                metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"],
                token_types=metadata.get("tokenizer.ggml.token_type"),
                split=splits[pre],
                bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
                eos_id=metadata.get("tokenizer.ggml.eos_token_id"),
                unk_id=metadata.get("tokenizer.ggml.unknown_token_id"),
                pad_id=metadata.get("tokenizer.ggml.padding_token_id"),
                add_bos=metadata.get("tokenizer.ggml.add_bos_token", False),
                add_eos=metadata.get("tokenizer.ggml.add_eos_token", False),
                chat_template=metadata.get("tokenizer.chat_template"))
        except ValueError as error:
            raise ValueError(_gguf_key_message(str(error))) from None

    @property
    def vocab_size(self):
        """Number of token ids."""
        return len(self.tokens)

    @property
    def special_ids(self):
        """The ids of the special tokens (control, BOS, EOS, unknown, padding), sorted."""
        return sorted(self._special_ids)

    def encode(self, text, *, add_special_tokens=True):
        """Token ids of ``text``.

        Parameters
        ----------
        text : str
        add_special_tokens : bool
            Add BOS / EOS as the tokenizer's ``add_bos`` / ``add_eos`` say.
            Added tokens written in the text are matched either way.

        Returns
        -------
        list of int
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        surrogate = _LONE_SURROGATE.search(text)
        if surrogate is not None:
            # a byte-level BPE encodes UTF-8 bytes, and a lone surrogate has
            # none (transformers' tokenizers refuse such text too)
            raise ValueError(f"text must be valid Unicode, got a lone surrogate "
                             f"U+{ord(surrogate.group()):04X} at index {surrogate.start()} "
                             f"(text decoded with errors='surrogateescape'?)")
        ids = [self.bos_id] if add_special_tokens and self.add_bos else []
        start = 0
        if self._added is not None:
            for match in self._added.finditer(text):
                ids += self._encode_ordinary(text[start:match.start()])
                ids.append(self._ids[match.group()])
                start = match.end()
        ids += self._encode_ordinary(text[start:])
        if add_special_tokens and self.add_eos:
            ids.append(self.eos_id)
        return ids

    def _encode_ordinary(self, text):
        ids = []
        for piece in pre_tokenize(text, self.split):
            merged = self._cache.get(piece)
            if merged is None:
                merged = self._merge(piece.encode("utf-8").decode("latin-1")
                                     .translate(self._encode_bytes))
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[piece] = merged
            ids += merged
        return ids

    def _merge(self, spelled):
        """Ids of one pre-token spelled in the byte alphabet: repeatedly merge
        the adjacent pair of lowest rank, the leftmost first (``tokenizers``
        ``Word::merge_all``), with a heap of candidate pairs over a linked
        list of symbols, so a long pre-token costs O(n log n)."""
        symbols = list(spelled)
        count, ranks = len(symbols), self._ranks
        following = list(range(1, count + 1))
        preceding = list(range(-1, count - 1))
        heap = [(ranks[pair], left) for left, pair in enumerate(zip(symbols, symbols[1:]))
                if pair in ranks]
        heapq.heapify(heap)
        while heap:
            rank, left = heapq.heappop(heap)
            right = following[left]
            # a pair's rank names it, so an entry whose symbols have changed since is stale
            if symbols[left] is None or right >= count or \
                    ranks.get((symbols[left], symbols[right])) != rank:
                continue
            symbols[left] += symbols[right]
            symbols[right] = None
            following[left] = following[right]
            if following[left] < count:
                preceding[following[left]] = left
            for first, second in ((preceding[left], left), (left, following[left])):
                if first >= 0 and second < count:
                    pair_rank = ranks.get((symbols[first], symbols[second]))
                    if pair_rank is not None:
                        heapq.heappush(heap, (pair_rank, first))
        symbols = [symbol for symbol in symbols if symbol is not None]
        return [self._ids[symbol] for symbol in symbols]

    def _ids_list(self, ids):
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} array "
                                 f"of shape {ids.shape}")
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
            raise TypeError(f"ids must be a sequence of int, got {type(ids).__name__}")
        return [_index(f"ids[{position}]", value, maximum=self.vocab_size)
                for position, value in enumerate(ids)]

    def token_bytes(self, token_id):
        """The bytes token ``token_id`` stands for (an added token's UTF-8)."""
        spelling = self._spelling[token_id]
        if spelling is None:
            return self.tokens[token_id].encode("utf-8")
        return bytes(self._byte_of[char] for char in spelling)

    def decode(self, ids, *, skip_special_tokens=False):
        """The text of token ids: their bytes joined, read as UTF-8 with
        invalid sequences replaced by U+FFFD (``errors="replace"``).

        Parameters
        ----------
        ids : sequence of int or 1-D integer array
        skip_special_tokens : bool
            Leave out the special (control) tokens.
        """
        ids = self._ids_list(ids)
        if skip_special_tokens:
            ids = [token_id for token_id in ids if token_id not in self._special_ids]
        return b"".join(map(self.token_bytes, ids)).decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, ids):
        """Readable token strings, for reports.

        A token's bytes read as UTF-8: GPT-2's ``Ġ`` is shown as the space it
        stands for and ``Ċ`` as ``\\n``. Newline, tab and carriage return
        are written ``\\n``, ``\\t``, ``\\r``, and bytes that are not whole
        UTF-8 characters (a token holding part of one) ``\\xNN``, so every
        token is visible on one line. Added tokens are shown as written
        (``<|im_start|>``).
        """
        return [self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
                .translate(_VISIBLE) for token_id in self._ids_list(ids)]

    def chat_prompt(self, messages, *, add_generation_prompt=True):
        """The prompt text the model's chat template makes of ``messages``.

        Only ChatML templates are read (``<|im_start|>{role}\\n{content}<|im_end|>\\n``
        per message, with the default system message the template inserts
        when the first message is not a system one, and
        ``<|im_start|>assistant\\n`` to end with when ``add_generation_prompt``);
        any other template is refused, since attnref runs no Jinja.

        Parameters
        ----------
        messages : sequence of mapping
            Each with str ``"role"`` and ``"content"``.
        add_generation_prompt : bool

        Returns
        -------
        str
            Text for :meth:`encode` (its ``<|im_start|>`` are added tokens).
        """
        template = self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template (tokenizer.chat_template)")
        system = chatml_default_system(template)
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise TypeError(f"messages must be a sequence of {{'role', 'content'}} mappings, "
                            f"got {type(messages).__name__}")
        if not messages:
            raise ValueError("messages must hold at least one message, got none")
        parts = []
        for position, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise TypeError(f"messages[{position}] must be a mapping, got "
                                f"{type(message).__name__}")
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    raise ValueError(f"messages[{position}][{key!r}] must be a str, got "
                                     f"{type(message.get(key)).__name__}")
            if position == 0 and system and message["role"] != "system":
                parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
            parts.append(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n")
        if _flag("add_generation_prompt", add_generation_prompt):
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)


_VISIBLE = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})


def _gguf_key_message(message):
    """A constructor message re-worded with the GGUF key of its field."""
    for field, key in (("token_types", "tokenizer.ggml.token_type"),
                       ("tokens", "tokenizer.ggml.tokens"), ("merges", "tokenizer.ggml.merges"),
                       ("bos_id", "tokenizer.ggml.bos_token_id"),
                       ("eos_id", "tokenizer.ggml.eos_token_id"),
                       ("unk_id", "tokenizer.ggml.unknown_token_id"),
                       ("pad_id", "tokenizer.ggml.padding_token_id"),
                       ("add_bos", "tokenizer.ggml.add_bos_token"),
                       ("add_eos", "tokenizer.ggml.add_eos_token"),
                       ("chat_template", "tokenizer.chat_template")):
        if message.startswith(field) and not message.startswith(key):
            return key + message[len(field):]
    return message


# ChatML as SmolLM2's Jinja template writes it, allowing
# whitespace control, either quote, ``message['role']`` or ``message.role``,
# newlines written or escaped.
_NL = r"(?:\n|\\n)"
_Q = r"""['"]"""


def _field(name):
    return rf"message(?:\[{_Q}{name}{_Q}\]|\.{name})"


def _tag(body):
    return rf"\{{%-?\s*{body}\s*-?%\}}"


_CHATML = re.compile(
    r"\s*" + _tag(r"for\s+message\s+in\s+messages") + r"\s*"
    + r"(?:" + _tag(r"if\s+loop\.first\s+and\s+messages\[0\]\[" + _Q + r"role" + _Q
                    + r"\]\s*!=\s*" + _Q + r"system" + _Q)
    + r"\s*\{\{-?\s*" + _Q + r"<\|im_start\|>system" + _NL + r"(?P<system>[^'\"{}]*?)"
    + r"<\|im_end\|>" + _NL + _Q + r"\s*-?\}\}\s*" + _tag("endif") + r")?\s*"
    + r"\{\{-?\s*" + _Q + r"<\|im_start\|>" + _Q + r"\s*\+\s*" + _field("role")
    + r"\s*\+\s*" + _Q + _NL + _Q + r"\s*\+\s*" + _field("content")
    + r"\s*\+\s*" + _Q + r"<\|im_end\|>" + r"(?:" + _Q + r"\s*\+\s*" + _Q + r")?" + _NL + _Q
    + r"\s*-?\}\}\s*" + _tag("endfor") + r"\s*"
    + _tag(r"if\s+add_generation_prompt") + r"\s*\{\{-?\s*" + _Q + r"<\|im_start\|>assistant"
    + _NL + _Q + r"\s*-?\}\}\s*" + _tag("endif") + r"\s*")


def chatml_default_system(template):
    """The default system message of a ChatML chat template ('' if none).

    Raises
    ------
    ValueError
        When ``template`` is not ChatML in the form SmolLM2's template
        writes it.
    """
    match = _CHATML.fullmatch(template)
    if match is None:
        raise ValueError("tokenizer.chat_template is not a ChatML template attnref can read "
                         "(it runs no Jinja); its start: " + repr(template[:80]))
    system = match.group("system") or ""
    return system.replace("\\n", "\n")

"""Fitting a tokenized input to a model's length limit, never silently.

Every model's ``encode`` counts the tokens of its whole input first and then
does one of three things (the same for BERT and the demo model):

* the input fits: it is read whole, and the output's ``tokens_total`` is None;
* it does not fit and ``truncation`` is False (the default): a ValueError
  says how long the input is, the limit, and the two ways to read it;
* it does not fit and ``truncation`` is True: the model reads what fits and
  the output's ``tokens_total`` records how many tokens the whole input had.
  A single text keeps its first tokens; a sentence pair is cut
  *longest-first*, as Hugging Face ``tokenizers`` (the default tokenizer of
  ``transformers``) does it (``TruncationStrategy::LongestFirst``): when
  the shorter segment fits in half the budget it is kept whole and the longer
  gets the rest, otherwise each gets half and the longer one the odd token.

``encode_windows`` reads a long single text whole, in overlapping windows
(:func:`window_spans`).
"""
from __future__ import annotations

__all__ = ["check_max_length", "fit_lengths", "window_spans"]


def check_max_length(max_length, *, default, minimum=2, maximum=None, name="max_length"):
    """``max_length`` (``default`` when None) checked as an int in
    ``[minimum, maximum]``; TypeError or ValueError naming ``name``."""
    if max_length is None:
        return default
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"{name} must be an int, got {type(max_length).__name__}")
    if max_length < minimum:
        raise ValueError(f"{name} must be >= {minimum} (the special tokens [CLS] and [SEP] "
                         f"count), got {max_length}")
    if maximum is not None and max_length > maximum:
        raise ValueError(f"{name} must be at most {maximum}, the tokens the model has "
                         f"positions for, got {max_length}")
    return max_length


def fit_lengths(lengths, limit, *, specials, truncation):
    """How many tokens of each segment a model of ``limit`` tokens reads.

    Parameters
    ----------
    lengths : tuple of int
        Tokens of the text, or of the text and its pair, specials excluded.
    limit : int
        Tokens the model reads, ``specials`` included.
    specials : int
        Special tokens the template adds (2 for ``[CLS] a [SEP]``, 3 for
        ``[CLS] a [SEP] b [SEP]``).
    truncation : bool
        Cut an input that does not fit (module docstring) instead of refusing it.

    Returns
    -------
    kept : tuple of int
        Tokens read of each segment, its first ones.
    tokens_total : int or None
        ``sum(lengths) + specials`` when something was cut, else None.

    Raises
    ------
    ValueError
        When the input does not fit and ``truncation`` is False.
    """
    total = sum(lengths) + specials
    if total <= limit:
        return tuple(lengths), None
    if not truncation:
        what = "text" if len(lengths) == 1 else "sentence pair"
        windows = (", or encode_windows(text, stride=...) to read all of it in overlapping "
                   "windows" if len(lengths) == 1 else "")
        raise ValueError(
            f"the {what} is {total} tokens with its special tokens, and the model reads "
            f"at most {limit} (max_length): pass truncation=True to read the first {limit} "
            f"(the output's tokens_total then records the cut){windows}")
    budget = limit - specials
    if len(lengths) == 1:
        return (budget,), total
    first, second = lengths
    swap = first > second
    short, long = (second, first) if swap else (first, second)
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short, long = budget // 2, budget // 2 + budget % 2
    short, long = min(short, min(lengths)), min(long, max(lengths))
    return ((long, short) if swap else (short, long)), total


def window_spans(count, size, stride):
    """Overlapping windows over ``count`` tokens: ``[(start, stop), ...]``.

    Windows start at ``0, stride, 2 stride, ...`` and hold ``size`` tokens
    (the last one fewer), until one reaches the end; consecutive windows
    share ``size - stride`` tokens. ``count = 0`` gives one empty window.

    Raises
    ------
    ValueError
        When ``stride`` is not an integer in ``[1, size]`` (a larger stride
        would skip tokens).
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= size:
        raise ValueError(f"stride must be an integer between 1 and {size} (the text tokens "
                         f"in a window; windows then overlap by {size} - stride tokens), "
                         f"got {stride!r}")
    spans, start = [], 0
    while True:
        stop = min(start + size, count)
        spans.append((start, stop))
        if stop >= count:
            return spans
        start += stride

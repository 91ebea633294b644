"""attnref.models._limits: refusal, longest-first truncation and windows, as
properties over all small lengths (the models' tests check them on text, and
test_bert_vs_transformers against transformers)."""
import pytest
from hypothesis import given, strategies as st

from attnref.models._limits import check_max_length, fit_lengths, window_spans

lengths = st.integers(min_value=0, max_value=60)


@given(count=st.integers(min_value=0, max_value=300), size=st.integers(min_value=1, max_value=40),
       data=st.data())
def test_windows_cover_every_token_with_the_stated_overlap(count, size, data):
    stride = data.draw(st.integers(min_value=1, max_value=size))
    spans = window_spans(count, size, stride)
    assert spans[0][0] == 0 and spans[-1][1] == count
    assert all(0 < stop - start <= size for start, stop in spans) or spans == [(0, 0)]
    for (start, stop), (next_start, _) in zip(spans, spans[1:]):
        assert next_start - start == stride and stop - next_start == size - stride
        assert stop < count                       # no window after one that reaches the end


@given(first=lengths, second=lengths, limit=st.integers(min_value=3, max_value=130))
def test_a_pair_keeps_its_first_tokens_and_fills_the_limit(first, second, limit):
    budget = limit - 3
    (a, b), total = fit_lengths((first, second), limit, specials=3, truncation=True)
    assert 0 <= a <= first and 0 <= b <= second
    if first + second <= budget:
        assert (a, b) == (first, second) and total is None
    else:
        assert a + b == budget and total == first + second + 3
        shorter, longer = sorted((first, second))
        kept_short = min(a, b) if first != second else a
        # the shorter is kept whole when it fits in half the budget; else halves
        assert kept_short == (shorter if shorter <= budget - shorter else budget // 2)


@given(length=lengths, limit=st.integers(min_value=2, max_value=70))
def test_a_text_is_refused_unless_truncation_and_then_keeps_its_start(length, limit):
    if length + 2 <= limit:
        assert fit_lengths((length,), limit, specials=2, truncation=False) == ((length,), None)
        return
    with pytest.raises(ValueError, match=f"the text is {length + 2} tokens .* at most {limit}"):
        fit_lengths((length,), limit, specials=2, truncation=False)
    assert fit_lengths((length,), limit, specials=2, truncation=True) == ((limit - 2,),
                                                                           length + 2)


def test_max_length_is_checked_and_named():
    assert check_max_length(None, default=7) == 7
    assert check_max_length(5, default=7, maximum=5) == 5
    with pytest.raises(TypeError, match="max_length must be an int, got float"):
        check_max_length(3.0, default=7)
    with pytest.raises(TypeError, match="limit must be an int, got bool"):
        check_max_length(True, default=7, name="limit")
    with pytest.raises(ValueError, match="max_length must be >= 3 .* got 2"):
        check_max_length(2, default=7, minimum=3)
    with pytest.raises(ValueError, match="max_length must be at most 5, .* got 6"):
        check_max_length(6, default=7, maximum=5)

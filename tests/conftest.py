"""Hypothesis profiles: ``dev`` (default, randomised), ``ci`` (derandomised,
no deadline), ``sanitizers`` (``ci`` without the target phase) and
``stress`` (2000 examples), chosen by HYPOTHESIS_PROFILE or, when unset, by
CI=true."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

import attnref

# Suppressed health checks, each with its reason:
# too_slow: cases draw arrays from a seed; large drawn shapes make single examples slow.
# function_scoped_fixture: the `backend` and `code_path` fixtures select a C
#   code path once per test; every generated example is meant to run on it.
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=SUPPRESSED)
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True,
                          print_blob=True, suppress_health_check=SUPPRESSED)
# The sanitizer run of .ci/run (docs/sanitizers.md) looks for memory errors,
# not for the largest error: it runs the ci profile's generated examples
# without the target phase, whose hill-climbing towards large errors grows
# inputs that cost minutes under ASan and that the main run already searched.
settings.register_profile(
    "sanitizers", parent=settings.get_profile("ci"),
    phases=[phase for phase in Phase if phase != Phase.target])
settings.register_profile(  # long local searches: HYPOTHESIS_PROFILE=stress
    "stress", max_examples=2000, deadline=None, suppress_health_check=SUPPRESSED)
settings.load_profile(os.environ.get(
    "HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

BACKENDS = ["numpy", "c"]
# the C kernel's code paths each property test runs on (attnref.kernel.CODE_PATHS)
CODE_PATHS = ["portable", "avx2", "avx512", "neon"]


@pytest.fixture(params=CODE_PATHS)
def code_path(request):
    """Each C code path in turn, skipped where the CPU or build lacks it (or
    the kernel is not compiled); the default path is restored afterwards."""
    if not attnref.kernel.available():
        pytest.skip(f"C kernel unavailable: {attnref.kernel.info()['reason']}")
    if request.param not in attnref.kernel.supported_code_paths():
        pytest.skip(f"code path {request.param} is not supported on this CPU")
    attnref.kernel.set_code_path(request.param)
    yield request.param
    attnref.kernel.set_code_path("auto")


@pytest.fixture(params=["numpy"] + [f"c-{path}" for path in CODE_PATHS])
def backend(request):
    """The NumPy backend, then the C backend on each of its code paths; the C
    ones are skipped when the kernel is not compiled (and required when
    ATTNREF_REQUIRE_NATIVE is set: see test_kernel.py)."""
    if request.param == "numpy":
        yield "numpy"
        return
    path = request.param[2:]
    if not attnref.kernel.available():
        pytest.skip(f"C kernel unavailable: {attnref.kernel.info()['reason']}")
    if path not in attnref.kernel.supported_code_paths():
        pytest.skip(f"code path {path} is not supported on this CPU")
    attnref.kernel.set_code_path(path)
    yield "c"
    attnref.kernel.set_code_path("auto")


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


# -- small causal decoders with the interface of attnref's decoder models, for the
# report, the induction probe and `attnref generate` (attnref.report, attnref.cli)

class _Norm:
    """RMSNorm (bias None) or LayerNorm (a bias): ``weight``, ``eps``, ``bias``."""

    def __init__(self, weight, eps, bias=None):
        self.weight, self.eps, self.bias = weight, eps, bias

    def __call__(self, x):
        if self.bias is not None:
            x = x - x.mean(axis=-1, keepdims=True)
        scaled = self.weight * x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + self.eps)
        return scaled if self.bias is None else scaled + self.bias


class _WordTokenizer:
    def __init__(self, words):
        self.words = list(words)

    def decode(self, ids, *, skip_special_tokens=False):
        return " ".join(self.words[int(i)] for i in ids)


class InductionDecoder:
    """A 2-layer attention-only causal decoder whose weights are built by hand
    (Elhage et al. 2021; Olsson et al. 2022): layer 0 head 0 is a
    previous-token head (query = position i, key = position j + 1), writing
    the previous token into a slot of the residual stream; layer 1 head 0 is
    an induction head (query = the current token, key = that slot), copying
    the token after the earlier occurrence into an output slot the LM head
    reads. Head 1 of each layer has zero weights (uniform over the prefix,
    writes nothing). The words of ``WORDS`` are the tokens, "<s>" (id 0) the
    BOS."""

    WORDS = ["<s>", "the", "cat", "sat", "on", "mat", "dog", "ran", "and", "a", "red", "ball",
             "it", "was", "big", "small", "fast", "slow", "tree", "house", "bird", "sang",
             "sun", "rain", "day", "night", "blue", "green", "old", "new"] + [
                 f"w{index}" for index in range(30, 64)]   # 64 ids: room for the 50-token probe
    name = "induction-toy"
    num_layers, num_heads = 2, 2
    causal = True
    bos_id = 0
    special_ids = (0,)

    def __init__(self, positions=128, gain=240.0):
        from attnref.nn import Linear, MultiHeadAttention
        V, P = len(self.WORDS), positions
        self.vocab_size, self.positions = V, P
        D, E, H = 3 * V + P, P, 2                           # token | position | previous | output
        token, position, previous, copied = 0, V, V + P, 2 * V + P
        self.dim = D

        def attention(q, k, v, o):
            return MultiHeadAttention(*(Linear(m.T.copy()) for m in (q, k, v, o)), num_heads=H)

        q, k, v, o = (np.zeros((D, H * E)), np.zeros((D, H * E)), np.zeros((D, H * E)),
                      np.zeros((H * E, D)))
        q[position + np.arange(P), np.arange(P)] = gain               # query: position i
        k[position + np.arange(P - 1), np.arange(1, P)] = 1.0         # key: position j + 1
        v[token + np.arange(V), np.arange(V)] = 1.0                   # value: the token
        o[np.arange(V), previous + np.arange(V)] = 1.0                # -> the previous slot
        layer0 = attention(q, k, v, o)
        q, k, v, o = (np.zeros((D, H * E)), np.zeros((D, H * E)), np.zeros((D, H * E)),
                      np.zeros((H * E, D)))
        q[token + np.arange(V), np.arange(V)] = gain                  # query: the token
        k[previous + np.arange(V), np.arange(V)] = 1.0                # key: the token before
        v[token + np.arange(V), np.arange(V)] = 1.0                   # value: the token
        o[np.arange(V), copied + np.arange(V)] = 1.0                  # -> the output slot
        self.layers = [layer0, attention(q, k, v, o)]
        self.final_norm = _Norm(np.ones(D), 1e-6)
        self.unembedding = np.zeros((V, D))
        self.unembedding[np.arange(V), copied + np.arange(V)] = 1.0
        self.tokenizer = _WordTokenizer(self.WORDS)

    def ids(self, text):
        return np.array([0] + [self.WORDS.index(word) for word in text.split()])

    def encode(self, text_or_ids, *, trace=True):
        from attnref.models import ModelOutput
        from attnref.nn import Trace
        from attnref.nn.trace import LayerRecord
        ids = (self.ids(text_or_ids) if isinstance(text_or_ids, str)
               else np.asarray(text_or_ids, dtype=np.int64))
        T, V = ids.size, self.vocab_size
        x = np.zeros((T, self.dim))
        x[np.arange(T), ids] = 1.0
        x[np.arange(T), V + np.arange(T)] = 1.0
        record = Trace()
        for index, layer in enumerate(self.layers):
            attended, attention = layer(x, is_causal=True, record=True)
            out = x + attended
            record.layers.append(LayerRecord(f"decoder.{index}", x, out, out, attention))
            x = out
        output = ModelOutput(tokens=[self.WORDS[i] for i in ids], ids=ids,
                             hidden_states=record.residual_stream(), trace=record,
                             model=self.name)
        output.logits = self.final_norm(x) @ self.unembedding.T
        return output


class RandomDecoder:
    """A random-weight pre-LN causal stack of attnref.nn (2 layers, 4 heads,
    its final LayerNorm, tied embeddings) laid out as attnref's Llama model:
    ``stack.final_norm``, ``lm_head.weight``, ``stream``; no ``causal``
    attribute (it is a decoder because it can generate)."""

    name = "random-decoder"
    num_layers, num_heads = 2, 4

    def __init__(self, vocab_size=40, dim=16, seed=0):
        from attnref.nn import Encoder, Linear
        self.stack = Encoder.init(2, dim, 4, 32, seed=seed, norm_first=True, dtype=np.float64)
        self.lm_head = Linear(np.random.default_rng(seed).standard_normal((vocab_size, dim)))
        self.tokenizer = _WordTokenizer([f"tok{i}" for i in range(vocab_size)])
        self.tokenizer.add_bos, self.tokenizer.special_ids = False, []

    def encode(self, text_or_ids, *, trace=True):
        from attnref.models import ModelOutput
        from attnref.nn import Trace
        V = self.lm_head.weight.shape[0]
        ids = (np.array([sum(map(ord, word)) % V for word in text_or_ids.split()])
               if isinstance(text_or_ids, str) else np.asarray(text_or_ids, dtype=np.int64))
        record = Trace()
        states = self.stack.states(self.lm_head.weight[ids], is_causal=True, trace=record)
        output = ModelOutput(tokens=[f"tok{i}" for i in ids], ids=ids, hidden_states=states,
                             trace=record, model=self.name)
        output.logits = self.lm_head(self.stack.final_norm(states[-1]))
        return output

    def stream(self, text_or_ids, *, max_new_tokens, temperature=0.0, rng=None):
        ids = list(self.encode(text_or_ids).ids)
        for _ in range(max_new_tokens):
            ids.append(int(self.encode(np.array(ids)).logits[-1].argmax()))
            yield ids[-1]


@pytest.fixture(scope="session")
def induction_decoder():
    return InductionDecoder()


@pytest.fixture(scope="session")
def random_decoder():
    return RandomDecoder()

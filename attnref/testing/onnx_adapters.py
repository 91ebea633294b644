"""Adapters for ONNX: the opset-23 ``Attention`` operator and ONNX Runtime's
``com.microsoft`` contrib attention operators, behind the torch SDPA
signature :func:`attnref.testing.check` calls.

Each adapter builds a one-node ONNX model with ``onnx.helper`` for the
call's dtype and flags (cached, so a suite builds each graph once) and runs
it:

:func:`onnxruntime_attention`
    ``Attention`` (opset 23) on ONNX Runtime's CPU execution provider;
:func:`onnx_reference_attention`
    the same model on ``onnx.reference.ReferenceEvaluator``, the ONNX
    project's executable specification;
:func:`onnxruntime_mha`
    ``com.microsoft.MultiHeadAttention``: bool masks become its
    ``key_padding_mask`` (filled with ``mask_filter_value``, -10000 by
    default), float masks its ``attention_bias``;
:func:`onnxruntime_gqa`
    ``com.microsoft.GroupQueryAttention``: float masks become its
    ``attention_bias``, ``window=(left, 0)`` its ``local_window_size``.

Inputs are attnref's (query (B, Hq, L, E), key (B, Hkv, S, E), value
(B, Hkv, S, Ev), bool masks True = may attend). With ``kv_cache=True`` (the
default) and S > L the first S - L keys and values go in as ``past_key`` and
``past_value``: the decoding layout, in which ONNX aligns the causal
frontier bottom-right (offset = past length); with L >= S, or
``kv_cache=False``, they all go in as the current keys, and causal is
top-left. The profiles ``onnx_attention``, ``ort_mha`` and ``ort_gqa``
(:mod:`attnref.testing.semantics`) describe these conventions; the
capabilities below say which cases each operator can express, measured with
onnx 1.23.2 and onnxruntime 1.32.0. Nothing here imports onnx or
onnxruntime until an adapter is called.
"""
from __future__ import annotations

import functools
import importlib

import numpy as np

from .._optional import import_optional
from .cases import CAPABILITIES

OPSET = 23
CONTRIB_DOMAIN = "com.microsoft"
# Opset-23 Attention has no window inputs (left_window_size is opset 25).
# ORT's CPU Attention refuses L = 0 ("Q sequence length must be greater than
# 0") and has no bfloat16 kernel; the reference evaluator fails on S = 0
# (a max over no keys), so neither claims empty lengths. Both claim float64,
# which ORT accepts but scales in float32 (see docs/semantics.md).
ONNXRUNTIME_CAPABILITIES = CAPABILITIES - {"window", "empty", "bfloat16"}
ONNX_REFERENCE_CAPABILITIES = CAPABILITIES - {"window", "empty"}
# MultiHeadAttention: one head count for q, k and v (no GQA), a key padding
# mask per batch entry (B, S) or per query (B, L, S) but not per head, no
# softcap, no window, no mask together with unidirectional (the adapter would
# have to merge them), Ev = E once a past is fed ("Input 'past_value'
# dimension 3 should be same as head_size"); float32 and float16 only (a
# double graph is refused as invalid).
MHA_CAPABILITIES = CAPABILITIES - {"gqa", "per_head_mask", "softcap", "window", "e_ne_ev",
                                   "mask_with_causal", "empty", "bfloat16", "float64"}
# GroupQueryAttention: no boolean mask input, as many new keys as queries (so
# S >= L, the rest is past_key), one head size for k and v, a multiple of 8
# ("head_size must be a multiple of 8"); float32 and float16 only.
GQA_CAPABILITIES = CAPABILITIES - {"bool_mask", "per_head_mask", "mask_with_causal",
                                   "e_ne_ev", "odd_head_dim", "query_longer", "empty",
                                   "bfloat16", "float64"}


def onnxruntime_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                          scale=None, enable_gqa=False, *, softcap=None, kv_cache=True):
    """ONNX ``Attention`` (opset 23) on ONNX Runtime's CPU provider.

    GQA needs no flag: the operator reads it off the head counts
    (``enable_gqa`` is accepted and ignored). ``softcap`` is the operator's
    attribute of that name.
    """
    _require_no_dropout(dropout_p)
    model, feeds = _attention_call(query, key, value, attn_mask, is_causal, scale, softcap,
                                   kv_cache)
    return _run_onnxruntime(model, feeds)


def onnx_reference_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                             is_causal=False, scale=None, enable_gqa=False, *, softcap=None,
                             kv_cache=True):
    """The model of :func:`onnxruntime_attention` on
    ``onnx.reference.ReferenceEvaluator``."""
    _require_no_dropout(dropout_p)
    model, feeds = _attention_call(query, key, value, attn_mask, is_causal, scale, softcap,
                                   kv_cache)
    return _reference_evaluator(model).run(None, feeds)[0]


def onnxruntime_mha(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                    scale=None, enable_gqa=False, *, kv_cache=True):
    """``com.microsoft.MultiHeadAttention`` on ONNX Runtime's CPU provider.

    ``is_causal`` is the ``unidirectional`` attribute. A bool mask goes in
    as ``key_padding_mask`` (int32, 1 = keep): shape (B, S) when it is
    (B, 1, 1, S), else (B, L, S); ORT fills masked scores with
    ``mask_filter_value`` (-10000), a finite number. A float mask is the
    additive ``attention_bias`` (B or 1, H or 1, L, S). Query, key and value
    travel as (B, L, H E) and the past as (B, H, P, E), the operator's
    layouts.
    """
    _require_no_dropout(dropout_p)
    query, key, value = _four_dims(query, key, value)
    B, H, L, E = query.shape
    if key.shape[1] != H:
        raise ValueError(f"MultiHeadAttention has one head count for query, key and value; "
                         f"got {H} query heads and {key.shape[1]} key heads")
    past = _past_length(L, key.shape[2], kv_cache)
    feeds = {"query": _heads_last(query), "key": _heads_last(key[:, :, past:]),
             "value": _heads_last(value[:, :, past:])}
    mask_input = None
    if attn_mask is not None and np.asarray(attn_mask).dtype == bool:
        mask_input = "key_padding_mask"
        feeds[mask_input] = _key_padding_mask(np.asarray(attn_mask), B, L, key.shape[2])
    elif attn_mask is not None:
        mask_input = "attention_bias"
        feeds[mask_input] = _bias(attn_mask, query.dtype, L, key.shape[2])
    if past:
        feeds["past_key"] = np.ascontiguousarray(key[:, :, :past])
        feeds["past_value"] = np.ascontiguousarray(value[:, :, :past])
    attributes = {"num_heads": H, "unidirectional": int(bool(is_causal))}
    if scale is not None:
        attributes["scale"] = float(scale)
    model = _contrib_model("MultiHeadAttention", _feed_types(feeds),
                           ("query", "key", "value", "bias", "key_padding_mask",
                            "attention_bias", "past_key", "past_value"),
                           3 if past else 1, tuple(sorted(attributes.items())))
    output = _run_onnxruntime(model, feeds)                    # (B, L, H Ev)
    return _heads_first(output, H)


def onnxruntime_gqa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                    scale=None, enable_gqa=False, *, softcap=None, window=None):
    """``com.microsoft.GroupQueryAttention`` on ONNX Runtime's CPU provider.

    ``is_causal`` is the ``causal`` attribute; the first S - L keys and
    values are always ``past_key`` and ``past_value`` (the operator takes as
    many new keys as queries), with ``seqlens_k = S - 1`` and
    ``total_sequence_length = S``. A float mask is ``attention_bias``;
    ``window=(left, 0)`` with ``is_causal`` is ``local_window_size =
    left + 1`` (the operator counts the query's own key in the window).
    ORT refuses a past with more than one query per batch entry in one call,
    so then each batch entry runs on its own.
    """
    _require_no_dropout(dropout_p)
    query, key, value = _four_dims(query, key, value)
    B, Hq, L, E = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    if attn_mask is not None and np.asarray(attn_mask).dtype == bool:
        raise ValueError("GroupQueryAttention takes no boolean mask; pass an additive float "
                         "attn_mask (attention_bias)")
    if value.shape[-1] != E:
        raise ValueError(f"GroupQueryAttention needs one head size for key and value; got "
                         f"E = {E} and Ev = {value.shape[-1]}")
    if S < L:
        raise ValueError(f"GroupQueryAttention takes as many new keys as queries, so S >= L; "
                         f"got L = {L}, S = {S}")
    attributes = {"num_heads": Hq, "kv_num_heads": Hkv, "causal": int(bool(is_causal))}
    if scale is not None:
        attributes["scale"] = float(scale)
    if softcap is not None:
        attributes["softcap"] = float(softcap)
    if window is not None:
        left, right = window
        if not is_causal or right != 0 or left is None:
            raise ValueError(f"GroupQueryAttention's local_window_size is a left window on a "
                             f"causal mask; got window={window!r}, is_causal={is_causal}")
        attributes["local_window_size"] = int(left) + 1
    bias = None if attn_mask is None else _bias(attn_mask, query.dtype, L, S)
    past = S - L
    batches = [slice(b, b + 1) for b in range(B)] if past and L > 1 else [slice(0, B)]
    outputs = []
    for batch in batches:
        count = len(range(B)[batch])
        feeds = {"query": _heads_last(query[batch]),
                 "key": _heads_last(key[batch, :, past:]),
                 "value": _heads_last(value[batch, :, past:]),
                 "past_key": np.ascontiguousarray(key[batch, :, :past]),
                 "past_value": np.ascontiguousarray(value[batch, :, :past]),
                 "seqlens_k": np.full(count, S - 1, dtype=np.int32),
                 "total_sequence_length": np.array(S, dtype=np.int32)}
        if bias is not None:
            feeds["attention_bias"] = bias[batch] if bias.shape[0] == B > 1 else bias
        model = _contrib_model("GroupQueryAttention", _feed_types(feeds),
                               ("query", "key", "value", "past_key", "past_value", "seqlens_k",
                                "total_sequence_length", "cos_cache", "sin_cache",
                                "position_ids", "attention_bias"), 3,
                               tuple(sorted(attributes.items())))
        outputs.append(_heads_first(_run_onnxruntime(model, feeds), Hq))
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)


def _require_no_dropout(dropout_p):
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0.0 for a conformance run, got {dropout_p!r}")


def _four_dims(query, key, value):
    arrays = tuple(np.asarray(array) for array in (query, key, value))
    for name, array in zip(("query", "key", "value"), arrays):
        if array.ndim != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L or S, E), got shape {array.shape}")
    return arrays


def _past_length(L, S, kv_cache):
    """How many leading keys go in as the KV cache."""
    return S - L if kv_cache and S > L else 0


def _heads_last(array):
    """(B, H, L, E) -> (B, L, H E), the contrib operators' layout."""
    B, H, L, E = array.shape
    return np.ascontiguousarray(np.swapaxes(array, 1, 2).reshape(B, L, H * E))


def _heads_first(array, heads):
    """(B, L, H Ev) -> (B, H, L, Ev)."""
    B, L, width = array.shape
    return np.ascontiguousarray(np.swapaxes(array.reshape(B, L, heads, width // heads), 1, 2))


def _key_padding_mask(mask, B, L, S):
    """A bool mask (True = may attend) as MultiHeadAttention's int32
    ``key_padding_mask``: (B, S) when it is one row per batch entry, else
    (B, L, S); a mask with its own entries per head cannot be expressed."""
    full = np.broadcast_to(mask, np.broadcast_shapes(mask.shape, (1, 1, 1, S)))
    if full.ndim > 4 or full.shape[1] != 1:
        raise ValueError(f"MultiHeadAttention's key_padding_mask has no head dim; got a bool "
                         f"attn_mask of shape {mask.shape}")
    if full.shape[2] == 1:                                    # (B or 1, 1, 1, S): padding
        return np.ascontiguousarray(np.broadcast_to(full[:, 0, 0], (B, S)), dtype=np.int32)
    return np.ascontiguousarray(np.broadcast_to(full[:, 0], (B, L, S)), dtype=np.int32)


def _bias(mask, dtype, L, S):
    """A float mask as the contrib operators' ``attention_bias``
    (B or 1, H or 1, L, S), in the inputs' dtype."""
    mask = np.asarray(mask, dtype=dtype)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    return np.ascontiguousarray(np.broadcast_to(mask, mask.shape[:2] + (L, S)))


def _feed_types(feeds):
    """((name, dtype name), ...) of the feeds, the key of the model cache."""
    return tuple((name, np.asarray(array).dtype.name) for name, array in feeds.items())


def _attention_call(query, key, value, attn_mask, is_causal, scale, softcap, kv_cache):
    """(serialized model, feeds) of the opset-23 Attention call."""
    query, key, value = _four_dims(query, key, value)
    past = _past_length(query.shape[2], key.shape[2], kv_cache)
    feeds = {"Q": query, "K": np.ascontiguousarray(key[:, :, past:]),
             "V": np.ascontiguousarray(value[:, :, past:])}
    if attn_mask is not None:
        # ORT requires the mask's query dim to be L (it raises "inconsistent
        # q_sequence_length" for a (B, 1, 1, S) padding mask) though the
        # operator's schema lets it broadcast; give every dim but B and H in full
        attn_mask = np.asarray(attn_mask)
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.ndim) + attn_mask.shape)
        feeds["attn_mask"] = np.ascontiguousarray(np.broadcast_to(
            attn_mask, attn_mask.shape[:2] + (query.shape[2], key.shape[2])))
    if past:
        feeds["past_key"] = np.ascontiguousarray(key[:, :, :past])
        feeds["past_value"] = np.ascontiguousarray(value[:, :, :past])
    attributes = {"is_causal": int(bool(is_causal))}
    if scale is not None:
        attributes["scale"] = float(scale)
    if softcap is not None:
        attributes["softcap"] = float(softcap)
    model = _attention_model(_feed_types(feeds), tuple(sorted(attributes.items())))
    return model, feeds


@functools.lru_cache(maxsize=128)
def _attention_model(feed_types, attributes):
    """A serialized one-node model: ``Attention`` (opset 23) on the feeds,
    with ``present_key`` and ``present_value`` when a past is fed (ORT's
    CPU kernel requires them then)."""
    onnx = import_optional("onnx")
    helper = onnx.helper
    names = dict(feed_types)
    inputs = [name if name in names else "" for name in
              ("Q", "K", "V", "attn_mask", "past_key", "past_value")]
    while inputs[-1] == "":
        inputs.pop()
    outputs = ["Y", "present_key", "present_value"] if "past_key" in names else ["Y"]
    node = helper.make_node("Attention", inputs, outputs, **dict(attributes))
    return _serialized_model(onnx, node, feed_types, outputs, names["Q"],
                             [helper.make_opsetid("", OPSET)])


@functools.lru_cache(maxsize=128)
def _contrib_model(operator, feed_types, input_order, output_count, attributes_items=()):
    """A serialized one-node model of a ``com.microsoft`` operator; inputs
    in ``input_order`` that are not fed are left empty."""
    onnx = import_optional("onnx")
    helper = onnx.helper
    names = dict(feed_types)
    inputs = [name if name in names else "" for name in input_order]
    while inputs[-1] == "":
        inputs.pop()
    outputs = ["output", "present_key", "present_value"][:output_count]
    node = helper.make_node(operator, inputs, outputs, domain=CONTRIB_DOMAIN,
                            **dict(attributes_items))
    return _serialized_model(onnx, node, feed_types, outputs, names["query"],
                             [helper.make_opsetid("", OPSET),
                              helper.make_opsetid(CONTRIB_DOMAIN, 1)])


def _serialized_model(onnx, node, feed_types, outputs, output_dtype, opsets):
    helper = onnx.helper
    element = helper.np_dtype_to_tensor_dtype
    graph = helper.make_graph(
        [node], "attnref_conformance",
        [helper.make_tensor_value_info(name, element(_numpy_dtype(dtype)), None)
         for name, dtype in feed_types],
        [helper.make_tensor_value_info(name, element(_numpy_dtype(output_dtype)), None)
         for name in outputs])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="attnref")
    model.ir_version = 10          # ONNX Runtime 1.20+ reads IR 10, onnx 1.17+ writes it
    return model.SerializeToString()


def _numpy_dtype(name):
    if name == "bfloat16":
        return np.dtype(import_optional("ml_dtypes").bfloat16)
    return np.dtype(name)


@functools.lru_cache(maxsize=128)
def _session(model):
    onnxruntime = import_optional("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4     # failures come back as exceptions, not log lines
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=128)
def _reference_evaluator(model):
    onnx = import_optional("onnx")
    reference = importlib.import_module("onnx.reference")
    return reference.ReferenceEvaluator(onnx.load_from_string(model))


def _run_onnxruntime(model, feeds):
    return _session(model).run(None, feeds)[0]

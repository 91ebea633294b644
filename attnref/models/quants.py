"""Dequantisation of GGML tensor data (the blocks a GGUF file stores), in NumPy.

A GGML tensor's values run along its first ``ne`` dimension (NumPy's last
axis) in *blocks*: ``QK`` consecutive values stored in ``type_size`` bytes,
blocks back to back. Each block type below is a NumPy structured dtype whose
fields are the block's fields, in order, little-endian; dequantising is
arithmetic on those fields for all blocks at once (no Python loop over
blocks: the loop is over chunks of about :data:`CHUNK_VALUES` values, whose
temporaries stay in the CPU's cache; this chunking made dequantising twice as
fast as chunks of 1M values).

Layouts and formulas are those of ggml's ``dequantize_row_*`` in
``ggml/src/ggml-quants.c`` (block structs in ``ggml-common.h``), computed in
float32 in the same order as the ``gguf`` Python package's
``gguf/quants.py``, so the results are bit-identical to both. Notation: ``d``,
``m``, ``dmin`` are float16 scales converted to float32, ``q`` the stored
integers, ``y`` the output. K-quants are "super-blocks" of ``QK_K = 256``
values in sub-blocks of 16 or 32 that share a 4- or 6-bit scale.

=====  ===  ====  ==========================================================
type   QK   size  block fields -> values
=====  ===  ====  ==========================================================
F32    1    4     ``y = f32``
F16    1    2     ``y = float(f16)``
BF16   1    2     ``y = bits << 16`` reinterpreted as float32
Q8_0   32   34    ``d, int8 qs[32]``: ``y[i] = qs[i] * d``
Q4_0   32   18    ``d, u8 qs[16]``: ``y[i] = (qs[i] & 15) - 8``,
                  ``y[i+16] = (qs[i] >> 4) - 8``, times ``d``
Q4_1   32   20    ``d, m, u8 qs[16]``: nibbles as Q4_0 unsigned,
                  ``y = d * q + m``
Q5_0   32   22    ``d, u32 qh, u8 qs[16]``: ``q[i] = nibble | (bit i of qh) << 4``,
                  ``y = d * (q - 16)``
Q5_1   32   24    ``d, m, u32 qh, u8 qs[16]``: ``q`` as Q5_0, ``y = d * q + m``
Q2_K   256  84    ``u8 scales[16], u8 qs[64], d, dmin``: 16 sub-blocks of 16,
                  2-bit ``q``; ``y = (d * (sc & 15)) * q - dmin * (sc >> 4)``
Q3_K   256  110   ``u8 hmask[32], u8 qs[64], u8 scales[12], d``: 16 sub-blocks
                  of 16, 6-bit scales ``s``, 3-bit ``q = low2 - 4 * (1 - hbit)``;
                  ``y = (d * (s - 32)) * q``
Q4_K   256  144   ``d, dmin, u8 scales[12], u8 qs[128]``: 8 sub-blocks of 32,
                  6-bit scale ``sc`` and min ``mn``; ``y = (d * sc) * q - dmin * mn``
Q5_K   256  176   ``d, dmin, u8 scales[12], u8 qh[32], u8 qs[128]``: as Q4_K,
                  ``q = nibble | (bit s of qh) << 4`` for sub-block ``s``
Q6_K   256  210   ``u8 ql[128], u8 qh[64], int8 scales[16], d``: 16 sub-blocks
                  of 16, ``q = (nibble | 2 bits << 4) - 32``; ``y = (d * sc) * q``
=====  ===  ====  ==========================================================

Scales are taken from the file as they are: a float16 scale that is
infinite or NaN makes its block's values infinite or NaN, as in ggml.
"""
from __future__ import annotations

import numpy as np

__all__ = ["BLOCK_SIZES", "CHUNK_VALUES", "QK_K", "dequantize"]

#: Values in a K-quant super-block.
QK_K = 256
#: Values dequantised per NumPy pass (float32 temporaries of 512 KiB).
CHUNK_VALUES = 1 << 17

_F16 = "<f2"
_BLOCKS = {
    "F32": (1, np.dtype("<f4")),
    "F16": (1, np.dtype("<f2")),
    "BF16": (1, np.dtype("<u2")),
    "Q8_0": (32, np.dtype([("d", _F16), ("qs", "i1", 32)])),
    "Q4_0": (32, np.dtype([("d", _F16), ("qs", "u1", 16)])),
    "Q4_1": (32, np.dtype([("d", _F16), ("m", _F16), ("qs", "u1", 16)])),
    "Q5_0": (32, np.dtype([("d", _F16), ("qh", "<u4"), ("qs", "u1", 16)])),
    "Q5_1": (32, np.dtype([("d", _F16), ("m", _F16), ("qh", "<u4"), ("qs", "u1", 16)])),
    "Q2_K": (QK_K, np.dtype([("scales", "u1", 16), ("qs", "u1", 64), ("d", _F16),
                             ("dmin", _F16)])),
    "Q3_K": (QK_K, np.dtype([("hmask", "u1", 32), ("qs", "u1", 64), ("scales", "u1", 12),
                             ("d", _F16)])),
    "Q4_K": (QK_K, np.dtype([("d", _F16), ("dmin", _F16), ("scales", "u1", 12),
                             ("qs", "u1", 128)])),
    "Q5_K": (QK_K, np.dtype([("d", _F16), ("dmin", _F16), ("scales", "u1", 12),
                             ("qh", "u1", 32), ("qs", "u1", 128)])),
    "Q6_K": (QK_K, np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16),
                             ("d", _F16)])),
}
#: ``type name -> (values per block, bytes per block)`` of every type attnref reads.
BLOCK_SIZES = {name: (values, dtype.itemsize) for name, (values, dtype) in _BLOCKS.items()}

_NIBBLE_SHIFTS = np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
_CRUMB_SHIFTS = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
_BIT_SHIFTS_8 = np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
_BIT_SHIFTS_32 = np.arange(32, dtype=np.uint32)


def dequantize(raw, type_name):
    """The float32 values of GGML tensor data.

    Parameters
    ----------
    raw : numpy.ndarray
        1-D uint8: the tensor's bytes, a whole number of blocks of ``type_name``.
    type_name : str
        A key of :data:`BLOCK_SIZES`.

    Returns
    -------
    numpy.ndarray
        1-D float32 of ``len(raw) // type_size * QK`` values (a new array).

    Raises
    ------
    ValueError
        When ``type_name`` is not one attnref reads, or ``raw`` is not a whole
        number of its blocks.
    """
    if type_name not in _BLOCKS:
        raise ValueError(f"type_name must be one of {sorted(_BLOCKS)}, got {type_name!r}")
    values, block = _BLOCKS[type_name]
    if raw.ndim != 1 or raw.dtype != np.uint8 or raw.size % block.itemsize:
        raise ValueError(f"raw must be 1-D uint8 holding whole {type_name} blocks of "
                         f"{block.itemsize} bytes, got {raw.dtype} of shape {raw.shape}")
    count = raw.size // block.itemsize
    out = np.empty((count, values), np.float32)
    convert = _DEQUANTISERS[type_name]
    chunk = max(1, CHUNK_VALUES // values)
    # inf * 0 and NaN scales are the file's values; ggml propagates them silently too
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            blocks = raw[start * block.itemsize:stop * block.itemsize].view(block)
            out[start:stop] = convert(blocks).reshape(stop - start, values)
    return out.reshape(-1)


def _float(blocks):
    return blocks.astype(np.float32)


def _bf16(blocks):
    return (blocks.astype(np.uint32) << 16).view(np.float32)


def _scale(blocks, field):
    """A float16 field of every block as a float32 column, shape (n, 1)."""
    return blocks[field].astype(np.float32)[:, None]


def _nibbles(qs):
    """Low nibbles then high nibbles of each row of bytes: (n, k) -> (n, 2k)."""
    return ((qs[:, None, None, :] >> _NIBBLE_SHIFTS) & 15).reshape(len(qs), -1)


def _high_bits_32(qh):
    """Bit ``i`` of each uint32 as column ``i``: (n,) -> (n, 32) uint8."""
    return ((qh[:, None] >> _BIT_SHIFTS_32) & 1).astype(np.uint8)


def _q8_0(blocks):
    return blocks["qs"].astype(np.float32) * _scale(blocks, "d")


def _q4_0(blocks):
    q = _nibbles(blocks["qs"]).astype(np.int8) - np.int8(8)
    return _scale(blocks, "d") * q.astype(np.float32)


def _q4_1(blocks):
    q = _nibbles(blocks["qs"]).astype(np.float32)
    return _scale(blocks, "d") * q + _scale(blocks, "m")


def _q5(blocks):
    """The 5-bit values of Q5_0/Q5_1 blocks, 0..31: (n, 32) uint8."""
    return _nibbles(blocks["qs"]) | (_high_bits_32(blocks["qh"]) << np.uint8(4))


def _q5_0(blocks):
    q = _q5(blocks).astype(np.int8) - np.int8(16)
    return _scale(blocks, "d") * q.astype(np.float32)


def _q5_1(blocks):
    return _scale(blocks, "d") * _q5(blocks).astype(np.float32) + _scale(blocks, "m")


def _q2_k(blocks):
    n, scales = len(blocks), blocks["scales"]
    dl = (_scale(blocks, "d") * (scales & 15).astype(np.float32))[:, :, None]
    ml = (_scale(blocks, "dmin") * (scales >> 4).astype(np.float32))[:, :, None]
    # (n, half, shift, 32): bytes qs[32 * half + l], bits 2*shift..2*shift+1
    q = (blocks["qs"].reshape(n, 2, 1, 32) >> _CRUMB_SHIFTS) & 3
    return dl * q.reshape(n, 16, 16).astype(np.float32) - ml


def _q3_k_scales(scales):
    """The 16 signed 6-bit scales of Q3_K blocks: (n, 12) uint8 -> (n, 16) float32.

    Scale ``i``: low 4 bits from byte ``i % 8`` (low nibble for ``i < 8``,
    high nibble after), high 2 bits from byte ``8 + i % 4`` at bit ``2 * (i // 4)``;
    stored with an offset of 32.
    """
    n = len(scales)
    low = ((scales[:, None, :8] >> np.array([0, 4], np.uint8)[None, :, None]) & 15)
    high = ((scales[:, None, 8:] >> np.array([0, 2, 4, 6], np.uint8)[None, :, None]) & 3)
    unsigned = low.reshape(n, 16) | (high.reshape(n, 16) << np.uint8(4))
    return (unsigned.astype(np.int8) - np.int8(32)).astype(np.float32)


def _q3_k(blocks):
    n = len(blocks)
    dl = (_scale(blocks, "d") * _q3_k_scales(blocks["scales"]))[:, :, None]
    low = ((blocks["qs"].reshape(n, 2, 1, 32) >> _CRUMB_SHIFTS) & 3).reshape(n, 16, 16)
    # bit (4 * half + shift) of hmask[l]: set means no offset, clear means -4
    high = ((blocks["hmask"].reshape(n, 1, 1, 32) >> _BIT_SHIFTS_8) & 1).reshape(n, 16, 16)
    q = low.astype(np.int8) - ((high ^ np.uint8(1)) << np.uint8(2)).astype(np.int8)
    return dl * q.astype(np.float32)


def _k_scales_mins(scales):
    """The 8 scales and 8 mins (6-bit each) of Q4_K/Q5_K blocks, ggml's
    ``get_scale_min_k4``: (n, 12) uint8 -> two (n, 8) float32.

    Bytes 0-3 hold scales 0-3, bytes 4-7 mins 0-3 (low 6 bits each; their top
    2 bits are the high bits of scales and mins 4-7), bytes 8-11 the low
    nibbles of scales 4-7 (low) and mins 4-7 (high).
    """
    first, second, third = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([first & 63, (third & 15) | ((first >> 2) & 48)], axis=1)
    mn = np.concatenate([second & 63, (third >> 4) | ((second >> 2) & 48)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _k_nibbles(qs):
    """Q4_K/Q5_K low 4 bits: 64-value groups, low nibbles of 32 bytes then
    their high nibbles: (n, 128) -> (n, 8, 32)."""
    n = len(qs)
    return ((qs.reshape(n, 4, 1, 32) >> _NIBBLE_SHIFTS) & 15).reshape(n, 8, 32)


def _q4_k(blocks):
    sc, mn = _k_scales_mins(blocks["scales"])
    d = (_scale(blocks, "d") * sc)[:, :, None]
    dm = (_scale(blocks, "dmin") * mn)[:, :, None]
    return d * _k_nibbles(blocks["qs"]).astype(np.float32) - dm


def _q5_k(blocks):
    n = len(blocks)
    sc, mn = _k_scales_mins(blocks["scales"])
    d = (_scale(blocks, "d") * sc)[:, :, None]
    dm = (_scale(blocks, "dmin") * mn)[:, :, None]
    high = ((blocks["qh"].reshape(n, 1, 1, 32) >> _BIT_SHIFTS_8) & 1).reshape(n, 8, 32)
    q = _k_nibbles(blocks["qs"]) | (high << np.uint8(4))
    return d * q.astype(np.float32) - dm


def _q6_k(blocks):
    n = len(blocks)
    d = (_scale(blocks, "d") * blocks["scales"].astype(np.float32))[:, :, None]
    # 32-value groups 4 * half + k: low nibbles (k = 0, 1) then high nibbles (k = 2, 3)
    # of ql[64 * half + 32 * (k % 2) + l]; high 2 bits at bit 2k of qh[32 * half + l]
    low = ((blocks["ql"].reshape(n, 2, 1, 64) >> _NIBBLE_SHIFTS) & 15).reshape(n, 8, 32)
    high = ((blocks["qh"].reshape(n, 2, 1, 32) >> _CRUMB_SHIFTS) & 3).reshape(n, 8, 32)
    q = (low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)
    return d * q.reshape(n, 16, 16).astype(np.float32)


_DEQUANTISERS = {
    "F32": _float, "F16": _float, "BF16": _bf16, "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1,
    "Q5_0": _q5_0, "Q5_1": _q5_1, "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k,
    "Q5_K": _q5_k, "Q6_K": _q6_k,
}

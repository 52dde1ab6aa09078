"""The table of weight formats: every GGUF tensor type Ember reads, one entry each.

Owns: `Format`, `FORMATS` (by name), `BY_GGML_TYPE`, `QUANTIZED`, the per-format block readers
(`unpack`, LLVM IR) and NumPy references (`reference`). Imports: numpy, llvmlite, kernels._ir.
Used by: kernels.quant (the kernels are built from `unpack`), engine.gguf_file and
engine.loader (sizes, names), tests (the references).

A quantized matrix is stored as GGUF stores it: each row cut into blocks of `block_weights`
weights, `block_bytes` bytes each. An entry says how a block unpacks, twice: `unpack` emits LLVM
IR that turns the block at a pointer into its weights, 16 f32 lanes at a time, in order; and
`reference` does the same in NumPy for many blocks at once. The two compute every weight with
the same f32 operations in the same order, so they agree to the bit (a test checks it, and
checks `reference` against the `gguf` package's dequantizer, which is bit-exact with ggml's C
code, on blocks that llama.cpp's own quantizer wrote).

The legacy formats have 32-weight blocks; the K-quants have 256-weight super-blocks whose
16- or 32-weight sub-blocks carry their own scales (6 bits, packed); the IQ4 formats map 4-bit
codes through a fixed non-linear table. `unpack` yields 16 weights at a time. Layouts, in
block byte order (f16 scales are IEEE
halves; "nibbles" are the low 4 bits of bytes 0..15 for weights 0..15, the high 4 bits for
16..31, unless said otherwise):

    Q8_0    34  d, q[32] int8                                w = d * q
    Q4_0    18  d, nibbles[16]                               w = d * (n - 8)
    Q4_1    20  d, m, nibbles[16]                            w = d * n + m
    Q5_0    22  d, qh u32 (bit j: 5th bit of weight j), nibbles[16]     w = d * (q - 16)
    Q5_1    24  d, m, qh u32, nibbles[16]                    w = d * q + m
    IQ4_NL  18  d, nibbles[16]                               w = d * KVALUES[n]
    Q2_K    84  scales[16] (lo: scale, hi: min of 16 weights), qs[64] (2 bits), d, dmin
                w = (d * sc) * q - dmin * m
    Q3_K   110  hmask[32], qs[64] (2 bits), scales[12] (6 bits, 16 of them), d
                w = (d * (sc - 32)) * (q - (4 if the hmask bit is 0 else 0))
    Q4_K   144  d, dmin, scales[12] (6-bit scale and min of 8 sub-blocks of 32), qs[128]
                w = (d * sc) * q - dmin * m
    Q5_K   176  d, dmin, scales[12], qh[32] (5th bits), qs[128]    as Q4_K with 5-bit q
    Q6_K   210  ql[128], qh[64], scales[16] int8, d      w = (d * sc) * (q - 32), q 6 bits
    IQ4_XS 136  d, scales_h u16, scales_l[4], qs[128]    w = (d * (ls - 32)) * KVALUES[n]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba.core import cgutils

from kernels._ir import F32, HAS_PSHUFB, I8, I16, I32, I64, fmuladd, half_to_float, splat

KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)  # IQ4 codes

LANES = 16  # weights per unpacked part: one 16-lane vector (two 8-lane halves on AVX2)
VF, VI, VB = ir.VectorType(F32, LANES), ir.VectorType(I32, LANES), ir.VectorType(I8, LANES)
V8F, V8I32 = ir.VectorType(F32, 8), ir.VectorType(I32, 8)


@dataclass(frozen=True)
class Format:
    name: str
    ggml_type: int  # the tensor type id in GGUF files
    block_weights: int  # 1 for float tensors
    block_bytes: int
    reference: Callable[[np.ndarray], np.ndarray]  # (n, block_bytes) uint8 -> (n, block_weights) f32
    unpack: Callable[[Block], Iterator] | None = None  # None: a float type, widened at load
    # weight rows one x row is multiplied with at once: independent accumulators hide the
    # latency of each one's chain of fmuladds, as long as the unpacking does not spill
    # (measured per format, one row, in process: see bench/RESULTS.md)
    out_group: int = 1

    def dequantize(self, data: np.ndarray) -> np.ndarray:
        """The f32 values of a matrix (rows, row bytes) of this format, as (rows, in_features)."""
        rows = data.shape[0]
        blocks = np.ascontiguousarray(data).reshape(-1, self.block_bytes)
        return self.reference(blocks).reshape(rows, -1)


class Block:
    """IR helpers reading one block at i8* `ptr`: bytes, halves and words at byte offsets, and
    16-lane vectors (the parts an `unpack` yields)."""

    def __init__(self, builder: ir.IRBuilder, ptr):
        self.b, self.ptr = builder, ptr

    def at(self, offset: int, ty):
        return self.b.bitcast(self.b.gep(self.ptr, [ir.Constant(I64, offset)]), ty.as_pointer())

    def bytes(self, offset: int, n: int = LANES, signed: bool = False):
        """Bytes offset..offset+n-1 as <n x i32> (sign- or zero-extended)."""
        raw = self.b.load(self.at(offset, ir.VectorType(I8, n)), align=1)
        return (self.b.sext if signed else self.b.zext)(raw, ir.VectorType(I32, n))

    def nibbles(self, offset: int, high: bool):
        """The low (or high) 4 bits of the 16 bytes at offset, as <16 x i32>."""
        q = self.bytes(offset)
        return self.b.lshr(q, vi(4)) if high else self.b.and_(q, vi(15))

    def byte(self, offset: int):
        return self.b.zext(self.b.load(self.at(offset, I8), align=1), I32)

    def word(self, offset: int, ty=I32):
        """A little-endian u16 or u32 at offset, as i32."""
        v = self.b.load(self.at(offset, ty), align=1)
        return self.b.zext(v, I32) if ty is I16 else v

    def half(self, offset: int):
        return half_to_float(self.b, self.b.gep(self.ptr, [ir.Constant(I64, offset)]))

    def halves2(self, offset: int):
        """Two halves at offset (d and m, or d and dmin) with one 4-byte load: a 2-byte scalar
        load would be an insert into a live register, which ties each block to the previous
        one's accumulators."""
        pair = half_to_float(self.b, self.b.gep(self.ptr, [ir.Constant(I64, offset)]), 2)
        return [self.b.extract_element(pair, ir.Constant(I32, k)) for k in (0, 1)]

    # scalar integer arithmetic on i32 values
    def shr(self, v, n: int):
        return self.b.lshr(v, ir.Constant(I32, n)) if n else v

    def mask(self, v, m: int):
        return self.b.and_(v, ir.Constant(I32, m))

    def f(self, v_i32, signed: bool = True):
        return (self.b.sitofp if signed else self.b.uitofp)(v_i32, F32)

    # vectors
    def splat(self, x, ty=VF):
        return splat(self.b, x, ty)

    def f_vec(self, q, signed: bool = True):
        """An integer vector as floats (as many lanes)."""
        return (self.b.sitofp if signed else self.b.uitofp)(q, ir.VectorType(F32, q.type.count))

    def lanes(self, v, idx):
        """The 16-lane vector of v's lanes idx (sixteen lane numbers, or one for all)."""
        idx = [idx] * LANES if isinstance(idx, int) else list(idx)
        return self.b.shuffle_vector(v, ir.Constant(v.type, None), ir.Constant(ir.VectorType(I32, len(idx)), idx))

    def scale(self, q, d, m=None, signed: bool = True, sub: bool = True):
        """float(q) * d, then - m (or + m with sub False), d and m scalars broadcast: with m,
        one fmuladd. Every format's d * q is exact in f32 (at most 22 significant bits), so the
        fused form rounds as the reference's multiply-then-add does: once, at the add."""
        w = self.f_vec(q, signed)
        if m is None:
            return self.b.fmul(w, self.splat(d))
        return fmuladd(self.b, w, self.splat(d), self.splat(self.b.fneg(m) if sub else m))


def vi(values, n: int = LANES) -> ir.Constant:
    """An <n x i32> constant, from one value or n."""
    return ir.Constant(ir.VectorType(I32, n), list(values) if not isinstance(values, int) else [values] * n)


# ---------------------------------------------------------------- legacy 32-weight blocks


def _unpack_q8_0(r: Block):
    d = r.splat(r.halves2(0)[0])
    for offset in (2, 18):
        yield r.b.fmul(r.f_vec(r.bytes(offset, signed=True)), d)


def _unpack_q4_0(r: Block):
    d = r.splat(r.halves2(0)[0])
    for high in (False, True):
        yield r.b.fmul(r.f_vec(r.b.sub(r.nibbles(2, high), vi(8))), d)


def _unpack_q4_1(r: Block):
    d, m = r.halves2(0)
    for high in (False, True):
        yield r.scale(r.nibbles(4, high), d, m, signed=False, sub=False)


def _q5_bits(r: Block, qh_offset: int, qs_offset: int, p: int):
    """The 5-bit codes of weights 16p..16p+15 of a Q5_0 / Q5_1 block, as <16 x i32>."""
    low = r.nibbles(qs_offset, high=p == 1)
    qh = r.b.lshr(splat(r.b, r.word(qh_offset), VI), vi(range(16 * p, 16 * p + 16)))
    return r.b.or_(low, r.b.shl(r.b.and_(qh, vi(1)), vi(4)))


def _unpack_q5_0(r: Block):
    d = r.halves2(0)[0]
    for p in range(2):
        yield r.scale(r.b.sub(_q5_bits(r, 2, 6, p), vi(16)), d)


def _unpack_q5_1(r: Block):
    d, m = r.halves2(0)
    for p in range(2):
        yield r.scale(_q5_bits(r, 4, 8, p), d, m, signed=False, sub=False)


def _kvalues32(r: Block, offset: int):
    """The 32 IQ4 weights (before their scale) coded in the 16 bytes at offset, as two
    <16 x float>: KVALUES of the low nibbles, then of the high ones. Each half's 16 codes are
    looked up with one byte shuffle where the CPU has one, else lane by lane from a table."""
    b = r.b
    raw = b.load(r.at(offset, VB), align=1)
    halves = [b.and_(raw, ir.Constant(VB, [15] * 16)), b.lshr(raw, ir.Constant(VB, [4] * 16))]
    if HAS_PSHUFB:
        fn = cgutils.get_or_insert_function(b.module, ir.FunctionType(VB, [VB, VB]),
                                            "llvm.x86.ssse3.pshuf.b.128")
        table = ir.Constant(VB, [v & 0xFF for v in KVALUES])
        for codes in halves:
            yield b.sitofp(b.call(fn, [table, codes]), VF)
        return
    table = cgutils.global_constant(b.module, "ember_iq4_kvalues",
                                    ir.Constant(ir.ArrayType(F32, 16), [float(v) for v in KVALUES]))
    for codes in halves:
        out = ir.Constant(VF, None)
        for lane in range(LANES):
            k = b.zext(b.extract_element(codes, ir.Constant(I32, lane)), I32)
            out = b.insert_element(out, b.load(b.gep(table, [ir.Constant(I32, 0), k])), ir.Constant(I32, lane))
        yield out


def _unpack_iq4_nl(r: Block):
    d = r.splat(r.halves2(0)[0])
    for kv in _kvalues32(r, 2):
        yield r.b.fmul(kv, d)


# ---------------------------------------------------------------- K-quants: 256-weight super-blocks
# Their sub-block scales are decoded as vectors once per super-block (a few vector operations
# instead of a dozen scalar ones per sub-block), then broadcast lane by lane.


def _scales_mins_k4(r: Block, base: int):
    """The 8 (scale, min) pairs of a Q4_K / Q5_K block, 6 bits each, as two <8 x i32>, from its
    12 scale bytes at base: sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7
    (mins), 4-7 in the nibbles of bytes 8-11 with their top 2 bits in the top bits of bytes 0-7."""
    b = r.b
    low8 = r.bytes(base, 8)
    top = r.lanes(r.bytes(base + 8, 4), [0, 1, 2, 3] * 2)
    first = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * 4 + [0] * 4)
    out = []
    for half, packed_bits in ((range(4), b.and_(top, vi(15, 8))), (range(4, 8), b.lshr(top, vi(4, 8)))):
        own = r.lanes(low8, [*half, *half])  # sub-blocks 0-3 read these bytes' low 6 bits
        upper = b.shl(b.lshr(own, vi(6, 8)), vi(4, 8))
        out.append(b.select(first, b.and_(own, vi(63, 8)), b.or_(packed_bits, upper)))
    return out


def _unpack_q4_k(r: Block, qh: int | None = None, qs: int = 16):
    d, dmin = r.halves2(0)
    sc, m = _scales_mins_k4(r, 4)
    dks = r.b.fmul(r.splat(d, V8F), r.f_vec(sc, signed=False))  # d * scale of each sub-block
    minus_mks = r.b.fneg(r.b.fmul(r.splat(dmin, V8F), r.f_vec(m, signed=False)))  # -(dmin * min)
    for k in range(8):  # sub-blocks of 32: low nibbles of qs[32c:32c+32], then high (c = k // 2)
        dk, minus_mk = r.lanes(dks, k), r.lanes(minus_mks, k)
        for p in range(2):
            q = r.nibbles(qs + 32 * (k // 2) + 16 * p, high=k % 2 == 1)
            if qh is not None:  # Q5_K: bit k of qh[l] is weight l's fifth bit
                high = r.b.and_(r.b.lshr(r.bytes(qh + 16 * p), vi(k)), vi(1))
                q = r.b.or_(q, r.b.shl(high, vi(4)))
            yield fmuladd(r.b, r.f_vec(q, signed=False), dk, minus_mk)  # exact product: see `scale`


def _unpack_q5_k(r: Block):
    yield from _unpack_q4_k(r, qh=16, qs=48)


def _unpack_q6_k(r: Block):
    d = r.splat(r.half(208), V8F)
    dscs = [r.b.fmul(d, r.f_vec(r.bytes(192 + 8 * g, 8, signed=True))) for g in range(2)]  # d * sc
    for p in range(16):  # weight i = 128 h + 32 j + l: ql[64 h + 32 (j % 2) + l] nibble j // 2,
        i = 16 * p       # qh[32 h + l] bits 2j..2j+1; its scale: i // 16 = p
        h, j, l0 = i // 128, (i % 128) // 32, i % 32
        low = r.nibbles(64 * h + 32 * (j % 2) + l0, high=j >= 2)
        top = r.b.and_(r.b.lshr(r.bytes(128 + 32 * h + l0), vi(2 * j)), vi(3))
        q = r.b.sub(r.b.or_(low, r.b.shl(top, vi(4))), vi(32))
        yield r.b.fmul(r.f_vec(q), r.lanes(dscs[p // 8], p % 8))


def _unpack_q3_k(r: Block):
    d = r.splat(r.half(108), V8F)
    # the 16 scales, 6 bits each: the low 4 in the nibbles of scales[0:8] (0-7 low, 8-15 high),
    # the top 2 in scales[8:12] (scale i: byte 8 + i % 4, bits 2 (i // 4))
    lo = r.bytes(96, 8)
    top = r.lanes(r.bytes(104, 4), [0, 1, 2, 3] * 2)
    dls = []
    for low_bits, shifts in ((r.b.and_(lo, vi(15, 8)), [0] * 4 + [2] * 4), (r.b.lshr(lo, vi(4, 8)), [4] * 4 + [6] * 4)):
        high = r.b.shl(r.b.and_(r.b.lshr(top, vi(shifts, 8)), vi(3, 8)), vi(4, 8))
        dls.append(r.b.fmul(d, r.f_vec(r.b.sub(r.b.or_(low_bits, high), vi(32, 8)))))  # d * (sc - 32)
    for p in range(16):  # weight i = 128 h + 32 s + l: qs[32 h + l] bits 2s, hmask[l] bit i // 32
        i = 16 * p
        h, s, l0 = i // 128, (i % 128) // 32, i % 32
        low = r.b.and_(r.b.lshr(r.bytes(32 + 32 * h + l0), vi(2 * s)), vi(3))
        hbit = r.b.and_(r.b.lshr(r.bytes(l0), vi(i // 32)), vi(1))
        q = r.b.sub(low, r.b.shl(r.b.xor(hbit, vi(1)), vi(2)))
        yield r.b.fmul(r.f_vec(q), r.lanes(dls[p // 8], p % 8))


def _unpack_q2_k(r: Block):
    d, dmin = (r.splat(v, V8F) for v in r.halves2(80))
    packed = [r.bytes(8 * g, 8) for g in range(2)]  # scales[16]: low nibble scale, high nibble min
    dls = [r.b.fmul(d, r.f_vec(r.b.and_(v, vi(15, 8)), signed=False)) for v in packed]
    minus_mls = [r.b.fneg(r.b.fmul(dmin, r.f_vec(r.b.lshr(v, vi(4, 8)), signed=False))) for v in packed]
    for p in range(16):  # weight i = 128 h + 32 s + l: qs[32 h + l] bits 2s; its scale: p
        i = 16 * p
        h, s, l0 = i // 128, (i % 128) // 32, i % 32
        q = r.b.and_(r.b.lshr(r.bytes(16 + 32 * h + l0), vi(2 * s)), vi(3))
        yield fmuladd(r.b, r.f_vec(q, signed=False), r.lanes(dls[p // 8], p % 8),
                      r.lanes(minus_mls[p // 8], p % 8))


def _unpack_iq4_xs(r: Block):
    d = r.half(0)
    scales_h = r.word(2, I16)
    for b in range(8):  # sub-blocks of 32: codes in qs[16b:16b+16], low nibbles then high
        lo = r.mask(r.shr(r.byte(4 + b // 2), 4 * (b % 2)), 15)
        hi = r.mask(r.shr(scales_h, 2 * b), 3)
        ls = r.b.sub(r.b.or_(lo, r.b.shl(hi, ir.Constant(I32, 4))), ir.Constant(I32, 32))
        dl = r.splat(r.b.fmul(d, r.f(ls)))
        for kv in _kvalues32(r, 8 + 16 * b):
            yield r.b.fmul(kv, dl)


# ---------------------------------------------------------------- NumPy references


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """(n, 1) f32 of the half at byte offset of each block."""
    return blocks[:, offset:offset + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., 16) bytes -> (..., 32) codes: the low nibbles, then the high ones."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _bits(v: np.ndarray, shifts, width: int) -> np.ndarray:
    """v (..., m) -> (..., len(shifts), m): (v >> s) & (2**width - 1) for each shift s."""
    return (v[..., None, :] >> np.asarray(shifts, v.dtype)[:, None]) & np.asarray(2**width - 1, v.dtype)


def _ref_q8_0(b):
    return _f16(b, 0) * b[:, 2:].view(np.int8).astype(np.float32)


def _ref_q4_0(b):
    return _f16(b, 0) * (_nibbles(b[:, 2:]).astype(np.float32) - 8)


def _ref_q4_1(b):
    return _f16(b, 0) * _nibbles(b[:, 4:]).astype(np.float32) + _f16(b, 2)


def _q5_codes(b, qh_offset):
    qh = b[:, qh_offset:qh_offset + 4].copy().view(np.uint32)  # (n, 1)
    high = (qh >> np.arange(32, dtype=np.uint32)) & 1
    return _nibbles(b[:, qh_offset + 4:]) | (high.astype(np.uint8) << 4)


def _ref_q5_0(b):
    return _f16(b, 0) * (_q5_codes(b, 2).astype(np.float32) - 16)


def _ref_q5_1(b):
    return _f16(b, 0) * _q5_codes(b, 4).astype(np.float32) + _f16(b, 2)


def _ref_iq4_nl(b):
    return _f16(b, 0) * np.asarray(KVALUES, np.float32)[_nibbles(b[:, 2:])]


def _scale_min_k4_ref(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed bytes -> (n, 8) scales and (n, 8) mins (see `_scales_mins_k4`)."""
    lo_sc, lo_m, packed = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo_sc & 63, (packed & 15) | ((lo_sc >> 6) << 4)], axis=1)
    m = np.concatenate([lo_m & 63, (packed >> 4) | ((lo_m >> 6) << 4)], axis=1)
    return sc.astype(np.float32), m.astype(np.float32)


def _ref_q4_k(b, q=None):
    n = len(b)
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, m = _scale_min_k4_ref(b[:, 4:16])
    if q is None:  # (n, 4, 32) bytes -> sub-block 2c low nibbles, 2c + 1 high
        q = _bits(b[:, 16:144].reshape(n, 4, 1, 32)[:, :, 0], [0, 4], 4).reshape(n, 8, 32)
    out = (d * sc)[..., None] * q.astype(np.float32) - (dmin * m)[..., None]
    return out.reshape(n, 256)


def _ref_q5_k(b):
    n = len(b)
    low = _bits(b[:, 48:176].reshape(n, 4, 32), [0, 4], 4).reshape(n, 8, 32)
    high = _bits(b[:, 16:48], range(8), 1)  # (n, 8, 32): bit k of qh[l]
    return _ref_q4_k(b, low | (high << 4))


def _ref_q6_k(b):
    n = len(b)
    low = _bits(b[:, 0:128].reshape(n, 2, 64), [0, 4], 4).reshape(n, 2, 4, 32)  # (h, j, l)
    top = _bits(b[:, 128:192].reshape(n, 2, 32), [0, 2, 4, 6], 2)  # (h, j, l)
    q = ((low | (top << 4)).astype(np.int8) - 32).astype(np.float32).reshape(n, 16, 16)
    dsc = _f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32)  # (n, 16)
    return (dsc[..., None] * q).reshape(n, 256)


def _ref_q3_k(b):
    n = len(b)
    low = _bits(b[:, 32:96].reshape(n, 2, 32), [0, 2, 4, 6], 2).reshape(n, 8, 32)  # (h s, l)
    hbit = _bits(b[:, 0:32], range(8), 1)  # (n, 8, 32): bit i // 32 of hmask[i % 32]
    q = (low.astype(np.int8) - ((hbit ^ 1) << 2).astype(np.int8)).astype(np.float32)
    s = b[:, 96:108]
    lo = _bits(s[:, 0:8], [0, 4], 4).reshape(n, 16)
    hi = _bits(s[:, 8:12], [0, 2, 4, 6], 2).reshape(n, 16)
    sc = ((lo | (hi << 4)).astype(np.int8) - 32).astype(np.float32)
    return ((_f16(b, 108) * sc)[..., None] * q.reshape(n, 16, 16)).reshape(n, 256)


def _ref_q2_k(b):
    n = len(b)
    s = b[:, 0:16]
    dl = _f16(b, 80) * (s & 15).astype(np.float32)
    ml = _f16(b, 82) * (s >> 4).astype(np.float32)
    q = _bits(b[:, 16:80].reshape(n, 2, 32), [0, 2, 4, 6], 2).astype(np.float32).reshape(n, 16, 16)
    return (dl[..., None] * q - ml[..., None]).reshape(n, 256)


def _ref_iq4_xs(b):
    n = len(b)
    scales_h = b[:, 2:4].copy().view(np.uint16)  # (n, 1)
    lo = _bits(b[:, 4:8], [0, 4], 4).transpose(0, 2, 1).reshape(n, 8)  # sub-block 2j + nibble
    hi = ((scales_h >> (2 * np.arange(8, dtype=np.uint16))) & 3).astype(np.uint8)
    dl = _f16(b, 0) * ((lo | (hi << 4)).astype(np.int8) - 32).astype(np.float32)
    codes = _nibbles(b[:, 8:136].reshape(n, 8, 16))
    return (dl[..., None] * np.asarray(KVALUES, np.float32)[codes]).reshape(n, 256)


def _ref_f32(b):
    return b.view(np.float32)


def _ref_f16(b):
    return b.view(np.float16).astype(np.float32)


def _ref_bf16(b):
    return (b.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


_ENTRIES = [
    Format("F32", 0, 1, 4, _ref_f32), Format("F16", 1, 1, 2, _ref_f16),
    Format("BF16", 30, 1, 2, _ref_bf16),
    Format("Q8_0", 8, 32, 34, _ref_q8_0, _unpack_q8_0, 4),
    Format("Q4_0", 2, 32, 18, _ref_q4_0, _unpack_q4_0, 4),
    Format("Q4_1", 3, 32, 20, _ref_q4_1, _unpack_q4_1, 4),
    Format("Q5_0", 6, 32, 22, _ref_q5_0, _unpack_q5_0, 4),
    Format("Q5_1", 7, 32, 24, _ref_q5_1, _unpack_q5_1, 4),
    Format("IQ4_NL", 20, 32, 18, _ref_iq4_nl, _unpack_iq4_nl, 4),
    Format("Q2_K", 10, 256, 84, _ref_q2_k, _unpack_q2_k, 1),
    Format("Q3_K", 11, 256, 110, _ref_q3_k, _unpack_q3_k, 1),
    Format("Q4_K", 12, 256, 144, _ref_q4_k, _unpack_q4_k, 2),
    Format("Q5_K", 13, 256, 176, _ref_q5_k, _unpack_q5_k, 2),
    Format("Q6_K", 14, 256, 210, _ref_q6_k, _unpack_q6_k, 1),
    Format("IQ4_XS", 23, 256, 136, _ref_iq4_xs, _unpack_iq4_xs, 1),
]
FORMATS: dict[str, Format] = {f.name: f for f in _ENTRIES}
BY_GGML_TYPE: dict[int, Format] = {f.ggml_type: f for f in _ENTRIES}
QUANTIZED: tuple[str, ...] = tuple(f.name for f in _ENTRIES if f.unpack is not None)

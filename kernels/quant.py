"""Block-quantized matrices (GGUF Q4_0, Q4_1, Q8_0) read in place, never expanded at load.

Owns: `QK`, `BLOCK_BYTES`, `FORMATS`, `format_code`, `block_dots`, `qmatmul_rows`,
`dequantize_rows`, `dequantize_ref`, `quantize_q8_0`.
Imports: numpy, numba, llvmlite, kernels._ir, kernels._jit. Used by: engine.weights (`linear`, embeddings),
engine.loader (`quantize_q8_0`), kernels.matmul (`block_dots` on f32 weights).

A quantized matrix is a uint8 array (out_features, in_features / 32 * block bytes): each row is
its in_features cut in blocks of QK = 32 weights, laid out exactly as in a GGUF file:

    Q8_0  34 bytes: d (f16), q[32] int8              w[j] = d * q[j]
    Q4_0  18 bytes: d (f16), qs[16] (two nibbles)    w[j] = d * (nibble[j] - 8)
    Q4_1  20 bytes: d (f16), m (f16), qs[16]         w[j] = d * nibble[j] + m

with nibble[j] = qs[j] & 15 and nibble[j + 16] = qs[j] >> 4.

The inner loop is written in LLVM IR (a numba `intrinsic`), because numba's loop vectorizer does
not handle 16-element blocks with a scale between them: it fully unrolls them and then vectorizes
across blocks with gathers, 5-10x slower than this. Per block the IR widens the quant bytes 8
at a time straight from memory to 32-bit lanes, converts them to 32 floats and scales them
(w = d * q + m in one fmuladd: the same values `dequantize_rows` writes), then each x row adds
w * x into its two 8-lane accumulators.
Every operation is explicit (fmuladd, a fixed halving tree for the final sum; no fast-math
flags), so each output element has one rounding sequence, whatever the number of rows.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels._ir import (F32, I8, I32, I64, check_arrays, fmuladd, half_to_float, hsum, prefetch,
                         splat)
from kernels._jit import jit

QK = 32  # weights per block, all three formats
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
FORMATS = tuple(BLOCK_BYTES)
_CODE = {"Q8_0": 0, "Q4_0": 1, "Q4_1": 2}  # the kernels take the format as a small int

_V8F, _V8I8, _V8I32 = ir.VectorType(F32, 8), ir.VectorType(I8, 8), ir.VectorType(I32, 8)


def _unpack_block(builder, fmt, blk):
    """One block at i8* blk -> four <8 x float>: the weights that multiply x[0:8], x[8:16],
    x[16:24], x[24:32]. Quant bytes are widened 8 at a time straight from memory (one
    zero/sign-extending load each), then split into nibbles as 32-bit lanes."""
    def load8(offset, extend):
        ptr = builder.bitcast(builder.gep(blk, [ir.Constant(I64, offset)]), _V8I8.as_pointer())
        return extend(builder.load(ptr, align=1), _V8I32)

    # d (and m for Q4_1) with one 4-byte load: a 2-byte scalar load would be an insert into a
    # live register, which ties each block to the previous one's accumulators
    dm = half_to_float(builder, blk, 2)
    d, m = (splat(builder, builder.extract_element(dm, ir.Constant(I32, k)), _V8F) for k in (0, 1))
    if fmt == "Q8_0":
        return [builder.fmul(builder.sitofp(load8(offset, builder.sext), _V8F), d) for offset in (2, 10, 18, 26)]
    first = 4 if fmt == "Q4_1" else 2
    bytes_ = [load8(first, builder.zext), load8(first + 8, builder.zext)]
    nibbles = [builder.and_(q, ir.Constant(_V8I32, [15] * 8)) for q in bytes_] + \
              [builder.lshr(q, ir.Constant(_V8I32, [4] * 8)) for q in bytes_]
    if fmt == "Q4_1":
        return [fmuladd(builder, builder.uitofp(q, _V8F), d, m) for q in nibbles]
    eight = ir.Constant(_V8I32, [8] * 8)
    return [builder.fmul(builder.sitofp(builder.sub(q, eight), _V8F), d) for q in nibbles]


PREFETCH_ROWS = 4  # decode (one row) over the default model's blocks: 0.92-0.98x the time


def block_dots(fmt: str, n_rows: int, n_outs: int = 1):
    """An intrinsic dots(w, o, x, r0, out): out[r0 + i, o + j] = w[o + j] . x[r0 + i] for
    i < n_rows, j < n_outs. w is uint8 blocks of format fmt, or "F32": f32 weights (in_features a
    multiple of 8). Arrays must be C-contiguous f32 (blocks: uint8), checked at compile time.

    Each output element has two <8 x float> accumulators: x[0:8], x[16:24], x[32:40]... go into
    the first, x[8:16], x[24:32]... into the second, in order, whatever the tile shape; the sum
    at the end adds them lane by lane, then halves. So every tile shape rounds an element
    identically, and f32 weights equal to a quantized matrix's dequantized values give
    bit-identical results to the blocks themselves."""
    quantized = fmt != "F32"
    step = QK if quantized else 16  # weights per loop iteration

    def codegen(context, builder, sig, args):
        w_t, _, x_t, _, out_t = sig.args
        w_arr = context.make_array(w_t)(context, builder, args[0])
        x_arr = context.make_array(x_t)(context, builder, args[2])
        out_arr = context.make_array(out_t)(context, builder, args[4])
        o, r0 = args[1], args[3]
        k_dim = builder.extract_value(x_arr.shape, 1)
        n_out = builder.extract_value(out_arr.shape, 1)
        n_steps = builder.sdiv(k_dim, ir.Constant(I64, step))
        outs = [builder.add(o, ir.Constant(I64, j)) for j in range(n_outs)]
        if quantized:
            row_bytes = builder.mul(n_steps, ir.Constant(I64, BLOCK_BYTES[fmt]))
            w_rows = [builder.gep(builder.bitcast(w_arr.data, I8.as_pointer()), [builder.mul(oj, row_bytes)])
                      for oj in outs]
        else:
            w_rows = [builder.gep(w_arr.data, [builder.mul(oj, k_dim)]) for oj in outs]

        def weights(w_row, b):  # the <8 x float> parts of loop iteration b of one weight row
            if quantized:
                return _unpack_block(builder, fmt, builder.gep(w_row, [builder.mul(b, ir.Constant(I64, BLOCK_BYTES[fmt]))]))
            first = builder.gep(w_row, [builder.mul(b, ir.Constant(I64, step))])
            return [builder.load(builder.bitcast(builder.gep(first, [ir.Constant(I64, 8 * p)]), _V8F.as_pointer()),
                                 align=4) for p in range(2)]

        x_rows = [builder.gep(x_arr.data, [builder.mul(builder.add(r0, ir.Constant(I64, i)), k_dim)])
                  for i in range(n_rows)]
        tile = [(j, i) for j in range(n_outs) for i in range(n_rows)]

        # for b in range(n_steps): unpack step b of each weight row once, then for each x row
        # one fmuladd per part, the parts alternating between the element's two accumulators
        entry = builder.block
        loop = builder.append_basic_block("blocks")
        done = builder.append_basic_block("blocks_done")
        zero = ir.Constant(_V8F, [0.0] * 8)
        builder.cbranch(builder.icmp_signed(">", n_steps, ir.Constant(I64, 0)), loop, done)

        builder.position_at_end(loop)
        b = builder.phi(I64)
        accs = {e: [builder.phi(_V8F), builder.phi(_V8F)] for e in tile}
        if quantized:  # the same block PREFETCH_ROWS rows on, which this thread reads next
            ahead = builder.add(builder.mul(ir.Constant(I64, PREFETCH_ROWS), row_bytes),
                                builder.mul(b, ir.Constant(I64, BLOCK_BYTES[fmt])))
            for w_row in w_rows:
                prefetch(builder, builder.gep(w_row, [ahead]))
        new_accs = {}
        for j in range(n_outs):
            parts = weights(w_rows[j], b)
            for i in range(n_rows):
                x_step = builder.gep(x_rows[i], [builder.mul(b, ir.Constant(I64, step))])
                acc = list(accs[j, i])
                for p, w_part in enumerate(parts):
                    x_part = builder.gep(x_step, [ir.Constant(I64, 8 * p)])
                    xv = builder.load(builder.bitcast(x_part, _V8F.as_pointer()), align=4)
                    acc[p % 2] = fmuladd(builder, w_part, xv, acc[p % 2])
                new_accs[j, i] = acc
        b_next = builder.add(b, ir.Constant(I64, 1))
        body_end = builder.block
        b.add_incoming(ir.Constant(I64, 0), entry)
        b.add_incoming(b_next, body_end)
        for e in tile:
            for acc, new in zip(accs[e], new_accs[e]):
                acc.add_incoming(zero, entry)
                acc.add_incoming(new, body_end)
        builder.cbranch(builder.icmp_signed("<", b_next, n_steps), loop, done)

        builder.position_at_end(done)
        finals = {}
        for e in tile:  # all phis first, then the sums
            pair = []
            for new in new_accs[e]:
                acc = builder.phi(_V8F)
                acc.add_incoming(zero, entry)
                acc.add_incoming(new, body_end)
                pair.append(acc)
            finals[e] = pair
        if not quantized:  # in_features = 16 n + 8: the last 8 go into the first accumulator
            tail = builder.append_basic_block("tail")
            summed = builder.append_basic_block("sums")
            k_tail = builder.mul(n_steps, ir.Constant(I64, step))
            builder.cbranch(builder.icmp_signed("<", k_tail, k_dim), tail, summed)
            before = builder.block
            builder.position_at_end(tail)
            with_tail = {}
            for j, i in tile:
                wv = builder.load(builder.bitcast(builder.gep(w_rows[j], [k_tail]), _V8F.as_pointer()), align=4)
                xv = builder.load(builder.bitcast(builder.gep(x_rows[i], [k_tail]), _V8F.as_pointer()), align=4)
                with_tail[j, i] = fmuladd(builder, wv, xv, finals[j, i][0])
            builder.branch(summed)
            builder.position_at_end(summed)
            for e in tile:
                acc = builder.phi(_V8F)
                acc.add_incoming(finals[e][0], before)
                acc.add_incoming(with_tail[e], tail)
                finals[e] = [acc, finals[e][1]]
        for j, i in tile:
            total = hsum(builder, builder.fadd(*finals[j, i]))
            r = builder.add(r0, ir.Constant(I64, i))
            builder.store(total, builder.gep(out_arr.data, [builder.add(builder.mul(r, n_out), outs[j])]))
        return context.get_dummy_value()

    @intrinsic
    def dots(typingctx, w, o, x, r0, out):
        check_arrays((w, types.uint8 if quantized else types.float32), (x, types.float32), (out, types.float32))
        return types.void(w, o, x, r0, out), codegen

    return dots


def _make_dequantize(fmt: str):
    """An intrinsic deq(w, o, out, i): out[i] = the dequantized weights of row o of w."""
    bbytes = BLOCK_BYTES[fmt]

    def codegen(context, builder, sig, args):
        w_t, _, out_t, _ = sig.args
        w_arr = context.make_array(w_t)(context, builder, args[0])
        out_arr = context.make_array(out_t)(context, builder, args[2])
        o, i = args[1], args[3]
        k_dim = builder.extract_value(out_arr.shape, 1)
        n_blocks = builder.sdiv(k_dim, ir.Constant(I64, QK))
        w_row = builder.gep(builder.bitcast(w_arr.data, I8.as_pointer()),
                            [builder.mul(o, builder.mul(n_blocks, ir.Constant(I64, bbytes)))])
        out_row = builder.gep(out_arr.data, [builder.mul(i, k_dim)])
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            parts = _unpack_block(builder, fmt, builder.gep(w_row, [builder.mul(b, ir.Constant(I64, bbytes))]))
            dst = builder.gep(out_row, [builder.mul(b, ir.Constant(I64, QK))])
            for p, w_part in enumerate(parts):
                ptr = builder.gep(dst, [ir.Constant(I64, 8 * p)])
                builder.store(w_part, builder.bitcast(ptr, _V8F.as_pointer()), align=4)
        return context.get_dummy_value()

    @intrinsic
    def dequantize_row(typingctx, w, o, out, i):
        check_arrays((w, types.uint8), (out, types.float32))
        return types.void(w, o, out, i), codegen

    return dequantize_row


_q8_0_deq, _q4_0_deq, _q4_1_deq = (_make_dequantize(fmt) for fmt in FORMATS)


@jit(parallel=True)
def dequantize_rows(w, fmt, rows, out):
    """out[i] = dequantize(w[rows[i]]) for w (O, K/32*block bytes) uint8 in format code fmt and
    out (len(rows), K) f32, C-contiguous. The same values `qmatmul_rows` multiplies by."""
    for i in prange(rows.shape[0]):
        if fmt == 0:
            _q8_0_deq(w, rows[i], out, i)
        elif fmt == 1:
            _q4_0_deq(w, rows[i], out, i)
        else:
            _q4_1_deq(w, rows[i], out, i)


_DOTS = {(fmt, n): block_dots(fmt, n) for fmt in FORMATS for n in (1, 2, 4)}
_q8_0_1, _q8_0_2, _q8_0_4 = (_DOTS["Q8_0", n] for n in (1, 2, 4))
_q4_0_1, _q4_0_2, _q4_0_4 = (_DOTS["Q4_0", n] for n in (1, 2, 4))
_q4_1_1, _q4_1_2, _q4_1_4 = (_DOTS["Q4_1", n] for n in (1, 2, 4))


@jit(parallel=True)
def qmatmul_rows(x, w, fmt, out):
    """out = x @ dequantize(w).T for x (R, K) f32 and w (O, K/32*block bytes) uint8 in format
    code fmt (0 Q8_0, 1 Q4_0, 2 Q4_1); out (R, O) f32 is written; all C-contiguous.

    Parallel over output rows. Rows of x go through in fours, then a pair, then one: one
    unpacking of a weight block feeds the group (eight would spill the 16 AVX2 registers), and
    every group size rounds an element identically."""
    n_rows = x.shape[0]
    for o in prange(w.shape[0]):
        r = 0
        while r + 4 <= n_rows:
            if fmt == 0:
                _q8_0_4(w, o, x, r, out)
            elif fmt == 1:
                _q4_0_4(w, o, x, r, out)
            else:
                _q4_1_4(w, o, x, r, out)
            r += 4
        if r + 2 <= n_rows:
            if fmt == 0:
                _q8_0_2(w, o, x, r, out)
            elif fmt == 1:
                _q4_0_2(w, o, x, r, out)
            else:
                _q4_1_2(w, o, x, r, out)
            r += 2
        if r < n_rows:
            if fmt == 0:
                _q8_0_1(w, o, x, r, out)
            elif fmt == 1:
                _q4_0_1(w, o, x, r, out)
            else:
                _q4_1_1(w, o, x, r, out)


def format_code(fmt: str) -> int:
    return _CODE[fmt]


# ---------------------------------------------------------------- dequantize, quantize (NumPy)


def _fields(w: np.ndarray, fmt: str):
    """(d, m, q) as f32 arrays (O, nb), (O, nb) or None, (O, nb, 32)."""
    blocks = w.reshape(w.shape[0], -1, BLOCK_BYTES[fmt])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if fmt == "Q8_0":
        return d, None, blocks[..., 2:].copy().view(np.int8).astype(np.float32)
    qs = blocks[..., 4:] if fmt == "Q4_1" else blocks[..., 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32)
    if fmt == "Q4_0":
        return d, None, q - 8
    return d, blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32), q


def dequantize_ref(w: np.ndarray, fmt: str) -> np.ndarray:
    """The NumPy reference: (O, K) f32 weights of a quantized matrix, as llama.cpp defines them."""
    d, m, q = _fields(w, fmt)
    out = d[..., None] * q if m is None else d[..., None] * q + m[..., None]
    return out.reshape(w.shape[0], -1).astype(np.float32)


def quantize_q8_0(w: np.ndarray) -> np.ndarray:
    """(O, K) float weights -> (O, K/32*34) uint8 Q8_0 blocks, rounding as llama.cpp does
    (d = max|w| / 127, q = round(w / d))."""
    rows, k = w.shape
    if k % QK:
        raise ValueError(f"in_features {k} is not a multiple of {QK}")
    blocks = np.asarray(w, np.float32).reshape(rows, k // QK, QK)
    d = np.abs(blocks).max(axis=-1) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.round(blocks * inv[..., None]).astype(np.int8)
    out = np.empty((rows, k // QK, BLOCK_BYTES["Q8_0"]), np.uint8)
    out[..., 0:2] = d.astype(np.float16)[..., None].view(np.uint8)
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(rows, -1)

"""Block-quantized matrices, read in place: the kernels that multiply and dequantize every
format of kernels.formats.

Owns: `block_dots`, `qmatmul_rows`, `dequantize_rows`, `dequantize_ref`, `quantize_q8_0`.
Imports: numpy, numba, llvmlite, kernels.{_ir,_jit,formats}. Used by: engine.weights (`linear`,
embeddings), engine.loader (`quantize_q8_0`), kernels.matmul (`block_dots` on f32 weights).

A quantized matrix is a uint8 array (out_features, in_features / block_weights * block_bytes),
each row its blocks laid out as in a GGUF file (kernels.formats has the layouts). The kernels
take the format's name and compile one specialization per format on first use, cached on disk
like every kernel.

The inner loop is written in LLVM IR (a numba `intrinsic`), because numba's loop vectorizer does
not handle blocks with a scale between them: it fully unrolls them and then vectorizes across
blocks with gathers, 5-10x slower than this. Per block the format's `unpack` turns the bytes into
its weights, 8 f32 lanes at a time (the same values `dequantize_rows` writes), and each x row
adds w * x into its two 8-lane accumulators. Every operation is explicit (fmuladd, a fixed
halving tree for the final sum; no fast-math flags), so each output element has one rounding
sequence, whatever the number of rows and whatever the format.
"""

import functools
import hashlib
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from kernels._ir import F32, I8, I64, check_arrays, fmuladd, hsum, prefetch
from kernels._jit import jit
from kernels.formats import FORMATS, QUANTIZED, Block

QK = 32  # weights per Q8_0 block (what quantize_q8_0 writes)

_V8F = ir.VectorType(F32, 8)


def _format(fmt_type) -> str:
    """The format named by a kernel's string-literal argument (checked at compile time)."""
    if not isinstance(fmt_type, types.StringLiteral):
        raise TypingError(f"the weight format must be a compile-time string, got {fmt_type}")
    name = fmt_type.literal_value
    if name != "F32" and name not in QUANTIZED:
        raise TypingError(f"{name!r} is not a quantized format ({', '.join(QUANTIZED)}) or F32")
    return name


PREFETCH_ROWS = 4  # decode (one row) over the default model's blocks: 0.92-0.98x the time


def block_dots(n_rows: int, n_outs: int = 1):
    """An intrinsic dots(fmt, w, o, x, r0, out): out[r0 + i, o + j] = w[o + j] . x[r0 + i] for
    i < n_rows, j < n_outs. fmt is a compile-time string: a format of kernels.formats (w is its
    uint8 blocks) or "F32" (w is f32, in_features a multiple of 8). Arrays must be C-contiguous
    f32 (blocks: uint8), checked at compile time.

    Each output element has two <8 x float> accumulators: x[0:8], x[16:24], x[32:40]... go into
    the first, x[8:16], x[24:32]... into the second, in order, whatever the tile shape and the
    format; the sum at the end adds them lane by lane, then halves. So every tile shape rounds an
    element identically, and f32 weights equal to a quantized matrix's dequantized values give
    bit-identical results to the blocks themselves."""

    def make_codegen(fmt: str):
        quantized = fmt != "F32"
        spec = FORMATS[fmt] if quantized else None
        step = spec.block_weights if quantized else 16  # weights per loop iteration
        bbytes = spec.block_bytes if quantized else 0

        def codegen(context, builder, sig, args):
            _, w_t, _, x_t, _, out_t = sig.args
            w_arr = context.make_array(w_t)(context, builder, args[1])
            x_arr = context.make_array(x_t)(context, builder, args[3])
            out_arr = context.make_array(out_t)(context, builder, args[5])
            o, r0 = args[2], args[4]
            k_dim = builder.extract_value(x_arr.shape, 1)
            n_out = builder.extract_value(out_arr.shape, 1)
            n_steps = builder.sdiv(k_dim, ir.Constant(I64, step))
            outs = [builder.add(o, ir.Constant(I64, j)) for j in range(n_outs)]
            if quantized:
                row_bytes = builder.mul(n_steps, ir.Constant(I64, bbytes))
                w_rows = [builder.gep(builder.bitcast(w_arr.data, I8.as_pointer()), [builder.mul(oj, row_bytes)])
                          for oj in outs]
            else:
                w_rows = [builder.gep(w_arr.data, [builder.mul(oj, k_dim)]) for oj in outs]

            def weights(w_row, b):  # the <8 x float> parts of loop iteration b of one weight row
                if quantized:
                    return spec.unpack(Block(builder, builder.gep(w_row, [builder.mul(b, ir.Constant(I64, bbytes))])))
                first = builder.gep(w_row, [builder.mul(b, ir.Constant(I64, step))])
                return [builder.load(builder.bitcast(builder.gep(first, [ir.Constant(I64, 8 * p)]), _V8F.as_pointer()),
                                     align=4) for p in range(2)]

            x_rows = [builder.gep(x_arr.data, [builder.mul(builder.add(r0, ir.Constant(I64, i)), k_dim)])
                      for i in range(n_rows)]
            tile = [(j, i) for j in range(n_outs) for i in range(n_rows)]

            # for b in range(n_steps): unpack step b of each weight row part by part, and for
            # each x row one fmuladd per part, the parts alternating between the element's two
            # accumulators
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
                                    builder.mul(b, ir.Constant(I64, bbytes)))
                for w_row in w_rows:
                    prefetch(builder, builder.gep(w_row, [ahead]))
            new_accs = {e: list(accs[e]) for e in tile}
            for j in range(n_outs):
                for p, w_part in enumerate(weights(w_rows[j], b)):
                    for i in range(n_rows):
                        x_part = builder.gep(x_rows[i], [builder.add(builder.mul(b, ir.Constant(I64, step)),
                                                                     ir.Constant(I64, 8 * p))])
                        xv = builder.load(builder.bitcast(x_part, _V8F.as_pointer()), align=4)
                        acc = new_accs[j, i]
                        acc[p % 2] = fmuladd(builder, w_part, xv, acc[p % 2])
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

        return codegen

    @intrinsic
    def dots(typingctx, fmt, w, o, x, r0, out):
        name = _format(fmt)
        check_arrays((w, types.float32 if name == "F32" else types.uint8), (x, types.float32),
                     (out, types.float32))
        return types.void(fmt, w, o, x, r0, out), make_codegen(name)

    return dots


@intrinsic
def _dequantize_row(typingctx, fmt, w, o, out, i):
    """out[i] = the dequantized weights of row o of w (blocks of the literal format fmt)."""
    name = _format(fmt)
    spec = FORMATS[name]
    check_arrays((w, types.uint8), (out, types.float32))

    def codegen(context, builder, sig, args):
        _, w_t, _, out_t, _ = sig.args
        w_arr = context.make_array(w_t)(context, builder, args[1])
        out_arr = context.make_array(out_t)(context, builder, args[3])
        o, i = args[2], args[4]
        k_dim = builder.extract_value(out_arr.shape, 1)
        n_blocks = builder.sdiv(k_dim, ir.Constant(I64, spec.block_weights))
        w_row = builder.gep(builder.bitcast(w_arr.data, I8.as_pointer()),
                            [builder.mul(o, builder.mul(n_blocks, ir.Constant(I64, spec.block_bytes)))])
        out_row = builder.gep(out_arr.data, [builder.mul(i, k_dim)])
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            blk = builder.gep(w_row, [builder.mul(b, ir.Constant(I64, spec.block_bytes))])
            dst = builder.gep(out_row, [builder.mul(b, ir.Constant(I64, spec.block_weights))])
            for p, w_part in enumerate(spec.unpack(Block(builder, blk))):
                ptr = builder.gep(dst, [ir.Constant(I64, 8 * p)])
                builder.store(w_part, builder.bitcast(ptr, _V8F.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(fmt, w, o, out, i), codegen


_dots_1, _dots_2, _dots_4 = (block_dots(n) for n in (1, 2, 4))


# numba's disk cache notices changes to the file of a jitted function, not to the IR its
# intrinsics emit from other files: the kernels below take a digest of those as a closure
# constant, which is part of the cache key, so editing a block reader recompiles them.
_IR_SOURCES = hashlib.sha256(b"".join((Path(__file__).parent / f).read_bytes()
                                      for f in ("_ir.py", "formats.py", "quant.py"))).hexdigest()


@functools.cache
def _kernels(fmt: str):
    """The two jitted kernels of one format. `fmt` is a closure constant, so each format is its
    own compiled (and disk-cached: the cache key includes the closure) specialization."""
    sources = _IR_SOURCES

    @jit(parallel=True)
    def dequantize(w, rows, out):
        if len(sources) == 0:  # never: `sources` is here for the cache key
            return
        for i in prange(rows.shape[0]):
            _dequantize_row(fmt, w, rows[i], out, i)

    @jit(parallel=True)
    def qmatmul(x, w, out):
        if len(sources) == 0:
            return
        n_rows = x.shape[0]
        for o in prange(w.shape[0]):
            r = 0
            while r + 4 <= n_rows:
                _dots_4(fmt, w, o, x, r, out)
                r += 4
            if r + 2 <= n_rows:
                _dots_2(fmt, w, o, x, r, out)
                r += 2
            if r < n_rows:
                _dots_1(fmt, w, o, x, r, out)

    return dequantize, qmatmul


def dequantize_rows(w: np.ndarray, fmt: str, rows: np.ndarray, out: np.ndarray) -> None:
    """out[i] = dequantize(w[rows[i]]) for w (O, row bytes) uint8 blocks of format fmt (a name
    of kernels.formats) and out (len(rows), K) f32, C-contiguous. The same values
    `qmatmul_rows` multiplies by."""
    _kernels(fmt)[0](w, rows, out)


def qmatmul_rows(x: np.ndarray, w: np.ndarray, fmt: str, out: np.ndarray) -> None:
    """out = x @ dequantize(w).T for x (R, K) f32 and w (O, row bytes) uint8 blocks of format
    fmt (a name of kernels.formats); out (R, O) f32 is written; all C-contiguous.

    Parallel over output rows. Rows of x go through in fours, then a pair, then one: one
    unpacking of a weight block feeds the group (eight would spill the 16 AVX2 registers), and
    every group size rounds an element identically."""
    _kernels(fmt)[1](x, w, out)


# ---------------------------------------------------------------- dequantize, quantize (NumPy)


def dequantize_ref(w: np.ndarray, fmt: str) -> np.ndarray:
    """The NumPy reference: (O, K) f32 weights of a quantized matrix, as llama.cpp defines them."""
    return FORMATS[fmt].dequantize(w)


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
    out = np.empty((rows, k // QK, FORMATS["Q8_0"].block_bytes), np.uint8)
    out[..., 0:2] = d.astype(np.float16)[..., None].view(np.uint8)
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(rows, -1)

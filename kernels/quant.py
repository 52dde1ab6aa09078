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
its weights, 16 f32 lanes at a time (the same values `dequantize_rows` writes), and each x row
adds w * x into the element's two 16-lane accumulators, alternately. Every operation is
explicit (fmuladd, a fixed halving tree for the final sum; no fast-math flags), so each output
element has one rounding sequence, whatever the number of rows and whatever the format.
"""

import functools

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from kernels._ir import F32, HAS_AVX512, I8, I32, I64, check_arrays, fmuladd, hsum, prefetch
from kernels._jit import jit
from kernels.formats import FORMATS, LANES, QUANTIZED, Block

QK = 32  # weights per Q8_0 block (what quantize_q8_0 writes)

_VF, _V8F = ir.VectorType(F32, LANES), ir.VectorType(F32, 8)
ACCS = 2  # accumulators per output element: the parts of 16 weights alternate between them


def _format(fmt_type) -> str:
    """The format named by a kernel's string-literal argument (checked at compile time)."""
    if not isinstance(fmt_type, types.StringLiteral):
        raise TypingError(f"the weight format must be a compile-time string, got {fmt_type}")
    name = fmt_type.literal_value
    if name != "F32" and name not in QUANTIZED:
        raise TypingError(f"{name!r} is not a quantized format ({', '.join(QUANTIZED)}) or F32")
    return name


PREFETCH_ROWS = 4  # decode (one row) over the default model's blocks: 0.92-0.98x the time
# x rows that share one unpacking of a block: their 2 x ROW_TILE accumulators, 16 lanes each,
# must fit in the registers with the unpacked part (32 of 16 lanes with AVX-512, 16 of 8 without)
ROW_TILE = 4 if HAS_AVX512 else 2


@intrinsic
def block_dots(typingctx, fmt, n_rows, n_outs, w, o, x, r0, out):
    """block_dots(fmt, n_rows, n_outs, w, o, x, r0, out): out[r0 + i, o + j] = w[o + j] . x[r0 + i]
    for i < n_rows, j < n_outs (a tile). fmt, n_rows and n_outs are compile-time constants; fmt
    is a format of kernels.formats (w is its uint8 blocks) or "F32" (w is f32, in_features a
    multiple of 8). Arrays must be C-contiguous f32 (blocks: uint8), checked at compile time.

    Each output element has ACCS = 2 accumulators of 16 lanes: lane l of accumulator a adds up
    w[k] * x[k] for k = 32 i + 16 a + l, over i in order, whatever the tile shape and the
    format; the sum at the end adds the two accumulators, then their 8-lane halves, then halves
    again (a fixed tree). So every tile shape rounds an element identically, and f32 weights
    equal to a quantized matrix's dequantized values give bit-identical results to the blocks
    themselves. Two accumulators, not one, so that one element's fmuladds form two chains that
    overlap. (On AVX2 a 16-lane accumulator is two 8-lane registers, the same arithmetic.)"""

    name = _format(fmt)
    if not (isinstance(n_rows, types.IntegerLiteral) and isinstance(n_outs, types.IntegerLiteral)):
        raise TypingError("block_dots: the tile shape must be compile-time integers")
    check_arrays((w, types.float32 if name == "F32" else types.uint8), (x, types.float32),
                 (out, types.float32))
    return (types.void(fmt, n_rows, n_outs, w, o, x, r0, out),
            _dots_codegen(name, n_rows.literal_value, n_outs.literal_value))


def _dots_codegen(fmt: str, n_rows: int, n_outs: int):
    """The IR of one tile shape of `block_dots`."""
    quantized = fmt != "F32"
    spec = FORMATS[fmt] if quantized else None
    step = spec.block_weights if quantized else ACCS * LANES  # weights per loop iteration
    bbytes = spec.block_bytes if quantized else 0

    def codegen(context, builder, sig, args):
        _, _, _, w_t, _, x_t, _, out_t = sig.args
        w_arr = context.make_array(w_t)(context, builder, args[3])
        x_arr = context.make_array(x_t)(context, builder, args[5])
        out_arr = context.make_array(out_t)(context, builder, args[7])
        o, r0 = args[4], args[6]
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

        def weights(w_row, b):  # the 16-lane parts of loop iteration b of one weight row
            if quantized:
                return spec.unpack(Block(builder, builder.gep(w_row, [builder.mul(b, ir.Constant(I64, bbytes))])))
            first = builder.gep(w_row, [builder.mul(b, ir.Constant(I64, step))])
            return [builder.load(builder.bitcast(builder.gep(first, [ir.Constant(I64, LANES * p)]),
                                                 _VF.as_pointer()), align=4) for p in range(ACCS)]

        x_rows = [builder.gep(x_arr.data, [builder.mul(builder.add(r0, ir.Constant(I64, i)), k_dim)])
                  for i in range(n_rows)]
        tile = [(j, i) for j in range(n_outs) for i in range(n_rows)]

        # for b in range(n_steps): unpack step b of each weight row part by part, and for
        # each x row one fmuladd per part into the element's accumulator
        entry = builder.block
        loop = builder.append_basic_block("blocks")
        done = builder.append_basic_block("blocks_done")
        zero = ir.Constant(_VF, [0.0] * LANES)
        builder.cbranch(builder.icmp_signed(">", n_steps, ir.Constant(I64, 0)), loop, done)

        builder.position_at_end(loop)
        b = builder.phi(I64)
        accs = {e: [builder.phi(_VF) for _ in range(ACCS)] for e in tile}
        if quantized:  # the same block PREFETCH_ROWS rows on, which this thread reads next
            ahead = builder.add(builder.mul(ir.Constant(I64, PREFETCH_ROWS), row_bytes),
                                builder.mul(b, ir.Constant(I64, bbytes)))
            for w_row in w_rows:
                prefetch(builder, builder.gep(w_row, [ahead]))
        new_accs = {e: list(accs[e]) for e in tile}
        base = builder.mul(b, ir.Constant(I64, step))
        for j in range(n_outs):
            for p, w_part in enumerate(weights(w_rows[j], b)):
                for i in range(n_rows):
                    x_part = builder.gep(x_rows[i], [builder.add(base, ir.Constant(I64, LANES * p))])
                    xv = builder.load(builder.bitcast(x_part, _VF.as_pointer()), align=4)
                    acc = new_accs[j, i]
                    acc[p % ACCS] = fmuladd(builder, w_part, xv, acc[p % ACCS])
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
        for e in tile:
            pair = []
            for new in new_accs[e]:
                acc = builder.phi(_VF)
                acc.add_incoming(zero, entry)
                acc.add_incoming(new, body_end)
                pair.append(acc)
            finals[e] = pair
        if not quantized:  # in_features = 32 n + 16 and / or + 8: the tails
            k_done = builder.mul(n_steps, ir.Constant(I64, step))
            finals = _f32_tails(builder, finals, w_rows, x_rows, tile, k_done, k_dim)
        for j, i in tile:
            total = hsum(builder, builder.fadd(*_halves(builder, builder.fadd(*finals[j, i]))))
            r = builder.add(r0, ir.Constant(I64, i))
            builder.store(total, builder.gep(out_arr.data, [builder.add(builder.mul(r, n_out), outs[j])]))
        return context.get_dummy_value()

    return codegen


def _f32_tails(builder, finals, w_rows, x_rows, tile, k_done, k_dim):
    """The last weights of f32 rows whose length is not a multiple of 32, in `block_dots`'s
    order (lane l of accumulator a takes the terms 32 i + 16 a + l): 16 more go into the first
    accumulator, then 8 more into the low lanes of the next free one."""
    left = builder.sub(k_dim, k_done)
    has16 = builder.icmp_signed(">=", left, ir.Constant(I64, LANES))

    def load(ptr, k, width):
        vt = ir.VectorType(F32, width)
        return builder.load(builder.bitcast(builder.gep(ptr, [k]), vt.as_pointer()), align=4)

    def add16(f):
        return {(j, i): [fmuladd(builder, load(w_rows[j], k_done, LANES), load(x_rows[i], k_done, LANES),
                                 f[j, i][0]), f[j, i][1]] for j, i in tile}

    finals = _maybe(builder, has16, finals, add16)
    k8 = builder.select(has16, builder.add(k_done, ir.Constant(I64, LANES)), k_done)
    has8 = builder.icmp_signed("!=", builder.and_(left, ir.Constant(I64, LANES - 1)), ir.Constant(I64, 0))

    def add8(f):
        out = {}
        for j, i in tile:
            w8, x8 = load(w_rows[j], k8, 8), load(x_rows[i], k8, 8)
            cands = []
            for acc in f[j, i]:
                low, high = _halves(builder, acc)
                cands.append(builder.shuffle_vector(fmuladd(builder, w8, x8, low), high,
                                                    ir.Constant(ir.VectorType(I32, LANES), list(range(LANES)))))
            out[j, i] = [builder.select(has16, f[j, i][0], cands[0]), builder.select(has16, cands[1], f[j, i][1])]
        return out

    return _maybe(builder, has8, finals, add8)


def _maybe(builder, cond, finals, update):
    """finals, changed by update(finals) where cond holds: a branch, then phis."""
    before = builder.block
    with builder.if_then(cond):
        changed = update(finals)
        inside = builder.block
    merged = {}
    for e, accs in finals.items():
        merged[e] = []
        for old, new in zip(accs, changed[e]):
            phi = builder.phi(_VF)
            phi.add_incoming(old, before)
            phi.add_incoming(new, inside)
            merged[e].append(phi)
    return merged


def _halves(builder, v):
    """The low and high 8 lanes of a 16-lane vector."""
    return [builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 8), list(range(h, h + 8))))
            for h in (0, 8)]


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
                ptr = builder.gep(dst, [ir.Constant(I64, LANES * p)])
                builder.store(w_part, builder.bitcast(ptr, _VF.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(fmt, w, o, out, i), codegen


@functools.cache
def _kernels(fmt: str):
    """The two jitted kernels of one format. `fmt` (and its `out_group`) are closure constants,
    so each format is its own compiled (and disk-cached: the cache key includes the closure)
    specialization."""
    group = FORMATS[fmt].out_group
    rows = ROW_TILE

    @jit(parallel=True)
    def dequantize(w, rows, out):
        for i in prange(rows.shape[0]):
            _dequantize_row(fmt, w, rows[i], out, i)

    @jit(parallel=True)
    def qmatmul(x, w, out):
        n_rows, n_out = x.shape[0], w.shape[0]
        for g in prange((n_out + group - 1) // group):
            o0 = g * group
            whole = o0 + group <= n_out
            r = 0
            while r + rows <= n_rows:  # ROW_TILE x rows share each unpacked block
                for o in range(o0, min(o0 + group, n_out)):
                    block_dots(fmt, rows, 1, w, o, x, r, out)
                r += rows
            if rows > 2 and r + 2 <= n_rows and not whole:
                for o in range(o0, n_out):
                    block_dots(fmt, 2, 1, w, o, x, r, out)
                r += 2
            while r < n_rows:  # a lone row against `group` weight rows: their chains overlap
                if whole:
                    block_dots(fmt, 1, group, w, o0, x, r, out)
                else:
                    for o in range(o0, n_out):
                        block_dots(fmt, 1, 1, w, o, x, r, out)
                r += 1

    return dequantize, qmatmul


def dequantize_rows(w: np.ndarray, fmt: str, rows: np.ndarray, out: np.ndarray) -> None:
    """out[i] = dequantize(w[rows[i]]) for w (O, row bytes) uint8 blocks of format fmt (a name
    of kernels.formats) and out (len(rows), K) f32, C-contiguous. The same values
    `qmatmul_rows` multiplies by."""
    _kernels(fmt)[0](w, rows, out)


def qmatmul_rows(x: np.ndarray, w: np.ndarray, fmt: str, out: np.ndarray) -> None:
    """out = x @ dequantize(w).T for x (R, K) f32 and w (O, row bytes) uint8 blocks of format
    fmt (a name of kernels.formats); out (R, O) f32 is written; all C-contiguous.

    Parallel over groups of the format's `out_group` output rows. Rows of x go through
    ROW_TILE at a time (one unpacking of a weight block feeds them all), then one at a time
    against the group's weight rows (whose accumulator chains then overlap); every tile shape
    rounds an element identically."""
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

"""LLVM-IR building blocks for the few kernels numba's vectorizer cannot write well.

Owns: the IR types, `splat`, `fmuladd`, `hsum`, `half_to_float`, `prefetch`, `array_data`,
`check_arrays`, the scalar bit casts `float_bits` / `bits_float`, and what the host CPU has
(`NATIVE_HALF`, `HAS_PSHUFB`, `HAS_AVX512`). Imports: llvmlite, numba. Used by: kernels.formats (block
readers), kernels.quant (block-quantized dots), kernels.attention (f16 KV-cache rows),
kernels.expf (the bit casts).

Kernels that need explicit vectors are numba `intrinsic`s whose codegen uses these helpers.
Every floating-point step is explicit (no fast-math flags: fmuladd, a fixed halving tree for
sums), so a result has one rounding sequence wherever and however often it is computed.
"""

import os

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

F32, I8, I16, I32, I64 = ir.FloatType(), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)

# What numba compiles for: the host, or NUMBA_CPU_FEATURES when set (to build for another CPU).
_FEATURES = (os.environ.get("NUMBA_CPU_FEATURES") or llvm.get_host_cpu_features().flatten()).split(",")
# Halves convert in one instruction with F16C (x86) and on ARM; elsewhere with integer moves.
NATIVE_HALF = "aarch64" in llvm.get_process_triple() or "+f16c" in _FEATURES
# A 16-entry byte table lookup in one instruction (x86 SSSE3), for the IQ4 formats' codes.
HAS_PSHUFB = "+ssse3" in _FEATURES
# 32 vector registers of 16 floats: tiles of matrix products may hold twice as many elements.
HAS_AVX512 = "+avx512f" in _FEATURES


def const(value: int) -> ir.Constant:
    return ir.Constant(I64, value)


def splat(builder, value, vec_type):
    """A vector with every lane = value."""
    undef = ir.Constant(vec_type, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(I32, vec_type.count), None))


def fmuladd(builder, a, b, c):
    """a * b + c (fused where the CPU has FMA), scalars or f32 vectors."""
    suffix = f"v{a.type.count}f32" if isinstance(a.type, ir.VectorType) else "f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(a.type, [a.type] * 3),
                                        f"llvm.fmuladd.{suffix}")
    return builder.call(fn, [a, b, c])


def hsum(builder, v):
    """Sum a float vector by halving: a fixed order, so a fixed rounding."""
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(I32, 0))


def half_to_float(builder, ptr, n: int = 1, native: bool = NATIVE_HALF):
    """Load n IEEE halves at i8* ptr and widen them exactly to f32 (a float if n == 1, else a
    vector). Without native conversion: magnitude bits moved into an f32 exponent/mantissa and
    rescaled by 2^112, which is exact for normal and subnormal halves (inf/nan become large
    finite numbers)."""
    ity = I16 if n == 1 else ir.VectorType(I16, n)
    fty = F32 if n == 1 else ir.VectorType(F32, n)
    if native:
        hty = ir.HalfType() if n == 1 else ir.VectorType(ir.HalfType(), n)
        return builder.fpext(builder.load(builder.bitcast(ptr, hty.as_pointer()), align=1), fty)

    def c(v):
        return ir.Constant(I32, v) if n == 1 else ir.Constant(ir.VectorType(I32, n), [v] * n)

    bits = builder.zext(builder.load(builder.bitcast(ptr, ity.as_pointer()), align=1),
                        I32 if n == 1 else ir.VectorType(I32, n))
    magnitude = builder.shl(builder.and_(bits, c(0x7FFF)), c(13))
    sign = builder.shl(builder.and_(bits, c(0x8000)), c(16))
    scale = ir.Constant(F32, 2.0 ** 112) if n == 1 else ir.Constant(fty, [2.0 ** 112] * n)
    value = builder.fmul(builder.bitcast(magnitude, fty), scale)
    return builder.bitcast(builder.or_(builder.bitcast(value, bits.type), sign), fty)


def prefetch(builder, ptr) -> None:
    """Hint the CPU to fetch the cache line at i8* ptr for reading (a hint: it never faults,
    even past the end of an array)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, I32, I32]),
                                        "llvm.prefetch.p0i8")
    builder.call(fn, [ptr, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])  # read, keep, data


def array_data(context, builder, array_type, value):
    """(i8* to the first element, the numba array struct) of an array argument."""
    arr = context.make_array(array_type)(context, builder, value)
    return builder.bitcast(arr.data, I8.as_pointer()), arr


def check_arrays(*specs):
    """The IR addresses arrays as flat memory of a known element type: refuse, at compile time,
    arrays that are not C-contiguous or not of the expected dtype. specs: (array type, dtype)."""
    for a, dtype in specs:
        if not (isinstance(a, types.Array) and a.layout == "C" and a.dtype == dtype):
            raise TypingError(f"this kernel needs a C-contiguous {dtype} array, got {a}")


@intrinsic
def float_bits(typingctx, x):
    """The IEEE bits of an f32 as an int32 (numba has no scalar view)."""
    if x != types.float32:
        raise TypingError(f"float_bits needs a float32, got {x}")
    return types.int32(x), lambda context, builder, sig, args: builder.bitcast(args[0], I32)


@intrinsic
def bits_float(typingctx, i):
    """The f32 whose IEEE bits are the low 32 bits of the integer i."""
    if not isinstance(i, types.Integer):
        raise TypingError(f"bits_float needs an integer, got {i}")

    def codegen(context, builder, sig, args):
        low = args[0] if i.bitwidth == 32 else builder.trunc(args[0], I32) if i.bitwidth > 32 \
            else builder.zext(args[0], I32)
        return builder.bitcast(low, F32)
    return types.float32(i), codegen

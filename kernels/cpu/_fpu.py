"""Flush-to-zero for the CPU kernels: denormal floats cost ~100 cycles per operation on x86.

Gradients that decay through many steps (a GRU's ``z * dh`` path, inputs of 1e-30) reach
the denormal range, where a GRU ran 14x slower (docs/performance-notes.md, "Memory"). The
kernels set MXCSR's flush-to-zero and denormals-are-zero bits while they run
(on every thread that works for them) and restore the caller's bits afterwards. Values below
float32's 1.2e-38 (float64's 2.2e-308) become zero: far below any tolerance.
"""

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import jit

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
_FTZ_DAZ = (1 << 15) | (1 << 6)


def _mxcsr_call(builder, name, ptr):
    fnty = ir.FunctionType(ir.VoidType(), [ptr.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [ptr])


@intrinsic
def _read_mxcsr(typingctx):
    def codegen(context, builder, sig, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.sext(builder.load(slot), ir.IntType(64))
    return types.int64(), codegen


@intrinsic
def _write_mxcsr(typingctx, value):
    def codegen(context, builder, sig, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.store(builder.trunc(args[0], ir.IntType(32)), slot)
        _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()
    return types.none(types.int64), codegen


if _X86:
    @jit()
    def flush_denormals():
        """Turn flush-to-zero on for this thread; return the previous control word."""
        old = _read_mxcsr()
        _write_mxcsr(old | _FTZ_DAZ)
        return old

    @jit()
    def restore(old):
        """Put back the control word :func:`flush_denormals` returned."""
        _write_mxcsr(old)
else:  # other processors keep their defaults
    @jit()
    def flush_denormals():
        return 0

    @jit()
    def restore(old):
        pass

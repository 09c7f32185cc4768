"""Triton helpers shared by the kernels in this folder."""

import triton
import triton.language as tl


@triton.jit
def store_rounded(p, x, mask, UPCAST: tl.constexpr):
    """Store fp32 x in p's dtype. Interpreted, round to bf16 by hand first (Veltkamp split: keeps the top
    8 significant bits, to nearest): the interpreter's fp32 -> bf16 cast truncates, the GPU rounds."""
    if UPCAST and p.dtype.element_ty == tl.bfloat16:
        t = x * 65537.0
        x = t - (t - x)
    tl.store(p, x.to(p.dtype.element_ty), mask=mask)

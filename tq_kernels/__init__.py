"""Triton kernels registered as `torch.ops.tq.*`.

Importing this package registers every op. Each kernel file holds its kernels, a launcher usable
as a plain function, and the pure-torch reference that serves as the CPU implementation.
tq_kernels/ is the ground floor: it imports nothing from tq_export.
"""

from . import tq4_sdpa  # noqa: F401  (registers torch.ops.tq.tq4_sdpa)
from . import hybrid_ops  # noqa: F401  (registers the gated delta rule, causal conv and MoE ops)

"""Triton kernels registered as `torch.ops.tq.*` (import name `tq_kernels`).

Importing this package registers every op. Each kernel file holds its kernels, a launcher usable
as a plain function, and the pure-torch reference that serves as the CPU implementation.
kernels/ is the ground floor: it imports nothing from tq_export.
"""

# From the repository root this folder is also importable as `kernels`, and transformers imports a
# package of that name when it probes for Hugging Face's `kernels`. Imported under that name, this
# file must register nothing: a second registration of the ops leaves the first ones' handles
# dangling (seen as random crashes in later op calls). It then has no version, so the probe
# reports Hugging Face's package as unavailable.
if __name__ == "tq_kernels":
    from . import tq4_sdpa  # noqa: F401  (registers torch.ops.tq.tq4_sdpa)
    from . import hybrid_ops  # noqa: F401  (registers the gated delta rule, causal conv and MoE ops)

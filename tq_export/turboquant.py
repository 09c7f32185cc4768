"""TurboQuant: rotation + optimal scalar codebook for KV-cache vectors.

Paper: Zandieh et al., "TurboQuant: Online Vector Quantization with Near-optimal Distortion Rate",
arXiv 2504.19874. Per vector x in R^d: keep ||x||, rotate u = x / ||x|| by a fixed random orthogonal
matrix, quantize each coordinate of the rotated unit vector with the Lloyd-Max codebook of the law
that one coordinate of a uniformly random unit vector follows, and pack the indices.

That law is exact, not Gaussian: a coordinate X of a uniform unit vector in R^d has density
    f(x) = (1 - x^2)^((d-3)/2) / B(1/2, (d-1)/2)     on [-1, 1],
i.e. (X + 1) / 2 ~ Beta((d-1)/2, (d-1)/2). The codebooks here are solved for it over the whole
support, so they sit at the optimum; a Gaussian approximation (or truncating the support) costs
2-4% extra distortion at 4 bits.

Indices are sign-magnitude labels, not ranks: with n = 2**bits levels, label j < n/2 names the
(j+1)-th smallest positive centroid and label j + n/2 its negative, so the quantizer's centroids
are stored in that order (`codebook_in_label_order`). The codebook is the same Lloyd-Max one; only
the numbering differs, and it saves the GPU lookup work: the low bits of a label index a table
of the n/2 magnitudes, its top bit is the sign (`tq_kernels/tq4_sdpa.py`, `_dequant_prmt`).

Packing layouts (`packed` is uint8 [..., packed_dim(d, bits)]):
    4 bits: element 2i in the high nibble, 2i+1 in the low nibble of byte i (d/2 bytes).
    3 bits: stored exactly like 4 bits (one index per nibble, the top index value unused): a
            nibble-aligned layout keeps the attention kernel's unpacking a shift and a mask.
    2 bits: four elements per byte, element 4i in the top two bits (d/4 bytes).
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources

import numpy as np
import torch
from torch import nn

SUPPORTED_BITS = (2, 3, 4)
CODEBOOK_BITS = (1, 2, 3, 4)
ROTATIONS = ("haar", "hadamard")
SHIPPED_DIMS = (64, 128, 256)


# --------------------------------------------------------------------------------------------
# Lloyd-Max codebook for the exact coordinate law
# --------------------------------------------------------------------------------------------


def _coordinate_law(d: int):
    """Return (cdf, partial_mean) for one coordinate of a uniform unit vector in R^d.

    partial_mean(a, b) = integral_a^b x f(x) dx, which has the closed form
    c * ((1 - a^2)^(alpha+1) - (1 - b^2)^(alpha+1)) / (2 (alpha + 1)), alpha = (d-3)/2.
    """
    from scipy import special, stats

    if d < 3:
        raise ValueError(f"codebook dimension must be >= 3, got {d}")
    alpha = (d - 3) / 2.0
    law = stats.beta(alpha + 1.0, alpha + 1.0, loc=-1.0, scale=2.0)
    log_c = -special.betaln(0.5, alpha + 1.0)

    def partial_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        def g(x):  # (1 - x^2)^(alpha+1), computed in log space so large d does not underflow early
            one_minus = np.clip(1.0 - x * x, 0.0, None)
            with np.errstate(divide="ignore"):
                return np.exp(log_c + (alpha + 1.0) * np.log(one_minus))

        return (g(a) - g(b)) / (2.0 * (alpha + 1.0))

    return law.cdf, partial_mean


def solve_codebook(d: int, bits: int, tol: float = 1e-13, max_iter: int = 200_000) -> dict:
    """Lloyd-Max quantizer for one coordinate of a uniform unit vector in R^d.

    Alternates the two optimality conditions (boundaries at midpoints, centroids at conditional
    means) in float64 until no centroid moves by more than `tol`. Returns centroids, the inner
    boundaries and the per-vector distortion D_mse = E||u - u_hat||^2 = 1 - d * sum_i P_i c_i^2
    (exact for conditional-mean centroids, since E[X^2] = 1/d).
    """
    if bits not in CODEBOOK_BITS:
        raise ValueError(f"codebook bits must be one of {CODEBOOK_BITS}, got {bits}")
    cdf, partial_mean = _coordinate_law(d)
    n = 1 << bits
    # Start from evenly spaced quantiles of the law: already close to optimal, few iterations.
    sigma = 1.0 / math.sqrt(d)
    c = np.linspace(-2.0, 2.0, n) * sigma * (1.0 + 0.3 * bits)
    edges = np.empty(n + 1)
    edges[0], edges[-1] = -1.0, 1.0
    for _ in range(max_iter):
        edges[1:-1] = 0.5 * (c[1:] + c[:-1])
        mass = np.diff(cdf(edges))
        new_c = partial_mean(edges[:-1], edges[1:]) / mass
        moved = np.max(np.abs(new_c - c))
        c = new_c
        if moved < tol * sigma:
            break
    else:  # pragma: no cover - the iteration contracts; this guards a broken law
        raise RuntimeError(f"Lloyd-Max did not converge for d={d}, bits={bits}")
    # The law is symmetric, so is the optimum; make it exact (the fused attention's lookup uses
    # that c[n - 1 - i] = -c[i]).
    c = 0.5 * (c - c[::-1])
    edges[1:-1] = 0.5 * (c[1:] + c[:-1])
    mass = np.diff(cdf(edges))
    distortion = 1.0 - d * float(np.sum(mass * c * c))
    return {"centroids": c.tolist(), "boundaries": edges[1:-1].tolist(), "mse": distortion}


@functools.lru_cache(maxsize=None)
def _shipped_codebooks() -> dict:
    text = resources.files("tq_export").joinpath("data/codebooks.json").read_text()
    return json.loads(text)


@functools.lru_cache(maxsize=None)
def codebook(d: int, bits: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(centroids float32 [2**bits], boundaries float32 [2**bits - 1], D_mse) for dimension d.

    Shipped tables cover d in {64, 128, 256}, so a normal export never imports scipy; other
    dimensions are solved on first use and cached for the process.
    """
    if bits not in CODEBOOK_BITS:
        raise ValueError(f"codebook bits must be one of {CODEBOOK_BITS}, got {bits}")
    entry = _shipped_codebooks().get(str(d), {}).get(str(bits))
    if entry is None:
        entry = solve_codebook(d, bits)
    centroids = torch.tensor(entry["centroids"], dtype=torch.float64).float()
    boundaries = torch.tensor(entry["boundaries"], dtype=torch.float64).float()
    return centroids, boundaries, float(entry["mse"])


def codebook_in_label_order(centroids: torch.Tensor) -> torch.Tensor:
    """Sorted centroids [n] of a symmetric codebook -> the same values by sign-magnitude label:
    [c[n/2], ..., c[n-1], c[n/2 - 1], ..., c[0]], so entry j + n/2 is minus entry j."""
    half = centroids.shape[0] // 2
    return torch.cat([centroids[half:], centroids[:half].flip(0)])


def rank_to_label(rank: torch.Tensor, bits: int) -> torch.Tensor:
    """Rank k of a value among the 2**bits sorted centroids -> its sign-magnitude label."""
    n = 1 << bits
    return torch.where(rank >= n // 2, rank - n // 2, n - 1 - rank)


# --------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------


def haar_rotation(d: int, seed: int = 0) -> torch.Tensor:
    """Haar-random orthogonal matrix [d, d], float32, a pure function of (d, seed).

    numpy's PCG64 stream is stable across platforms and releases; the QR runs in float64 and the
    sign fix (Q * sign(diag R)) makes the factorization unique, so rounding to float32 gives the
    same bytes on every machine.
    """
    g = np.random.Generator(np.random.PCG64(seed))
    a = g.standard_normal((d, d))
    q, r = np.linalg.qr(a)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(q)).float()


def hadamard_rotation(d: int, seed: int = 0) -> torch.Tensor:
    """Randomized Hadamard rotation H_d diag(s) / sqrt(d) with seeded random signs s, float32."""
    if d <= 0 or d & (d - 1):
        raise ValueError(f"Hadamard rotation needs a power-of-two head_dim, got {d}")
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    signs = np.random.Generator(np.random.PCG64(seed)).integers(0, 2, d) * 2 - 1
    return torch.from_numpy(h * signs[None, :] / math.sqrt(d)).float()


def make_rotation(d: int, kind: str = "haar", seed: int = 0) -> torch.Tensor:
    if kind == "haar":
        return haar_rotation(d, seed)
    if kind == "hadamard":
        return hadamard_rotation(d, seed)
    raise ValueError(f"rotation must be one of {ROTATIONS}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


def packed_dim(d: int, bits: int) -> int:
    """Bytes per vector of `d` indices at `bits` (3 bits use whole nibbles)."""
    return d // 4 if bits == 2 else d // 2


def pack_indices(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 indices [..., d] -> packed uint8 [..., packed_dim(d, bits)]."""
    idx = idx.to(torch.uint8)
    if bits == 2:
        g = idx.unflatten(-1, (-1, 4))
        return (g[..., 0] << 6) | (g[..., 1] << 4) | (g[..., 2] << 2) | g[..., 3]
    g = idx.unflatten(-1, (-1, 2))
    return (g[..., 0] << 4) | g[..., 1]


def unpack_indices(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """packed uint8 [..., n] -> int64 indices [..., d] (inverse of pack_indices)."""
    p = packed.to(torch.int64)
    if bits == 2:
        return torch.stack([(p >> 6) & 3, (p >> 4) & 3, (p >> 2) & 3, p & 3], dim=-1).flatten(-2)
    return torch.stack([(p >> 4) & 15, p & 15], dim=-1).flatten(-2)


# --------------------------------------------------------------------------------------------
# Quantizer
# --------------------------------------------------------------------------------------------


def _check_config(head_dim: int, bits: int, rotation: str) -> None:
    if head_dim <= 0 or head_dim % 4:
        raise ValueError(f"head_dim must be a positive multiple of 4 (even, packable), got {head_dim}")
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")


class TurboQuantizer(nn.Module):
    """Quantize vectors of size `head_dim` to `bits` per coordinate plus one norm per vector.

    Buffers (float32): `centroids` [2**bits] by sign-magnitude label (the packed indices index
    it), `boundaries` [2**bits - 1] sorted, `rotation` [D, D]. The rotated vector is
    y = u @ rotation.T, so dequantization is y_hat @ rotation. With
    `norm_correction`, the stored norm is ||x|| / ||y_hat||: the reconstruction then has exactly
    the input's norm (MSE-optimal codebooks otherwise shrink vectors by about D_mse).
    """

    def __init__(
        self,
        head_dim: int,
        bits: int = 4,
        seed: int = 0,
        rotation: str = "haar",
        norm_correction: bool = False,
    ):
        super().__init__()
        _check_config(head_dim, bits, rotation)
        self.head_dim, self.bits, self.seed = head_dim, bits, seed
        self.rotation_kind, self.norm_correction = rotation, norm_correction
        centroids, boundaries, mse = codebook(head_dim, bits)
        self.expected_mse = mse
        self.register_buffer("centroids", codebook_in_label_order(centroids), persistent=False)
        self.register_buffer("boundaries", boundaries.clone(), persistent=False)
        self.register_buffer("rotation", make_rotation(head_dim, rotation, seed), persistent=False)

    @property
    def packed_dim(self) -> int:
        return packed_dim(self.head_dim, self.bits)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., D] float -> (packed uint8 [..., packed_dim], norms [...] in x's dtype)."""
        if not x.is_floating_point():
            raise ValueError(f"TurboQuantizer.quantize needs a floating-point tensor, got {x.dtype}")
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"last dimension must be head_dim={self.head_dim}, got shape {tuple(x.shape)}")
        xf = x.float()
        norms = torch.linalg.vector_norm(xf, dim=-1)
        # A zero vector has no direction: any unit vector works; the zero norm restores it.
        unit = xf / norms.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)
        y = unit @ self.rotation.T
        # Counting boundaries below y is bucketize without a data-dependent search: it exports and
        # lowers to one fused elementwise kernel (the relabeling too).
        idx = rank_to_label((y.unsqueeze(-1) > self.boundaries).sum(-1), self.bits)
        if self.norm_correction:
            y_norm = torch.linalg.vector_norm(self.centroids[idx], dim=-1)
            norms = norms / y_norm.clamp_min(torch.finfo(torch.float32).tiny)
        return pack_indices(idx, self.bits), norms.to(x.dtype)

    def dequantize(self, packed: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """(packed uint8 [..., packed_dim], norms [...]) -> float32 [..., D]."""
        y_hat = self.centroids[unpack_indices(packed, self.bits)]
        return (y_hat @ self.rotation) * norms.float().unsqueeze(-1)

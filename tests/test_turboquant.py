"""TurboQuant core: codebooks at the optimum, rotations, packing, quantizer, errors."""

import hashlib
import json
from importlib import resources

import pytest
import torch

from tq_export import turboquant as tq

# Exact optimum of D_mse = E||u - u_hat||^2 for the Beta coordinate law (4 / 3 / 2 bits).
OPTIMUM = {
    256: {4: 0.009408, 3: 0.034256, 2: 0.11674},
    128: {4: 0.009315, 3: 0.033966, 2: 0.11600},
    64: {4: 0.009132, 3: 0.033391, 2: 0.114526},
}
PAPER_GAUSSIAN_LIMIT = {4: 0.00950, 3: 0.03455, 2: 0.1175}


def unit_vectors(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    return x / x.norm(dim=-1, keepdim=True)


def measured_mse(d, bits, n=100_000, seed=0):
    q = tq.TurboQuantizer(d, bits, seed=seed)
    total = 0.0
    for chunk in unit_vectors(n, d, seed + 1).split(20_000):
        packed, norms = q.quantize(chunk)
        total += (chunk - q.dequantize(packed, norms)).pow(2).sum().item()
    return total / n


def test_distortion_at_the_exact_optimum(capsys):
    rows = []
    for d, table in OPTIMUM.items():
        for bits, optimum in table.items():
            got = measured_mse(d, bits)
            rows.append((d, bits, got, optimum, PAPER_GAUSSIAN_LIMIT[bits], 4.0**-bits))
            assert abs(got / optimum - 1) < 0.01, f"d={d} bits={bits}: D_mse {got:.6f} vs optimum {optimum}"
    with capsys.disabled():
        print("\n   d  bits  measured D_mse  exact optimum  paper (Gaussian limit)  lower bound 4^-b")
        for d, bits, got, opt, paper, lb in rows:
            print(f"{d:4d}  {bits:4d}  {got:14.6f}  {opt:13.6f}  {paper:22.5f}  {lb:16.6f}")


def test_shipped_codebooks_match_a_fresh_solve():
    shipped = json.loads(resources.files("tq_export").joinpath("data/codebooks.json").read_text())
    for d in tq.SHIPPED_DIMS:
        for bits in tq.CODEBOOK_BITS:
            fresh = tq.solve_codebook(d, bits)
            entry = shipped[str(d)][str(bits)]
            assert torch.allclose(torch.tensor(entry["centroids"]), torch.tensor(fresh["centroids"]), atol=1e-12)
            assert abs(entry["mse"] - fresh["mse"]) < 1e-12


def test_codebook_is_a_fixed_point_of_lloyd_max():
    centroids, boundaries, _ = tq.codebook(128, 4)
    assert torch.allclose(boundaries, (centroids[1:] + centroids[:-1]) / 2)
    assert torch.equal(centroids, -centroids.flip(0))  # symmetric law, exactly (the GPU lookup needs it)
    assert (centroids.diff() > 0).all()


@pytest.mark.parametrize("bits", tq.SUPPORTED_BITS)
def test_indices_are_sign_magnitude_labels_of_the_nearest_centroid(bits):
    q = tq.TurboQuantizer(64, bits, seed=1)
    half = 1 << (bits - 1)
    c = q.centroids
    assert torch.equal(c[half:], -c[:half]) and (c[:half].diff() > 0).all() and (c[:half] > 0).all()
    x = torch.randn(512, 64)
    idx = tq.unpack_indices(q.quantize(x)[0], bits)
    # The label of each coordinate names its nearest centroid (the sorted codebook's bucket).
    y = (x / x.norm(dim=-1, keepdim=True)) @ q.rotation.T
    nearest = (y.unsqueeze(-1) - c).abs().argmin(-1)
    assert (idx == nearest).float().mean() > 0.9999
    assert torch.equal(idx, tq.rank_to_label(torch.bucketize(y, q.boundaries), bits))


def test_unshipped_dimension_is_solved_on_demand():
    c, b, mse = tq.codebook(96, 4)
    assert torch.equal(c, -c.flip(0))
    assert c.shape == (16,) and b.shape == (15,) and 0.0091 < mse < 0.0094


@pytest.mark.parametrize("kind,d", [("haar", 64), ("haar", 256), ("hadamard", 128), ("hadamard", 256)])
def test_rotations_are_orthogonal(kind, d):
    r = tq.make_rotation(d, kind, seed=3).double()
    assert (r @ r.T - torch.eye(d, dtype=torch.float64)).abs().max() < 1e-5


def test_same_seed_same_bytes_on_every_machine():
    # Pinned digests: the rotation is a pure function of (d, seed), whatever the machine.
    digest = lambda t: hashlib.sha256(t.numpy().tobytes()).hexdigest()  # noqa: E731
    assert digest(tq.haar_rotation(64, 0)) == "9fc6932fb6e4eecb80fa0e271c7add53fa24d7645203f36a27800769293d9220"
    assert digest(tq.hadamard_rotation(128, 3)) == "ffff39a25cc2498133327b735d14e342538ee38b2d220a16c62df4771483a5c6"
    assert not torch.equal(tq.haar_rotation(64, 0), tq.haar_rotation(64, 1))
    x = unit_vectors(64, 128, 5)
    a, b = tq.TurboQuantizer(128, 4, seed=7).quantize(x), tq.TurboQuantizer(128, 4, seed=7).quantize(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("bits,per_byte", [(4, 2), (2, 4)])
def test_packing_round_trips_every_byte(bits, per_byte):
    every_byte = torch.arange(256, dtype=torch.uint8)
    idx = tq.unpack_indices(every_byte, bits)
    assert idx.shape == (256 * per_byte,) and int(idx.max()) < 2**bits
    assert torch.equal(tq.pack_indices(idx, bits), every_byte)


def test_packing_layout_is_documented_order():
    assert tq.pack_indices(torch.tensor([0xA, 0x3]), 4).item() == 0xA3  # element 2i high nibble
    assert tq.pack_indices(torch.tensor([1, 2, 3, 0]), 2).item() == 0b01_10_11_00  # first on top
    assert tq.pack_indices(torch.tensor([7, 5]), 3).item() == 0x75  # 3 bits use whole nibbles


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quantize_shapes_and_dtypes(bits):
    q = tq.TurboQuantizer(64, bits)
    x = torch.randn(2, 3, 5, 64, dtype=torch.bfloat16)
    packed, norms = q.quantize(x)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 5, 64 * (4 if bits == 3 else bits) // 8)
    assert norms.dtype == torch.bfloat16 and norms.shape == (2, 3, 5)
    out = q.dequantize(packed, norms)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.equal(q.dequantize(*q.quantize(torch.zeros(4, 64))), torch.zeros(4, 64))


def test_norm_correction(capsys):
    d, n = 128, 20_000
    x = unit_vectors(n, d, 11) * torch.rand(n, 1).add(0.5)
    q_dir = x + 0.5 * torch.randn(n, d, generator=torch.Generator().manual_seed(12)) / d**0.5
    rows = []
    for bits in (4, 3, 2):
        biases = []
        for corrected in (False, True):
            q = tq.TurboQuantizer(d, bits, norm_correction=corrected)
            packed, norms = q.quantize(x.bfloat16())  # the cache stores bf16 norms
            x_hat = q.dequantize(packed, norms)
            if corrected:
                rel = (x_hat.norm(dim=-1) / x.bfloat16().float().norm(dim=-1) - 1).abs().max().item()
                assert rel <= 2**-8, f"bits={bits}: norm off by {rel:.2e}"
            ip, ip_hat = (q_dir * x).sum(-1), (q_dir * x_hat).sum(-1)
            biases.append(((ip_hat * ip).sum() / (ip * ip).sum() - 1).item())
        rows.append((bits, *biases))
        # MSE-optimal codebooks shrink: without correction the bias is about -D_mse.
        assert biases[0] < 0 and abs(biases[1]) < abs(biases[0])
    with capsys.disabled():
        print("\nbits  inner-product bias (plain)  (norm-corrected)")
        for bits, plain, corr in rows:
            print(f"{bits:4d}  {plain:+26.5f}  {corr:+16.5f}")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(head_dim=63), "head_dim"),
        (dict(head_dim=64, bits=5), "bits"),
        (dict(head_dim=64, bits=1), "bits"),
        (dict(head_dim=96, rotation="hadamard"), "power-of-two"),
        (dict(head_dim=64, rotation="dct"), "rotation"),
    ],
)
def test_bad_quantizer_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tq.TurboQuantizer(**kwargs)


def test_non_floating_input_raises():
    q = tq.TurboQuantizer(64)
    with pytest.raises(ValueError, match="floating-point"):
        q.quantize(torch.ones(3, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="head_dim=64"):
        q.quantize(torch.ones(3, 32))

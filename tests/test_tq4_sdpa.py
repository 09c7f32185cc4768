"""tq4_sdpa: the Triton path against the fp32 reference, export, and input validation.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py); with a GPU the same
cases run compiled (marked gpu).
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

import tq_kernels  # noqa: F401
from helpers import interpreted
from tq_export.turboquant import TurboQuantizer
from tq_kernels.tq4_sdpa import tq4_sdpa_reference, tq4_sdpa_triton


def make_args(B, H_q, H_kv, Lq, S, kv_len, D, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    qz = TurboQuantizer(D, 4, seed=seed)
    # Unit-scale activations (as after q/k norms): outputs stay O(1), where bf16 rounds to <= 8e-3.
    k = torch.randn(B, H_kv, S, D, generator=g) * 0.5
    v = torch.randn(B, H_kv, S, D, generator=g) * 0.5
    q = torch.randn(B, H_q, Lq, D, generator=g).bfloat16()
    kp, kn = qz.quantize(k.bfloat16())
    vp, vn = qz.quantize(v.bfloat16())
    args = (q, kp, kn, vp, vn, qz.centroids, qz.rotation, torch.tensor([kv_len]))
    return tuple(a.to(device) for a in args)




def compare(out, ref):
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert not out.isnan().any()
    out, ref = out.float(), ref.float()
    cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    err = (out - ref).abs().max().item()
    return cos, err


# Ugly shapes: L_q in {1, 5, 64}, S in {1, 77, 300}, GQA 1/2/8, kv_len < S, B = 2, D cycling.
CASES = [
    (2, h_kv * gqa, h_kv, lq, s, kv, d)
    for (lq, s, gqa), d in zip(itertools.product((1, 5, 64), (1, 77, 300), (1, 2, 8)), itertools.cycle((64, 128, 256)))
    for h_kv in [2 if gqa < 8 else 1]
    for kv in [max(1, s - 3) if s > 1 else 1]
]


@interpreted
@pytest.mark.parametrize("B,H_q,H_kv,Lq,S,kv_len,D", CASES)
def test_triton_matches_reference(B, H_q, H_kv, Lq, S, kv_len, D):
    args = make_args(B, H_q, H_kv, Lq, S, kv_len, D)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


@interpreted
@pytest.mark.parametrize("chunk,nsplit", [(64, 1), (32, 1), (64, 3), (None, 1)])
@pytest.mark.parametrize("B,H_q,H_kv,Lq,S,kv_len,D", [(2, 16, 2, 5, 77, 74, 256), (1, 8, 8, 64, 300, 297, 128),
                                                     (2, 4, 2, 64, 300, 64, 64), (1, 4, 2, 40, 300, 130, 64)])
def test_prefill_over_a_scratch_of_few_rows(B, H_q, H_kv, Lq, S, kv_len, D, chunk, nsplit, monkeypatch):
    """A cache longer than the prefill scratch is decompressed and attended one chunk of rows at
    a time, each launch folding its keys into the running partials: 32 and 64 rows per chunk (up
    to 10 launches; chunks past kv_len, tiles whose keys end in an earlier chunk, key ranges that
    start inside a later chunk), alone and with 3 key ranges per tile; None: the whole cache at
    once. Against the reference."""
    from tq_kernels import tq4_sdpa as mod

    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"block_m": 32, "block_n": 16, "nsplit": nsplit, "split_keys": 16}
                        | ({"chunk": chunk} if chunk else {}))
    args = make_args(B, H_q, H_kv, Lq, S, kv_len, D)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


def test_decode_splits_give_four_programs_per_sm_where_each_range_gets_four_tiles_and_never_an_empty_tile():
    from tq_kernels import tq4_sdpa as mod

    cpu, sms = torch.device("cpu"), mod._num_sms(torch.device("cpu"))
    # At 4 programs per SM qwen3.5-moe's 2 heads get 264 ranges and llama's 8 heads 66: 4 tiles
    # each (64 and 128 keys) from 3 x 64 x 264 = 50688 and 3 x 128 x 66 = 25344 cached keys.
    for capacity, per_sm_qwen, per_sm_llama in ((4096, 2, 2), (25344, 2, 2), (25345, 2, 4), (32768, 2, 4),
                                                (50688, 2, 4), (50689, 4, 4), (131072, 4, 4), (262144, 4, 4)):
        qwen = mod._config(8, capacity, 1, 2, 256, cpu)  # 2 KV heads x D 256
        llama = mod._config(4, capacity, 1, 8, 128, cpu)  # 8 KV heads x D 128
        n, m = per_sm_qwen * sms, per_sm_llama * sms
        assert n <= qwen["max_splits"] * 2 < n + 2 and m <= llama["max_splits"] * 8 < m + 8, capacity
        for cfg, block_n in ((qwen, 64), (llama, 128)):
            assert cfg["nsplit"] == min(cfg["max_splits"], -(-capacity // block_n)), capacity
    assert (qwen["block_n"], llama["block_n"]) == (64, 128)  # 128-key tiles where registers allow
    assert mod._config(1, 65536, 1, 1, 64, cpu)["nsplit"] == 2 * sms  # one small head still fills the GPU
    assert mod._config(8, 100, 1, 2, 256, cpu)["nsplit"] == 2  # never more splits than 64-key tiles
    assert mod._config(4, 300, 1, 8, 128, cpu)["nsplit"] == 3  # ... or 128-key tiles


def test_early_exit_and_two_step_merge_at_head_dim_256_only_the_latter_from_128_splits():
    from tq_kernels import tq4_sdpa as mod

    cpu = torch.device("cpu")
    for capacity, merge_cols in ((4096, None), (32768, (16, 32, 4)), (131072, (16, 32, 4))):
        qwen = mod._config(8, capacity, 1, 2, 256, cpu)
        assert qwen["early"] and qwen["merge_cols"] == merge_cols and (qwen["nsplit"] >= 128) == bool(merge_cols)
    for capacity in (4096, 131072):
        llama = mod._config(4, capacity, 1, 8, 128, cpu)
        assert not llama["early"] and llama["merge_cols"] is None


def test_scratch_only_for_prefill_and_in_bounded_chunks():
    from tq_kernels import tq4_sdpa as mod

    cpu = torch.device("cpu")
    assert mod._config(8, 4096, 1, 2, 256, cpu)["decode"]  # decode: each row is read once anyway
    qwen = mod._config(4096 * 8, 131072, 1, 2, 256, cpu)
    llama = mod._config(4096 * 4, 131072, 1, 8, 128, cpu)
    assert not qwen["decode"] and (qwen["chunk"], llama["chunk"]) == (32768, 16384)  # 64 MiB of K and V
    assert mod._config(4096 * 8, 131072, 1, 64, 256, cpu)["chunk"] == 1024  # never below one block



@interpreted
@pytest.mark.parametrize("D", [64, 256])
@pytest.mark.parametrize("row0,chunk", [(0, 77), (32, 40)])
def test_scratch_rows_are_the_decompressed_cache(D, row0, chunk):
    """The prefill scratch holds each row of [row0, row0 + chunk) below kv_len as dequantize_tq4
    gives it (K also times the score scale in base 2), at row - row0, and leaves the rows past
    kv_len alone: the whole cache, and a chunk that ends past kv_len."""
    import triton
    from torch.library import wrap_triton
    from tq_kernels import tq4_sdpa as mod

    B, H_kv, S, kv_len = 2, 2, 77, 70
    q, kp, kn, vp, vn, cent, rot, kvl = make_args(B, 4, H_kv, 1, S, kv_len, D)
    qk_scale = 0.125 * mod.LOG2E
    kd = torch.full((B * H_kv, chunk, D), 7.0, dtype=torch.bfloat16)
    vd = torch.full((B * H_kv, chunk, D), 7.0, dtype=torch.bfloat16)
    wrap_triton(mod._tq4_dequant_kernel)[(triton.cdiv(chunk, 16), B * H_kv)](
        kp, vp, kn, vn, cent, rot, kvl, kd, vd, kp.stride(0), kp.stride(1), kp.stride(2),
        kn.stride(0), kn.stride(1), H_kv, row0, chunk, qk_scale, D=D, BLOCK_N=16, BLOCK_C=32, INTERPRET=True)
    filled = kv_len - row0
    for got, want in ((kd, mod.dequantize_tq4(kp, kn, cent, rot) * qk_scale),
                      (vd, mod.dequantize_tq4(vp, vn, cent, rot))):
        got = got.view(B, H_kv, chunk, D)
        torch.testing.assert_close(got[:, :, :filled].float(), want[:, :, row0:kv_len], rtol=1e-2, atol=1e-2)
        assert (got[:, :, filled:] == 7.0).all()


@interpreted
@pytest.mark.parametrize("Lq,kv_len,nsplit,split_keys", [(37, 90, 3, 16), (37, 37, 5, 8), (64, 300, 4, 64),
                                                          (37, 90, 3, 1024)])
def test_prefill_over_the_scratch_split_over_keys(Lq, kv_len, nsplit, split_keys, monkeypatch):
    """A chunk after cached positions, or a fresh prompt, with the scratch path's keys cut into
    up to nsplit ranges per query tile (one per split_keys cached keys; some empty for the early
    tiles) and merged; with one range in use (the last case) the attention stores the output
    itself and the merge leaves it."""
    from tq_kernels import tq4_sdpa as mod

    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"block_m": 32, "block_n": 16, "nsplit": nsplit,
                                                 "split_keys": split_keys})
    args = make_args(2, 8, 2, Lq, 300, kv_len, 64)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


def test_prefill_splits_keys_only_when_its_tiles_leave_sms_idle():
    from tq_kernels import tq4_sdpa as mod

    cpu, sms = torch.device("cpu"), mod._num_sms(torch.device("cpu"))
    # A 4096-token prompt (qwen3.5-moe heads: 512 query tiles) and a 512-token chunk with llama
    # heads (128 tiles) fill the SMs; a 512-token chunk with qwen heads (64) or a few tokens do not.
    assert mod._config(4096 * 8, 4096, 1, 2, 256, cpu)["nsplit"] == 1
    assert mod._config(512 * 4, 8192, 1, 8, 128, cpu)["nsplit"] == 1
    for M_total in (512 * 8, 40):
        cfg = mod._config(M_total, 32768, 1, 2, 256, cpu)
        tiles = -(-M_total // cfg["block_m"]) * 2
        # About two programs per SM at most; the most splits that allows, up to 32.
        assert not cfg["decode"] and 1 < cfg["nsplit"] and tiles * cfg["nsplit"] <= 2 * sms
        assert cfg["nsplit"] == 32 or 2 * sms < 2 * tiles * cfg["nsplit"]


@interpreted
@pytest.mark.parametrize("D", [64, 256])
def test_query_rotation_walks_more_row_tiles_than_programs(D, monkeypatch):
    """Each rotation program holds a chunk of R and walks row tiles i, i + programs, ...: 37
    positions x GQA 4 = 148 rows in 16-row tiles over 3 programs per column chunk, the last
    tile ragged (decode's kernels, here given a prompt's rows)."""
    from tq_kernels import tq4_sdpa as mod

    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"rotate": (16, 32, 3, 4), "decode": True, "nsplit": 2})
    args = make_args(1, 8, 2, 37, 40, 40, D)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


@interpreted
@pytest.mark.parametrize("Lq,kv_len", [(37, 37), (37, 90), (3, 90), (1, 90)])
def test_small_tiles_mask_exactly_the_tiles_that_cross_the_diagonal(Lq, kv_len, monkeypatch):
    """With the scratch, the loop runs tiles left of a query tile's first position without masks
    and the rest with them. 16 x 16 tiles put many tile edges on and off the diagonal (GQA 4: 4
    rows per position), for a fresh prompt, a chunk after cached positions, and decode."""
    from tq_kernels import tq4_sdpa as mod

    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"block_m": 16, "block_n": 16, "nsplit": 1, "decode": False})
    args = make_args(1, 8, 2, Lq, 96, kv_len, 64)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


@interpreted
@pytest.mark.parametrize("H_q,H_kv,Lq,D", [(16, 2, 1, 256), (32, 8, 1, 128), (8, 2, 3, 64)])
def test_split_decode(H_q, H_kv, Lq, D):
    """Decode splits the cache over programs (the split-K kernel, computed transposed, then the
    merge): against the reference, including several query positions in one packed tile (L_q 3,
    GQA 4)."""
    from tq_kernels import tq4_sdpa as mod

    assert mod._config(Lq * H_q // H_kv, 300, 2, H_kv, D, torch.device("cpu"))["nsplit"] > 1
    args = make_args(2, H_q, H_kv, Lq, 300, 290, D)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


@interpreted
@pytest.mark.parametrize("Lq", [1, 5])
def test_empty_cache_and_rows_before_the_first_position_give_zeros(Lq):
    args = make_args(2, 4, 2, Lq, 16, 0, 64)
    out = tq4_sdpa_triton(*args)
    assert not out.isnan().any() and (out == 0).all()
    # kv_len = 3 < L_q = 5: the first two rows precede position 0 and see nothing.
    args = make_args(1, 4, 2, 5, 16, 3, 64)
    out, ref = tq4_sdpa_triton(*args), tq4_sdpa_reference(*args)
    assert (out[:, :, :2] == 0).all() and (ref[:, :, :2] == 0).all()
    cos, err = compare(out, ref)
    assert cos >= 0.999 and err <= 2e-2


@interpreted
@pytest.mark.parametrize("whole", [True, False], ids=["whole", "by-groups"])
@pytest.mark.parametrize("merge", [{}, {"early": True}, {"early": True, "merge_cols": (16, 32, 4)}],
                         ids=["every-split-stores", "early-exit", "early-exit-two-step-merge"])
@pytest.mark.parametrize("nsplit,S,kv_len", [(37, 700, 650), (100, 1700, 1590), (100, 1700, 900)])
def test_merge_of_many_splits_some_empty(nsplit, S, kv_len, merge, whole, monkeypatch):
    """The merge reads its splits up to a power-of-two bound, masked past nsplit: all at once
    (whole: 37 splits as tiles of 32 + 8, 100 as 64 + 64, in the first merge step), or in an
    unrolled loop that past its first 64 splits runs a group of 64 only when some split in it
    holds keys. It reads every split's log-sum-exp without asking kv_len which hold keys: every
    split stores one (-inf where it holds no keys), and its partial row unless it exits early;
    the partial buffers start as NaN here, and a row that the merge did not weigh by 0 would make
    the output NaN. 37 splits of 32 keys (several chunks of 16, the last ragged) over
    a 650-key cache: the splits past the end hold nothing. 100 splits of 16 keys (a bound of 128,
    two groups): at kv_len 1590 all 100 hold keys, so the second group must run; at 900 only 57
    do and it is skipped. Each case also with early exits, and with a first merge by column
    chunks."""
    from tq_kernels import tq4_sdpa as mod

    partials = mod._partials
    monkeypatch.setattr(mod, "_partials", lambda *a: tuple(t.fill_(float("nan")) for t in partials(*a)))
    monkeypatch.setattr(mod, "_whole_merge", lambda *a: whole)
    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"nsplit": nsplit, "block_n": 16} | merge)
    args = make_args(1, 8, 2, 1, S, kv_len, 64)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


def test_merges_load_whole_where_it_fits_in_registers():
    """The launcher's choice for the benchmark shapes (4 warps): qwen3.5-moe's first merge step
    over 264 splits of 32 columns loads whole; its merge at 4K (64 splits of 256 columns and a
    256 x 64 chunk of R) would spill and goes by groups; llama's (up to 66 splits of 128 columns,
    a 128 x 64 chunk of R) loads whole."""
    from tq_kernels import tq4_sdpa as mod

    assert mod._whole_merge((256 + 8) * 32, 4)
    assert not mod._whole_merge(64 * 256 + 256 * 64, 4)
    assert mod._whole_merge(128 * 128 + 128 * 64, 4)


def test_whole_merges_load_the_splits_as_two_power_of_two_tiles():
    """A whole merge covers nsplit with the largest power of two within it and the next power of
    two at or above the rest, not with one tile of the next power of two above nsplit (qwen3.5-moe
    128K: 256 + 8 splits, not 512); a power of two needs no second tile, and a split count that is
    not static keeps the launcher's bound."""
    from tq_kernels import tq4_sdpa as mod

    assert mod._whole_split_tiles(264, 512) == (256, 8)
    assert mod._whole_split_tiles(132, 256) == (128, 4)
    assert mod._whole_split_tiles(66, 128) == (64, 2)
    assert mod._whole_split_tiles(37, 64) == (32, 8)
    assert mod._whole_split_tiles(64, 64) == (64, 0)
    assert mod._whole_split_tiles(1, 16) == (1, 0)
    for nsplit in range(1, 600):
        head, tail = mod._whole_split_tiles(nsplit, None)
        rest = nsplit - head
        assert head & (head - 1) == 0 and head <= nsplit < 2 * head, nsplit
        assert tail == 0 if rest == 0 else (tail & (tail - 1) == 0 and rest <= tail < 2 * rest), nsplit
    import sympy

    assert mod._whole_split_tiles(sympy.Symbol("n"), 512) == (512, 0)


@interpreted
@pytest.mark.parametrize("D,kv_len", [(128, 937), (128, 1000), (256, 650)])
def test_decode_ranges_of_several_tiles(D, kv_len, monkeypatch):
    """Two key ranges of several tiles each, the last one ragged: at 128-key tiles every step
    loads the next tile's norms (masked past the range) and uses the ones the step before loaded."""
    from tq_kernels import tq4_sdpa as mod

    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"nsplit": 2})
    args = make_args(1, 8, 2, 1, 1000, kv_len, D)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


@interpreted
@pytest.mark.parametrize("D,Lq,kv_len", [(128, 1, 300), (256, 1, 257), (64, 2, 200)])
def test_one_tile_ranges_match_the_loop(D, Lq, kv_len, monkeypatch):
    """Where the split count covers the cache, every key range is one tile, loaded before the
    prologue (ONE_TILE): the same output as the loop over the same ranges, to the bit, ranges
    past kv_len included. The launcher takes it for 4K caches at both benchmark shapes, not for
    32K or 128K ones, not when fewer splits leave ranges of several tiles, and not for 16-row
    query tiles (see `_one_tile`)."""
    from tq_kernels import tq4_sdpa as mod

    cpu = torch.device("cpu")
    assert mod._one_tile(300, mod._config(Lq * 4, 300, 2, 2, D, cpu))
    assert not mod._one_tile(300, mod._config(12, 300, 2, 2, D, cpu))  # block_m 16
    args = make_args(2, 8, 2, Lq, 300, kv_len, D)
    one = tq4_sdpa_triton(*args)
    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"one_tile": False})
    assert torch.equal(one, tq4_sdpa_triton(*args))
    cos, err = compare(one, tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"
    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", None)
    for G, H_kv, D in [(8, 2, 256), (4, 8, 128)]:  # qwen3.5-moe, llama
        assert mod._one_tile(4096, mod._config(G, 4096, 1, H_kv, D, cpu))
        assert not mod._one_tile(32768, mod._config(G, 32768, 1, H_kv, D, cpu))
        assert not mod._one_tile(131072, mod._config(G, 131072, 1, H_kv, D, cpu))
    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"nsplit": 2})
    assert not mod._one_tile(300, mod._config(4, 300, 2, 2, 128, cpu))


@interpreted
@pytest.mark.parametrize("D,kv_len", [(128, 300), (256, 200), (128, 1000)])
def test_short_ranges_of_a_long_cache_match_the_loop(D, kv_len, monkeypatch):
    """A cache longer than its splits cover (4 splits of 2048 rows here) decides on the device
    (SHORT): at kv_len 300 / 200 every range holds at most one tile and runs as `_one_tile` does,
    at 1000 each holds two and runs the loop. Either way the same output as the loop alone, to
    the bit. The launcher asks for it at head_dim 256 only (measured faster there, not at 128)."""
    from tq_kernels import tq4_sdpa as mod

    cpu = torch.device("cpu")
    for G, H_kv, hd, short in [(8, 2, 256, True), (4, 8, 128, False)]:  # qwen3.5-moe, llama at 128K
        assert mod._short_ranges(131072, mod._config(G, 131072, 1, H_kv, hd, cpu)) == short
    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"nsplit": 4, "short": True})
    cfg = mod._config(4, 2048, 1, 2, D, cpu)
    assert mod._short_ranges(2048, cfg) and not mod._one_tile(2048, cfg)
    args = make_args(1, 8, 2, 1, 2048, kv_len, D)
    short = tq4_sdpa_triton(*args)
    monkeypatch.setattr(mod, "CONFIG_OVERRIDE", {"nsplit": 4, "short": False})
    assert torch.equal(short, tq4_sdpa_triton(*args))
    cos, err = compare(short, tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


@interpreted
@pytest.mark.parametrize("kv_len", [1999, 300])
def test_split_decode_over_long_cache_matches_reference(kv_len):
    # Decode with S large enough that the sequence is split over many programs; at kv_len 300
    # three of the 16 ranges hold keys and the merge reads only those.
    args = make_args(1, 16, 2, 1, 2048, kv_len, 128)
    cos, err = compare(tq4_sdpa_triton(*args), tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2


def test_reference_equals_dequantize_then_sdpa():
    q, kp, kn, vp, vn, c, r, kv_len = make_args(1, 4, 2, 6, 6, 6, 64)
    qz = TurboQuantizer(64, 4, seed=0)
    k, v = qz.dequantize(kp, kn), qz.dequantize(vp, vn)
    want = F.scaled_dot_product_attention(q.float(), k, v, is_causal=True, enable_gqa=True)
    got = tq4_sdpa_reference(q, kp, kn, vp, vn, c, r, kv_len)
    # Same positions (kv_len == L_q == S) and the same dequantized cache: only bf16 rounding left.
    assert (got.float() - want).abs().max() < 1e-2


def test_op_on_cpu_is_the_reference():
    args = make_args(1, 4, 2, 3, 9, 9, 64)
    assert torch.equal(torch.ops.tq.tq4_sdpa(*args), tq4_sdpa_reference(*args))


class Attend(torch.nn.Module):
    def __init__(self, args):
        super().__init__()
        for name, t in zip(("kp", "kn", "vp", "vn", "c", "r"), args[1:7]):
            self.register_buffer(name, t)

    def forward(self, q, kv_len):
        return torch.ops.tq.tq4_sdpa(q, self.kp, self.kn, self.vp, self.vn, self.c, self.r, kv_len)


def test_export_keeps_one_node_with_dynamic_lq():
    args = make_args(1, 4, 2, 5, 32, 20, 64)
    L = torch.export.Dim("L", min=1, max=32)
    ep = torch.export.export(Attend(args), (args[0], args[7]), dynamic_shapes=({2: L}, None))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("tq.tq4_sdpa.default") == 1, targets
    q7 = make_args(1, 4, 2, 7, 32, 20, 64)[0]
    assert torch.equal(ep.module()(q7, args[7]), tq4_sdpa_reference(q7, *args[1:]))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: (a[0].float(), *a[1:]), "q must be bfloat16"),
        (lambda a: (a[0][..., :32].contiguous(), *a[1:]), "head_dim"),
        (lambda a: (a[0], a[1].int(), *a[2:]), "k_packed must be uint8"),
        (lambda a: (a[0], a[1][:, :, :5], *a[2:]), "differ"),
        (lambda a: (a[0][:, :3], *a[1:]), "multiple of H_kv"),
        (lambda a: (*a[:2], a[2].half(), *a[3:]), "k_norms"),
        (lambda a: (*a[:5], a[5].double(), *a[6:]), "centroids"),
        (lambda a: (*a[:5], a[5] + 1e-3, *a[6:]), "symmetric"),
        (lambda a: (*a[:6], a[6][:8], a[7]), "rotation"),
        (lambda a: (*a[:7], a[7].int()), "kv_len"),
        (lambda a: (*a[:7], a[7].to("meta")), "one device"),
    ],
)
def test_bad_inputs_raise(mutate, match):
    args = mutate(make_args(1, 4, 2, 2, 8, 8, 64))
    with pytest.raises(ValueError, match=match):
        tq4_sdpa_reference(*args)
    with pytest.raises(ValueError, match=match):
        tq4_sdpa_triton(*args)


@pytest.mark.gpu
@pytest.mark.parametrize("B,H_q,H_kv,Lq,S,kv_len,D", CASES + [(1, 16, 2, 1, 40000, 39000, 256),
                                                             (1, 16, 2, 300, 1000, 1000, 256),
                                                             (1, 16, 2, 64, 40000, 39000, 256),  # 2 chunks
                                                             (1, 32, 8, 300, 40000, 30000, 128),  # 3
                                                             # long key ranges: the values' offsets
                                                             (1, 32, 8, 1, 131072, 131072, 128)])
def test_gpu_triton_matches_reference(B, H_q, H_kv, Lq, S, kv_len, D):
    args = make_args(B, H_q, H_kv, Lq, S, kv_len, D, device="cuda")
    out = torch.ops.tq.tq4_sdpa(*args)
    cos, err = compare(out, tq4_sdpa_reference(*args))
    assert cos >= 0.999 and err <= 2e-2, f"cosine {cos:.6f}, max abs err {err:.4f}"


def test_pdl_only_for_real_gpu_tensors():
    """Programmatic dependent launch is for eager GPU calls: not on the CPU, and not while tracing
    (an export hands the op fake tensors; AOTInductor launches without PDL, so the exported
    program keeps the kernels compiled without it)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tq_kernels.tq4_sdpa import _use_pdl

    assert not _use_pdl(torch.zeros(1, dtype=torch.bfloat16))
    with FakeTensorMode():
        fake = torch.empty(1, dtype=torch.bfloat16, device="cuda")
    assert not _use_pdl(fake)


@pytest.mark.gpu
@pytest.mark.parametrize("S", [4096, 40000], ids=["one-merge", "two-step-merge"])
def test_gpu_decode_launches_with_pdl_and_matches_without(S):
    from tq_kernels import tq4_sdpa as mod

    args = make_args(1, 16, 2, 1, S, S - 1096, 256, device="cuda")
    assert mod._use_pdl(args[0])
    with_pdl = tq4_sdpa_triton(*args)
    mod.CONFIG_OVERRIDE = dict(pdl=False)
    try:
        without = tq4_sdpa_triton(*args)
    finally:
        mod.CONFIG_OVERRIDE = None
    assert torch.equal(with_pdl, without)


@pytest.mark.gpu
@pytest.mark.parametrize("S", [4096, 40000], ids=["one-merge", "two-step-merge"])
def test_gpu_decode_replays_in_a_cuda_graph(S):
    """A CUDA graph keeps the PDL launches as programmatic edges: replays over a cache whose
    contents and kv_len change between them give what eager calls give (with 40000 rows the
    partials are merged in two steps)."""
    args = list(make_args(1, 16, 2, 1, S, S - 1096, 256, device="cuda"))
    other = make_args(1, 16, 2, 1, S, S - 1596, 256, device="cuda", seed=1)
    static = [a.clone() for a in args]
    torch.ops.tq.tq4_sdpa(*static)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.tq.tq4_sdpa(*static)
    for inputs in (args, other):
        for dst, src in zip(static, inputs):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, torch.ops.tq.tq4_sdpa(*inputs))


def test_prmt_asm_is_one_line():
    # Inductor copies the PTX constant into generated Python source; a newline in it broke the
    # AOTInductor compile of every exported TurboQuant program.
    from tq_kernels.tq4_sdpa import _K_CODES_ASM, _PRMT_ASM, _V_CODES_ASM

    assert "\n" not in _PRMT_ASM.value and _PRMT_ASM.value.count("prmt.b32") == 10
    assert "\n" not in _K_CODES_ASM.value and _K_CODES_ASM.value.count("prmt.b32") == 4
    assert "\n" not in _V_CODES_ASM.value and _V_CODES_ASM.value.count("prmt.b32") == 8

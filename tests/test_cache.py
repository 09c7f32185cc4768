"""KV caches: writes by index, exports as mutated buffers, memory, errors."""

import pytest
import torch

from tq_export.cache import KVCache, TurboQuantKVCache


class Writer(torch.nn.Module):
    def __init__(self, cache):
        super().__init__()
        self.cache = cache

    def forward(self, input_pos, k, v):
        self.cache.update(input_pos, k, v)
        return self.cache.k_norms.float().sum() if hasattr(self.cache, "k_norms") else self.cache.k_cache.sum()


def kv(t, seed, b=1, h=2, d=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)


def test_update_writes_at_positions_and_matches_quantizer():
    cache = TurboQuantKVCache(n_kv_heads=2, head_dim=64, max_seq_len=16, batch_size=2)
    k, v = kv(3, 0, b=2)
    cache.update(torch.tensor([4, 5, 6]), k, v)
    packed, norms = cache.k_quantizer.quantize(k)
    assert torch.equal(cache.k_packed[:, :, 4:7], packed)
    assert torch.equal(cache.k_norms[:, :, 4:7], norms.bfloat16())
    assert (cache.k_packed[:, :, :4] == 0).all() and (cache.v_norms[:, :, 7:] == 0).all()
    k_hat, v_hat = cache.dequantize()
    cos = torch.nn.functional.cosine_similarity(v_hat[:, :, 4:7], v, dim=-1)
    assert cos.min() > 0.98
    cache.reset()
    assert (cache.k_norms == 0).all() and (cache.v_packed == 0).all()


@pytest.mark.parametrize("make", [lambda: KVCache(2, 64, 32), lambda: TurboQuantKVCache(2, 64, 32)])
def test_export_with_runtime_position_matches_eager(make):
    eager, exported_src = Writer(make()), Writer(make())
    T = torch.export.Dim("T", min=1, max=32)
    k0, v0 = kv(2, 1)
    ep = torch.export.export(exported_src, (torch.arange(2), k0, v0),
                             dynamic_shapes=({0: T}, {2: T}, {2: T}))
    # Functionalized (as ExecuTorch's to_edge does it), the writes are buffer mutations.
    mutated = ep.run_decompositions({}).graph_signature.buffers_to_mutate
    assert len(mutated) == (4 if hasattr(eager.cache, "k_norms") else 2)
    exported = ep.module()
    for step, (pos, t) in enumerate([(0, 5), (5, 1), (6, 3)]):
        k, v = kv(t, 10 + step)
        input_pos = torch.arange(pos, pos + t)
        eager(input_pos, k, v)
        exported(input_pos, k, v)
    got = dict(exported.named_buffers())
    for name, buf in eager.named_buffers():
        assert torch.equal(got[name], buf), name


def test_bytes_per_token():
    bf16, tq4 = KVCache(2, 256, 8), TurboQuantKVCache(2, 256, 8)
    assert bf16.bytes_per_token == 2 * 2 * 256 * 2
    assert tq4.bytes_per_token == 2 * (128 + 128 + 2 + 2)
    assert bf16.bytes_per_token / tq4.bytes_per_token >= 3.9
    assert TurboQuantKVCache(2, 256, 8, k_bits=4, v_bits=2).bytes_per_token == 2 * (128 + 64 + 4)


def test_bad_updates_raise():
    cache = TurboQuantKVCache(2, 64, 8)
    k, v = kv(2, 0)
    with pytest.raises(ValueError, match="shape"):
        cache.update(torch.arange(2), kv(2, 0, h=3)[0], kv(2, 0, h=3)[1])
    with pytest.raises(ValueError, match="differ"):
        cache.update(torch.arange(2), k, kv(3, 0)[1])
    with pytest.raises(ValueError, match="max_seq_len=8"):
        cache.update(torch.tensor([7, 8]), k, v)
    with pytest.raises(ValueError, match="input_pos"):
        cache.update(torch.arange(3), k, v)
    with pytest.raises(ValueError, match="floating-point"):
        cache.update(torch.arange(2), k.int(), v.int())
    with pytest.raises(ValueError, match="head_dim"):
        TurboQuantKVCache(2, 63, 8)
    with pytest.raises(ValueError, match="bits"):
        TurboQuantKVCache(2, 64, 8, v_bits=8)

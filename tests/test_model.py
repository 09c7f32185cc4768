"""Qwen 3.5 MoE against transformers itself, the hybrid-op references, and torch.export with dynamic T.

Every comparison loads a tiny random checkpoint written by transformers' `save_pretrained` into both
transformers and our model, in fp32, and holds max |ours - transformers| <= 1e-4 * max |transformers|.
"""

import pytest
import torch
import torch.nn.functional as F
import tq_kernels.hybrid_ops as ops
from transformers.utils import logging as hf_logging

from tq_export import models
from tq_export.models.qwen3_5_moe import FULL, LINEAR, Qwen35Moe, Qwen35MoeConfig

from helpers import greedy

hf_logging.set_verbosity_error()
REL_TOL = 1e-4

# (id, overrides): layer patterns, GQA 1/4/8, head_dim 64/128/256, partial rotary, top-k 1/2/8.
CONFIGS = [
    ("default", {}),  # [L, L, L, F], GQA 4, head_dim 256, rotary 1/4, top-2 of 8
    ("full-first", dict(layer_types=[FULL, LINEAR, FULL, LINEAR], num_attention_heads=2, num_key_value_heads=2,
                        head_dim=64, num_experts=4, num_experts_per_tok=1, linear_num_value_heads=2,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5},
                        tie_word_embeddings=True)),  # GQA 1, head_dim 64, rotary 1/2, top-1, tied head
    ("gqa8", dict(layer_types=[LINEAR, FULL, LINEAR, LINEAR, FULL], num_attention_heads=8, num_key_value_heads=1,
                  head_dim=128, num_experts=8, num_experts_per_tok=8, linear_num_value_heads=8,
                  linear_conv_kernel_dim=3,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 1.0})),
]




def hf_model(path, multimodal=False):
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeForConditionalGeneration

    cls = Qwen3_5MoeForConditionalGeneration if multimodal else Qwen3_5MoeForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32).eval()


def rel_err(got, ref):
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def prompt(n, seed=0, vocab=512, batch=1):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Against transformers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,overrides", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_matches_transformers_prefill_decode_greedy(tiny, name, overrides):
    path = tiny(**overrides)
    ref_model, ours = hf_model(path), models.load(path, max_seq_len=128, dtype=torch.float32)
    ids = prompt(21)
    n = ids.shape[1]
    with torch.no_grad():
        prefill = rel_err(ours(ids, torch.arange(n)), ref_model(input_ids=ids).logits)
        gen = ref_model.generate(ids, max_new_tokens=32, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=0)
        seq = gen.sequences
        # 16 decode steps, fed transformers' own tokens, against its cached-generation logits.
        decode = max(rel_err(ours(seq[:, p:p + 1], torch.tensor([p]))[:, -1], gen.logits[i + 1])
                     for i, p in enumerate(range(n, n + 16)))
        tokens = greedy(ours, ids, 32)
    print(f"\n[{name}] prefill rel err {prefill:.2e}, decode rel err (16 steps) {decode:.2e}, "
          f"greedy 32 identical: {tokens == seq[0, n:].tolist()}")
    assert prefill <= REL_TOL
    assert decode <= REL_TOL
    assert tokens == seq[0, n:].tolist()



def test_multimodal_sharded_checkpoint_matches_transformers(tiny):
    """Qwen3_5MoeForConditionalGeneration weights (model.language_model.*, a vision tower), in 20+ shards."""
    path = tiny(multimodal=True, max_shard_size="100KB")
    assert (path / "model.safetensors.index.json").is_file()
    ref_model, ours = hf_model(path, multimodal=True), models.load(path, max_seq_len=64, dtype=torch.float32)
    ids = prompt(17, seed=3)
    with torch.no_grad():
        err = rel_err(ours(ids, torch.arange(17)), ref_model(input_ids=ids).logits)
    print(f"\n[multimodal] prefill rel err {err:.2e}")
    assert err <= REL_TOL


def test_batch_and_chunked_prefill(tiny):
    """Batch of 2; a prompt prefilled in two chunks (the states carry over) equals one prefill."""
    path = tiny()
    ref_model = hf_model(path)
    ours = models.load(path, max_seq_len=64, dtype=torch.float32, batch_size=2)
    ids = prompt(20, seed=4, batch=2)
    with torch.no_grad():
        ref = ref_model(input_ids=ids).logits
        whole = ours(ids, torch.arange(20))
        ours.reset()
        first = ours(ids[:, :13], torch.arange(13))
        second = ours(ids[:, 13:], torch.arange(13, 20))
    assert rel_err(whole, ref) <= REL_TOL
    assert rel_err(torch.cat([first, second], dim=1), ref) <= REL_TOL


def test_reset_restarts_the_sequence(tiny):
    ours = models.load(tiny(), max_seq_len=64, dtype=torch.float32)
    ids = prompt(9, seed=5)
    with torch.no_grad():
        a = ours(ids, torch.arange(9))
        ours(prompt(4, seed=6), torch.arange(9, 13))
        ours.reset()
        b = ours(ids, torch.arange(9))
    assert torch.equal(a, b)
    for name, buf in ours.named_buffers():
        if name != "rope.inv_freq":
            ours.reset()
            assert not buf.any(), name


def test_bf16_model_close_to_fp32(tiny):
    path = tiny()
    ids = prompt(16, seed=7)
    with torch.no_grad():
        ref = models.load(path, max_seq_len=32, dtype=torch.float32)(ids, torch.arange(16))
        got = models.load(path, max_seq_len=32, dtype=torch.bfloat16)(ids, torch.arange(16))
    assert got.dtype == torch.bfloat16
    assert F.cosine_similarity(got.float().flatten(), ref.flatten(), dim=0) > 0.999


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_config_from_hf(tiny):
    from tq_export.checkpoint import read_config

    cfg = Qwen35MoeConfig.from_hf_config(read_config(tiny()))
    assert cfg.layer_types == (LINEAR, LINEAR, LINEAR, FULL)
    assert (cfg.head_dim, cfg.rotary_dim, cfg.num_kv_heads) == (256, 64, 1)
    assert cfg.conv_dim == 2 * 2 * 32 + 4 * 32

    raw = read_config(tiny())
    legacy = {k: v for k, v in raw.items() if k != "layer_types"} | {"full_attention_interval": 2}
    assert Qwen35MoeConfig.from_hf_config(legacy).layer_types == (LINEAR, FULL, LINEAR, FULL)
    assert Qwen35MoeConfig.from_hf_config({"text_config": raw, "model_type": "qwen3_5_moe"}) == cfg
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        Qwen35MoeConfig.from_hf_config(raw | {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="'num_experts' is missing"):
        Qwen35MoeConfig.from_hf_config({k: v for k, v in raw.items() if k != "num_experts"})


# --------------------------------------------------------------------------------------------
# Hybrid-op references against transformers' torch implementations
# --------------------------------------------------------------------------------------------


def test_gated_delta_rule_matches_transformers():
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as hf

    g = torch.Generator().manual_seed(0)
    B, T, Hk, Hv, Dk, Dv = 2, 37, 2, 4, 16, 24  # T not a multiple of HF's chunk of 64; GQA ratio 2
    q, k = torch.randn(B, T, Hk, Dk, generator=g), torch.randn(B, T, Hk, Dk, generator=g)
    v = torch.randn(B, T, Hv, Dv, generator=g)
    decay = -F.softplus(torch.randn(B, T, Hv, generator=g))
    beta = torch.rand(B, T, Hv, generator=g)
    state = torch.randn(B, Hv, Dk, Dv, generator=g)
    out, new = ops.gated_delta_rule_ref(q, k, v, decay, beta, state)
    ref_out, ref_new = hf.torch_chunk_gated_delta_rule(q, k, v, g=decay, beta=beta, initial_state=state,
                                                       output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(new, ref_new) < 1e-5
    # One step (decode) against the recurrent form; the op returns a fresh state, never the input.
    out1, new1 = torch.ops.tq.gated_delta_rule(q[:, :1], k[:, :1], v[:, :1], decay[:, :1], beta[:, :1], state)
    ref1, refn1 = hf.torch_recurrent_gated_delta_rule(q[:, :1], k[:, :1], v[:, :1], g=decay[:, :1],
                                                      beta=beta[:, :1], initial_state=state,
                                                      output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert rel_err(out1, ref1) < 1e-6 and rel_err(new1, refn1) < 1e-6
    assert new1.data_ptr() != state.data_ptr()


def test_causal_conv1d_matches_transformers():
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as hf

    g = torch.Generator().manual_seed(1)
    B, T, C, K = 2, 11, 24, 4
    x, w = torch.randn(B, T, C, generator=g), torch.randn(C, K, generator=g)
    out, state = ops.causal_conv1d_ref(x, w, torch.zeros(B, K - 1, C))
    ref = hf.causal_conv1d_fn(x.transpose(1, 2), w, None, activation="silu").transpose(1, 2)
    assert rel_err(out, ref) < 1e-6
    assert torch.equal(state, x[:, -(K - 1):])
    # Decode step: transformers' update keeps a K-long window [B, C, K]; ours keeps the K-1 inputs.
    x1 = torch.randn(B, 1, C, generator=g)
    hf_state = torch.cat([torch.zeros(B, C, 1), x[:, -(K - 1):].transpose(1, 2)], dim=-1)
    ref1 = hf.causal_conv1d_update(x1.transpose(1, 2), hf_state, w, None, "silu").transpose(1, 2)
    out1, _ = torch.ops.tq.causal_conv1d(x1, w, state, True)
    assert rel_err(out1, ref1) < 1e-6


def test_moe_experts_matches_transformers():
    from transformers import Qwen3_5MoeTextConfig
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as hf

    torch.manual_seed(2)
    cfg = Qwen3_5MoeTextConfig(hidden_size=32, num_experts=6, moe_intermediate_size=16, num_experts_per_tok=3)
    experts = hf.Qwen3_5MoeExperts(cfg)
    torch.nn.init.normal_(experts.gate_up_proj, std=0.2)
    torch.nn.init.normal_(experts.down_proj, std=0.2)
    x = torch.randn(13, 32)
    ids = torch.stack([torch.randperm(6)[:3] for _ in range(13)])
    w = torch.rand(13, 3)
    with torch.no_grad():
        ref = experts(x, ids, w)
    got = torch.ops.tq.moe_experts(x, ids, w, experts.gate_up_proj.detach(), experts.down_proj.detach())
    assert rel_err(got, ref) < 1e-6


@pytest.mark.parametrize("op,args", [
    (torch.ops.tq.gated_delta_rule.default, lambda g: (torch.randn(1, 3, 1, 8, generator=g),
                                                       torch.randn(1, 3, 1, 8, generator=g),
                                                       torch.randn(1, 3, 2, 8, generator=g),
                                                       -torch.rand(1, 3, 2, generator=g),
                                                       torch.rand(1, 3, 2, generator=g),
                                                       torch.randn(1, 2, 8, 8, generator=g), 0.3)),
    (torch.ops.tq.causal_conv1d.default, lambda g: (torch.randn(1, 5, 6, generator=g), torch.randn(6, 4, generator=g),
                                                    torch.randn(1, 3, 6, generator=g), True)),
    (torch.ops.tq.moe_experts.default, lambda g: (torch.randn(4, 8, generator=g), torch.tensor([[0, 2]] * 4),
                                                  torch.rand(4, 2, generator=g), torch.randn(3, 10, 8, generator=g),
                                                  torch.randn(3, 8, 5, generator=g))),
], ids=["gated_delta_rule", "causal_conv1d", "moe_experts"])
def test_fake_kernels_match_real_outputs(op, args):
    """Schemas are honest about aliasing, and each fake (meta) kernel gives the real outputs' shapes,
    dtypes and strides: export and AOTInductor plan memory from it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    real_args = args(torch.Generator().manual_seed(0))
    torch.library.opcheck(op, real_args, test_utils=("test_schema", "test_faketensor"))
    real = op(*real_args)
    with FakeTensorMode() as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in real_args])
    real = real if isinstance(real, tuple) else (real,)
    fake = fake if isinstance(fake, tuple) else (fake,)
    assert len(real) == len(fake)
    for r, f in zip(real, fake):
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride())


# --------------------------------------------------------------------------------------------
# torch.export
# --------------------------------------------------------------------------------------------


def export_dynamic_t(model, max_seq_len):
    t = torch.export.Dim("T", min=1, max=max_seq_len)
    example = (torch.zeros(model.batch_size, 4, dtype=torch.long), torch.arange(4))
    with torch.no_grad():
        ep = torch.export.export(model, example, dynamic_shapes={"tokens": {1: t}, "input_pos": {0: t}},
                                 strict=False)
    return ep.run_decompositions({})


def op_counts(ep):
    counts = {}
    for node in ep.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith("tq."):
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return counts


def test_export_dynamic_t_one_node_per_op_and_state_as_mutated_buffers(tiny):
    model = models.load(tiny(), max_seq_len=64, dtype=torch.bfloat16)
    ep = export_dynamic_t(model, 64)
    n_linear = sum(t == LINEAR for t in model.config.layer_types)
    assert op_counts(ep) == {"tq.causal_conv1d.default": n_linear, "tq.gated_delta_rule.default": n_linear,
                             "tq.moe_experts.default": model.config.num_layers}
    state = {name for name, _ in model.named_buffers() if name != "rope.inv_freq"}
    assert set(ep.graph_signature.buffers_to_mutate.values()) == state
    # The exported program runs prefill then decode and matches eager.
    ids = prompt(6, seed=8)
    with torch.no_grad():
        model.reset()
        want = torch.cat([model(ids[:, :5], torch.arange(5)), model(ids[:, 5:], torch.tensor([5]))], dim=1)
        model.reset()  # the program was exported with the model's own state tensors
        prog = ep.module()
        got = torch.cat([prog(ids[:, :5], torch.arange(5)), prog(ids[:, 5:], torch.tensor([5]))], dim=1)
    assert torch.equal(got, want)


def test_model_builds_without_checkpoint():
    from tq_export.tiny import tiny_text_config

    cfg = Qwen35MoeConfig.from_hf_config(tiny_text_config(vocab_size=64, hidden_size=32, head_dim=64).to_dict())
    model = Qwen35Moe(cfg, max_seq_len=16, dtype=torch.float32)
    assert model(torch.zeros(1, 3, dtype=torch.long), torch.arange(3)).shape == (1, 3, cfg.vocab_size)
    with pytest.raises(ValueError, match="input_pos must be"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.arange(2))


def test_real_35b_config_builds_on_meta():
    """transformers' default Qwen3_5MoeConfig is Qwen3.5-35B-A3B: the shapes our loader will expect."""
    from transformers import Qwen3_5MoeConfig

    cfg = Qwen35MoeConfig.from_hf_config(Qwen3_5MoeConfig().to_dict())
    assert cfg.layer_types.count(FULL) == 10 and (cfg.head_dim, cfg.rotary_dim) == (256, 64)
    with torch.device("meta"):
        model = Qwen35Moe(cfg, max_seq_len=262144)
    assert 34.6e9 < sum(p.numel() for p in model.parameters()) < 34.7e9
    assert model.layers[0].mlp.experts.gate_up_proj.shape == (256, 1024, 2048)

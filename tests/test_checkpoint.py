"""Checkpoint loading: layouts transformers writes, dtype conversion, and one-line errors for bad input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tq_export import models
from tq_export.checkpoint import CheckpointError, load_weights, read_config




@pytest.fixture
def copy(tiny, tmp_path):
    """A writable copy of a tiny checkpoint."""
    def make(**kw):
        return shutil.copytree(tiny(**kw), tmp_path / "ckpt")
    return make


def load(path, **kw):
    return models.load(path, max_seq_len=16, dtype=kw.pop("dtype", torch.float32), **kw)


def rewrite_tensors(path, edit):
    file = path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def expect_error(path, *needles, **kw):
    with pytest.raises(CheckpointError) as info:
        load(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith(")"), msg
    for needle in needles:
        assert str(needle) in msg, msg
    return msg


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def test_expert_layouts_and_prefixes_load_the_same_weights(tiny):
    per_expert = load(tiny()).state_dict()
    fused = load(tiny(expert_layout="fused")).state_dict()
    assert per_expert.keys() == fused.keys()
    assert all(torch.equal(per_expert[k], fused[k]) for k in per_expert)
    keys = load_file(tiny() / "model.safetensors").keys()
    assert "model.layers.0.mlp.experts.7.gate_proj.weight" in keys  # save_pretrained writes per expert
    assert "model.layers.0.mlp.experts.gate_up_proj" in load_file(tiny(expert_layout="fused") / "model.safetensors")


def test_stacked_experts_put_gate_rows_first(tiny):
    raw = load_file(tiny() / "model.safetensors")
    experts = load(tiny()).layers[1].mlp.experts
    inter = experts.down_proj.shape[2]
    assert torch.equal(experts.gate_up_proj[5, :inter], raw["model.layers.1.mlp.experts.5.gate_proj.weight"])
    assert torch.equal(experts.gate_up_proj[5, inter:], raw["model.layers.1.mlp.experts.5.up_proj.weight"])
    assert torch.equal(experts.down_proj[5], raw["model.layers.1.mlp.experts.5.down_proj.weight"])


def test_multimodal_sharded_checkpoint_ignores_vision_and_mtp(copy):
    path = copy(multimodal=True, max_shard_size="100KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert any(k.startswith("model.visual.") for k in index["weight_map"])
    # Hub checkpoints also carry a multi-token-prediction head: not part of the exported model.
    save_file({"mtp.fc.weight": torch.zeros(4, 4)}, path / "mtp.safetensors")
    index["weight_map"]["mtp.fc.weight"] = "mtp.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    model = load(path)
    assert read_config(path)["model_type"] == "qwen3_5_moe"
    assert model.embed_tokens.weight.shape == (512, 64)


def test_dtype_converted_on_load(tiny):
    bf16 = load(tiny(), dtype=torch.bfloat16)
    fp32 = load(tiny())
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert torch.equal(bf16.layers[0].linear_attn.A_log, fp32.layers[0].linear_attn.A_log.bfloat16())
    from_bf16_file = load(tiny(dtype=torch.bfloat16))  # a bf16 checkpoint into an fp32 model
    assert from_bf16_file.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(from_bf16_file.embed_tokens.weight, fp32.embed_tokens.weight.bfloat16().float())


def test_tied_embeddings(tiny):
    model = load(tiny(tie_word_embeddings=True))
    assert model.lm_head.weight is model.embed_tokens.weight
    assert "lm_head.weight" not in load_file(tiny(tie_word_embeddings=True) / "model.safetensors")


def test_registry():
    assert models.names() == ["qwen3.5-moe"]
    assert "qwen3_5_moe" in models.get("qwen3.5-moe").MODEL_TYPES
    with pytest.raises(ValueError, match="unknown model"):
        models.get("llama")


def test_load_weights_validates_against_expected_shapes(tiny):
    got = load_weights(tiny(), {"embed_tokens.weight": (512, 64)}, dtype=torch.float32,
                       ignore=("model.layers.", "model.norm.", "lm_head."))
    assert got["embed_tokens.weight"].shape == (512, 64)


# --------------------------------------------------------------------------------------------
# Bad checkpoints: one line, `<what> (<file>)`
# --------------------------------------------------------------------------------------------


def test_missing_config(copy):
    path = copy()
    (path / "config.json").unlink()
    expect_error(path, "missing config.json", path / "config.json")


def test_unparsable_config(copy):
    path = copy()
    (path / "config.json").write_text("{not json")
    expect_error(path, "cannot parse config.json", path / "config.json")


def test_wrong_model_type(copy):
    path = copy()
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))
    expect_error(path, "unsupported model_type 'llama'", "qwen3_5_moe", path / "config.json")


def test_config_missing_field(copy):
    path = copy()
    config = json.loads((path / "config.json").read_text())
    del config["num_experts"]
    (path / "config.json").write_text(json.dumps(config))
    expect_error(path, "'num_experts' is missing", path / "config.json")


def test_forced_model_name_must_match(tiny):
    assert load(tiny(), name="qwen3.5-moe") is not None
    expect_error(tiny(), "not 'other'", name="other")


def test_missing_shard(copy):
    path = copy(max_shard_size="100KB")
    shard = sorted(path.glob("model-*.safetensors"))[3]
    shard.unlink()
    expect_error(path, f"missing shard '{shard.name}'", shard)


def test_corrupt_safetensors_header(copy):
    path = copy()
    data = bytearray((path / "model.safetensors").read_bytes())
    data[8:40] = b"\xff" * 32  # garbage where the JSON header starts
    (path / "model.safetensors").write_bytes(bytes(data))
    expect_error(path, "cannot read safetensors file", path / "model.safetensors")


def test_truncated_safetensors(copy):
    path = copy()
    (path / "model.safetensors").write_bytes(b"\x10\x00")
    expect_error(path, "cannot read safetensors file", path / "model.safetensors")


def test_no_weights(copy):
    path = copy()
    (path / "model.safetensors").unlink()
    expect_error(path, "no model.safetensors", path)


def test_shape_mismatch(copy):
    path = copy()
    key = "model.layers.3.self_attn.k_proj.weight"
    rewrite_tensors(path, lambda t: t.__setitem__(key, torch.zeros(128, 64)))
    expect_error(path, f"tensor '{key}' has shape [128, 64], expected [256, 64]", path / "model.safetensors")


def test_expert_shape_mismatch(copy):
    path = copy()
    key = "model.layers.2.mlp.experts.4.up_proj.weight"
    rewrite_tensors(path, lambda t: t.__setitem__(key, torch.zeros(16, 64)))
    expect_error(path, f"tensor '{key}' has shape [16, 64], expected [32, 64]")


def test_missing_tensor(copy):
    path = copy()
    key = "model.layers.3.self_attn.q_norm.weight"
    rewrite_tensors(path, lambda t: t.pop(key))
    expect_error(path, f"missing tensor '{key}'", path / "model.safetensors")


def test_missing_expert(copy):
    path = copy()
    key = "model.layers.0.mlp.experts.5.up_proj.weight"
    rewrite_tensors(path, lambda t: t.pop(key))
    expect_error(path, f"missing tensor '{key}'", path / "model.safetensors")


def test_unexpected_tensor(copy):
    path = copy()
    rewrite_tensors(path, lambda t: t.__setitem__("model.layers.0.mlp.bias", torch.zeros(3)))
    expect_error(path, "unexpected tensor 'model.layers.0.mlp.bias'", path / "model.safetensors")


def test_integer_tensor_rejected(copy):
    path = copy()
    key = "model.norm.weight"
    rewrite_tensors(path, lambda t: t.__setitem__(key, torch.zeros(64, dtype=torch.int32)))
    expect_error(path, f"tensor '{key}' has dtype torch.int32")


def test_not_a_directory(tmp_path):
    expect_error(tmp_path / "nope", "checkpoint directory not found")

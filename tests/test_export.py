"""export.py's pieces on a CPU: the on-device sampler, the two exported methods, metadata, host-I/O lowering.

The CUDA lowering itself (AOTInductor) needs a GPU: scripts/gpu_export_check.py covers it there.
"""

import copy
import json

import pytest
import torch

from tq_export import export as ex
from tq_export import models
from tq_export.cache import KVCache, TurboQuantKVCache
from tq_export.rewrite import apply_turboquant
from tq_export.tiny import make_tiny_checkpoint

MAX_SEQ_LEN, MAX_PREFILL = 64, 16


# --------------------------------------------------------------------------------------------
# Sampling head
# --------------------------------------------------------------------------------------------


def draw(logits, temperature, seed, counter=0):
    return ex.sample_next_token(logits, torch.tensor([float(temperature)]), torch.tensor([seed]),
                                torch.tensor([counter]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_greedy_is_exact_argmax(dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1000, generator=g).to(dtype)
    logits[1, 10] = logits[1, 700] = logits[1].max() + 1  # a tie: torch.argmax takes the first index
    for temperature in (0.0, -1.0):
        for seed in (0, 1, -3, 2**62):
            assert torch.equal(draw(logits, temperature, seed), logits.argmax(dim=-1))
    assert draw(logits, 0.0, 0)[1].item() == 10


def test_temperature_sampling_valid_seeded_and_reproducible():
    logits = torch.zeros(1, 4096)
    ids = [draw(logits, 1.0, seed).item() for seed in range(20)]
    assert all(0 <= i < 4096 for i in ids)
    assert len(set(ids)) > 15  # depends on the seed
    assert ids == [draw(logits, 1.0, seed).item() for seed in range(20)]  # a pure function of its inputs
    assert len({draw(logits, 1.0, 7, counter).item() for counter in range(20)}) > 15  # and of the position
    # All 64 seed bits count.
    assert draw(logits, 1.0, 5).item() != draw(logits, 1.0, 5 + 2**32).item()


def test_temperature_sampling_follows_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    n = 2000
    counts = torch.bincount(torch.cat([draw(logits, 1.0, s, 3) for s in range(n)]), minlength=4)
    assert (counts / n - torch.softmax(logits[0], -1)).abs().max() < 0.04  # > 3.5 sigma
    # Low temperature concentrates on the argmax; high temperature flattens.
    assert all(draw(logits, 0.05, s).item() == 2 for s in range(50))
    hot = torch.bincount(torch.cat([draw(logits, 100.0, s) for s in range(n)]), minlength=4) / n
    assert (hot - 0.25).abs().max() < 0.04


def test_uniform_noise_range_and_mixer_bijective():
    u = ex.uniform_noise(torch.tensor([-7]), torch.tensor([123]), 1 << 16)
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    x = torch.arange(1 << 20)
    y = ex._mix32(x)
    assert y.unique().numel() == x.numel() and y.min() >= 0 and y.max() < 2**32


# --------------------------------------------------------------------------------------------
# Exported methods
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def load_tq(path):
    model = models.load(path, max_seq_len=MAX_SEQ_LEN, dtype=torch.bfloat16)
    apply_turboquant(model)
    return model


@pytest.fixture(scope="module")
def exported(tiny_ckpt):
    model = load_tq(tiny_ckpt)
    return model, ex.export_methods(model, MAX_PREFILL)


def user_inputs(ep):
    names = ep.graph_signature.user_inputs
    return {n.name: n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder" and n.name in names}


def test_methods_have_expected_inputs_outputs_and_dynamic_dims(exported):
    _, programs = exported
    assert set(programs) == {"prefill", "decode"}
    pre, dec = user_inputs(programs["prefill"]), user_inputs(programs["decode"])
    assert list(pre) == list(dec) == ["tokens", "input_pos", "temperature", "seed"]
    t = pre["tokens"].shape[1]
    assert isinstance(t, torch.SymInt) and str(pre["input_pos"].shape[0]) == str(t)  # one dim, shared
    (rng,) = programs["prefill"].range_constraints.values()
    assert (rng.lower, rng.upper) == (1, MAX_PREFILL)
    assert tuple(dec["tokens"].shape) == (1, 1) and tuple(dec["input_pos"].shape) == (1,)
    assert not programs["decode"].range_constraints  # static
    for inputs in (pre, dec):
        assert [v.dtype for v in inputs.values()] == [torch.int64, torch.int64, torch.float32, torch.int64]
        assert tuple(inputs["temperature"].shape) == tuple(inputs["seed"].shape) == (1,)
    for ep in programs.values():
        (name,) = ep.graph_signature.user_outputs  # the other outputs are the buffer mutations
        (out,) = [n for n in list(ep.graph.nodes)[-1].args[0] if n.name == name]
        val = out.meta["val"]
        assert val.dtype == torch.int64 and tuple(val.shape) == (1,)


def test_methods_share_fqns_and_mutable_buffers(exported):
    _, programs = exported
    sig = {m: ep.graph_signature for m, ep in programs.items()}
    assert set(sig["prefill"].inputs_to_parameters.values()) == set(sig["decode"].inputs_to_parameters.values())
    assert set(sig["prefill"].inputs_to_buffers.values()) == set(sig["decode"].inputs_to_buffers.values())
    shared = ex.shared_buffers(programs)
    cache = "model.layers.3.self_attn.attn.cache."
    assert {cache + b for b in ("k_packed", "v_packed", "k_norms", "v_norms")} <= set(shared)
    assert {f"model.layers.{i}.linear_attn.{s}" for i in range(3) for s in ("conv_state", "recurrent_state")} \
        <= set(shared)
    assert len(shared) == 10 and shared == sorted(shared)


def test_methods_sharing_only_listed_buffers_match_eager_greedy(exported, tiny_ckpt):
    """Prefill then decode, each program with its OWN copy of everything except the listed mutable
    buffers, which are bound to the same tensors (what the runner does by FQN): greedy tokens equal
    the eager model's argmax, and a second generation right after the first (no reset: a prefill at
    position 0 starts a new sequence) gives them again."""
    model, programs = exported
    ref = load_tq(tiny_ckpt)
    prefill = programs["prefill"].module()
    decode = copy.deepcopy(programs["decode"]).module()
    for fqn in ex.shared_buffers(programs):
        owner, _, leaf = fqn.rpartition(".")
        state = prefill.get_buffer(fqn)
        decode.get_submodule(owner).register_buffer(leaf, state, persistent=False)
        assert decode.get_buffer(fqn) is state
    ids = torch.randint(0, 512, (1, 7), generator=torch.Generator().manual_seed(1))
    zero, seed = torch.zeros(1), torch.zeros(1, dtype=torch.int64)

    def generate():
        got = [prefill(ids, torch.arange(7), zero, seed)]
        for pos in range(7, 7 + 8):
            got.append(decode(got[-1].view(1, 1), torch.tensor([pos]), zero, seed))
        return torch.cat(got).tolist()

    with torch.no_grad():
        model.reset()
        first, second = generate(), generate()
        ref.reset()
        want = [ref(ids, torch.arange(7))[:, -1].argmax(-1)]
        for pos in range(7, 7 + 8):
            want.append(ref(want[-1].view(1, 1), torch.tensor([pos]))[:, -1].argmax(-1))
    model.reset()
    assert first == torch.cat(want).tolist()
    assert second == first


def test_lm_head_projects_last_position_only(tiny_ckpt):
    model = models.load(tiny_ckpt, max_seq_len=MAX_SEQ_LEN, dtype=torch.float32)
    ids = torch.randint(0, 512, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, torch.arange(5))
        model.reset()
        ex.project_last_position_only(model)
        ex.project_last_position_only(model)  # idempotent
        last = model(ids, torch.arange(5))
    assert full.shape == (1, 5, 512) and last.shape == (1, 1, 512)
    # Same values up to GEMM blocking (an [1, H] and a [5, H] matmul may sum in different orders).
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_export_rejects_bad_max_prefill(tiny_ckpt):
    model = models.load(tiny_ckpt, max_seq_len=MAX_SEQ_LEN, dtype=torch.bfloat16)
    for bad in (1, MAX_SEQ_LEN + 1):
        with pytest.raises(ValueError, match="max_prefill"):
            ex.export_methods(model, bad)


def test_every_op_has_a_gpu_kernel(exported):
    # tq:: ops are triton_ops (the CUDA backend compiles their kernels); the model avoids ATen ops
    # that AOTInductor could only run through libtorch (topk, split).
    _, programs = exported
    assert ex.ops_without_gpu_kernel(programs) == []


def test_ops_without_gpu_kernel_names_fallback_ops():
    class Bad(torch.nn.Module):
        def forward(self, x):
            a, b = x.split(2, dim=-1)
            return torch.topk(a + b, 1).values

    ep = torch.export.export(Bad(), (torch.randn(3, 4),))
    assert ex.ops_without_gpu_kernel({"m": ep}) == ["aten::split", "aten::topk"]


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def test_constant_methods_names_and_types(exported):
    _, programs = exported
    shared = ex.shared_buffers(programs)
    info = ex.ProgramInfo(model_name="qwen3.5-moe", max_seq_len=MAX_SEQ_LEN, max_prefill=MAX_PREFILL,
                          vocab_size=512, bos_id=-1, eos_ids=(258,), k_bits=4, v_bits=4, dtype="bf16",
                          shared_buffers=tuple(shared))
    c = ex.constant_methods(info)
    types = {"get_tq_export_version": str, "get_model_name": str, "get_max_seq_len": int, "get_max_prefill": int,
             "get_vocab_size": int, "get_bos_id": int, "get_eos_ids": list, "get_k_bits": int, "get_v_bits": int,
             "get_dtype": str, "get_shared_buffers": str, "get_method_signatures": str}
    assert {k: type(v) for k, v in c.items()} == types
    assert c["get_shared_buffers"].split("\n") == shared
    assert c["get_method_signatures"].splitlines() == [ex.SIGNATURES["prefill"], ex.SIGNATURES["decode"]]
    assert c["get_eos_ids"] == [258] and c["get_max_prefill"] == MAX_PREFILL


def test_constant_methods_round_trip_through_a_program():
    """Written by to_executorch and read back by executorch's runtime: strings, ints, an empty list."""
    pytest.importorskip("executorch.runtime")
    from executorch.exir import to_edge_transform_and_lower

    class Add(torch.nn.Module):
        def forward(self, x):
            return x + 1

    info = ex.ProgramInfo(model_name="qwen3.5-moe", max_seq_len=64, max_prefill=16, vocab_size=512, bos_id=-1,
                          eos_ids=(), k_bits=4, v_bits=4, dtype="bf16", shared_buffers=("a.b", "c.d"))
    constants = ex.constant_methods(info)
    ep = torch.export.export(Add(), (torch.ones(2),))
    program = to_edge_transform_and_lower({"forward": ep}, constant_methods=constants).to_executorch(ex.backend_config())
    assert ex.read_constant_methods(program.buffer) == constants


def test_special_token_ids(tiny_ckpt, tmp_path):
    assert ex.special_token_ids(tiny_ckpt) == (-1, [258])  # tokenizer_config eos_token <|im_end|>
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_text((tiny_ckpt / name).read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(eos_token_id=256, bos_token_id=257)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [256, 258]}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "eos_token": "<|im_end|>"}))
    assert ex.special_token_ids(tmp_path) == (257, [256, 258])


def test_kv_cache_memory_matches_cache_modules(tiny_ckpt):
    bf16 = models.load(tiny_ckpt, max_seq_len=MAX_SEQ_LEN, dtype=torch.bfloat16)
    want_bf16 = sum(m.bytes_per_token for m in bf16.modules() if isinstance(m, KVCache))
    tq = load_tq(tiny_ckpt)
    want_tq = sum(m.bytes_per_token for m in tq.modules() if isinstance(m, TurboQuantKVCache))
    for model in (bf16, tq):
        mem = ex.kv_cache_memory(model, 4, 4, contexts=(1000, 32768))
        assert mem["bytes_per_token"] == {"bf16": want_bf16, "turboquant": want_tq}
        assert mem["contexts"][1] == {"tokens": 32768, "bf16": want_bf16 * 32768, "turboquant": want_tq * 32768,
                                      "saved": (want_bf16 - want_tq) * 32768}
    assert round(mem["ratio"], 2) == 3.94  # head_dim 256: 512 B vs 130 B per KV head and token
    assert ex.cache_bits(bf16, torch.bfloat16) == (16, 16) and ex.cache_bits(tq, torch.bfloat16) == (4, 4)


# --------------------------------------------------------------------------------------------
# Lowering configuration: delegate I/O stays in host memory
# --------------------------------------------------------------------------------------------


def test_cuda_partitioner_has_method_name_and_no_target_device():
    pytest.importorskip("executorch.backends.cuda.cuda_partitioner")
    p = ex.host_io_partitioner("decode")
    specs = {s.key: s.value for s in p.delegation_spec.compile_specs}
    assert p.delegation_spec.backend_id == "CudaBackend"
    assert specs.get("method_name") == b"decode"
    assert ex.TARGET_DEVICE_KEY not in specs


def test_host_io_layout_on_this_executorch():
    """With a device-tagged demo delegate, executorch >= 1.5 plans delegate I/O on the device and adds
    et_copy ops; stripping target_device (as host_io_partitioner does) restores the host layout."""
    device_util = pytest.importorskip("executorch.exir.backend.test.device_util")
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    class Add(torch.nn.Module):
        def forward(self, x, y):
            return x + y

    ep = torch.export.export(Add(), (torch.ones(2), torch.ones(2)))

    def lower(partitioner, config):
        return to_edge_transform_and_lower(ep, partitioner=[partitioner]).to_executorch(config)

    with pytest.raises(ex.ExportError, match="host"):  # the stock 1.5 layout
        ex.check_host_io(lower(device_util.DeviceAwarePartitioner(), ExecutorchBackendConfig()), ("forward",))
    host = lower(ex.strip_target_device(device_util.DeviceAwarePartitioner()), ex.backend_config())
    ex.check_host_io(host, ("forward",))
    names = {f.name for f in __import__("dataclasses").fields(ExecutorchBackendConfig)}
    if "enable_non_cpu_memory_planning" in names:
        assert ex.backend_config().enable_non_cpu_memory_planning is False


def test_lower_without_cuda_raises_no_gpu(exported, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ex.NoGPUError, match="NVIDIA GPU"):
        ex.lower(exported[1], {})


def test_compile_settings_ask_for_single_arch_kernels_and_restore(monkeypatch):
    from tq_export import export as ex

    class Backend:
        @classmethod
        def get_aoti_compile_options(cls, compile_specs):
            return {"aot_inductor.emit_multi_arch_kernel": True, "max_autotune": True}

    before = Backend.__dict__["get_aoti_compile_options"]
    monkeypatch.setattr(ex, "cuda_backend", lambda: (None, Backend))
    import torch._inductor.config as inductor_config

    with ex._compile_settings(gemm_configs=3):
        assert Backend.get_aoti_compile_options([]) == {"aot_inductor.emit_multi_arch_kernel": False,
                                                       "max_autotune": True}
        assert inductor_config.test_configs.max_mm_configs == 3
    assert Backend.__dict__["get_aoti_compile_options"] is before
    assert Backend.get_aoti_compile_options([])["aot_inductor.emit_multi_arch_kernel"] is True
    assert inductor_config.test_configs.max_mm_configs is None


def test_register_caps_carry_the_decode_kernels_maxnreg_into_inductor_and_restore():
    """The decode kernel's register cap rides in its launch config; inside register_caps, the
    installed torch's Inductor writes it into the generated kernel's configs, reads it back, and
    passes it to triton.compile. Outside, torch's own functions are back (and drop it)."""
    from types import SimpleNamespace

    from torch._inductor.runtime import triton_heuristics as th

    from tq_kernels import tq4_sdpa as k

    cfg = k._config(8, 131072, 1, 2, 256, torch.device("cpu"))
    (config,) = k._decode_launch(cfg["warps"], cfg["stages"], cfg["maxnreg"]).configs
    assert config.maxnreg == 128
    cuda_tuner = SimpleNamespace(device_props=SimpleNamespace(type="cuda"))
    meta = {"num_warps": config.num_warps, "num_stages": config.num_stages, "debug": False}
    before = th.config_to_dict, th.CachingAutotuner._create_compile_options
    with ex.register_caps():
        written = th.config_to_dict(config)  # into the generated source
        read = th.config_from_dict(written)  # back, where the kernel compiles
        assert read.maxnreg == 128 and read.num_warps == config.num_warps
        assert th.CachingAutotuner._create_compile_options(cuda_tuner, read, meta)["maxnreg"] == 128
    assert (th.config_to_dict, th.CachingAutotuner._create_compile_options) == before
    assert "maxnreg" not in th.config_to_dict(config)


def test_compile_settings_compile_triton_in_process_and_restore(monkeypatch):
    """register_caps patches this process's Inductor: its compile workers would not see it."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(ex, "cuda_backend", lambda: (None, type("Backend", (), {
        "get_aoti_compile_options": classmethod(lambda cls, specs: {})})))
    before = inductor_config.compile_threads
    with ex._compile_settings():
        assert inductor_config.compile_threads == 1
    assert inductor_config.compile_threads == before


# --------------------------------------------------------------------------------------------
# Lowering the methods in two processes
# --------------------------------------------------------------------------------------------


def test_program_fingerprint_sees_code_and_every_tensor(exported):
    decode = exported[1]["decode"]
    assert ex.program_fingerprint(decode) == ex.program_fingerprint(copy.deepcopy(decode))
    assert ex.program_fingerprint(decode) != ex.program_fingerprint(exported[1]["prefill"])
    changed = copy.deepcopy(decode)
    name = next(k for k, v in changed.state_dict.items() if v.dtype == torch.bfloat16 and v.numel() > 1)
    changed.state_dict[name].view(-1)[0] += 1
    assert ex.program_fingerprint(changed) != ex.program_fingerprint(decode)


def test_lower_borrows_a_method_and_compiles_it_itself_when_the_worker_fails(exported, monkeypatch):
    """lower() hands the backend's preprocess_multimethod the worker's results for `decode` (checked
    by fingerprint) and compiles only `prefill`; when the worker has nothing, it compiles both."""
    import executorch.exir as exir
    from executorch.exir.backend.backend_details import BackendDetails

    programs = exported[1]
    compiled = []

    class Backend:
        preprocess_multimethod = BackendDetails.__dict__["preprocess_multimethod"]

        @classmethod
        def preprocess(cls, ep, specs):
            compiled.append(specs)
            return f"compiled {specs}"

    class Lowered:
        def to_executorch(self, config):
            return "program"

    def fake_to_edge(progs, partitioner, constant_methods, compile_config):
        seen["results"] = Backend.preprocess_multimethod({m: [progs[m]] for m in progs}, {m: [m] for m in progs})
        return Lowered()

    class Worker:
        def __init__(self, results):
            self.results = results

        def collect(self, fingerprints):
            seen["fingerprints"] = fingerprints
            return self.results

    seen = {}
    monkeypatch.setattr(ex, "require_cuda", lambda: None)
    monkeypatch.setattr(ex, "cuda_backend", lambda: (None, Backend))
    monkeypatch.setattr(ex, "host_io_partitioner", lambda m: m)
    monkeypatch.setattr(ex, "check_host_io", lambda program: None)
    monkeypatch.setattr(ex, "_compile_settings", lambda gemm_configs: __import__("contextlib").nullcontext())
    monkeypatch.setattr(exir, "to_edge_transform_and_lower", fake_to_edge)
    assert ex.can_lower_in_parallel()

    ex.lower(programs, {}, borrowed={"decode": Worker(["from the worker"])})
    assert compiled == ["prefill"]
    assert seen["results"] == {"prefill": ["compiled prefill"], "decode": ["from the worker"]}
    assert seen["fingerprints"] == [ex.program_fingerprint(programs["decode"])]
    assert "preprocess_multimethod" not in Backend.__dict__ or \
        Backend.__dict__["preprocess_multimethod"] is BackendDetails.__dict__["preprocess_multimethod"]

    compiled.clear()
    ex.lower(programs, {}, borrowed={"decode": Worker(None)})
    assert compiled == ["prefill", "decode"]
    assert seen["results"]["decode"] == ["compiled decode"]

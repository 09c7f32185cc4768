"""Export: model -> `prefill` + `decode` -> torch.export -> ExecuTorch CUDA backend -> model.pte + aoti_cuda_blob.ptd.

The pipeline (TurboQuant cache swap, arXiv 2504.19874, happens before, in `rewrite.apply_turboquant`):

    export_methods(model)          two ExportedPrograms from small wrappers around ONE model instance
    constant_methods(...)          metadata the runner reads (constant methods of the program)
    lower(programs, constants)     to_edge_transform_and_lower(CudaPartitioner) -> to_executorch (AOTInductor)
    write_program(program, dir)    model.pte + aoti_cuda_blob.ptd

Program contract (what a runner may rely on; `runner/program_meta.h` reads it):

    prefill(tokens int64 [1, T], input_pos int64 [T], temperature float32 [1], seed int64 [1])
        -> next_token int64 [1]                                   1 <= T <= get_max_prefill()
    decode (tokens int64 [1, 1], input_pos int64 [1], temperature float32 [1], seed int64 [1])
        -> next_token int64 [1]

  * input_pos holds the chunk's absolute, contiguous positions (start, start + 1, ...); a long prompt
    is fed as several prefill calls. Both methods write the caches/states in place; the next token is
    the one after input_pos[-1].
  * temperature <= 0: greedy, exactly argmax of the last position's logits (first index on ties).
    temperature > 0: Gumbel-max sampling from softmax(logits / temperature). The noise is a counter-based
    hash of (seed, input_pos[-1], vocab id) computed in the graph, so a step moves one int64 to the host
    and nothing else, and a run is reproducible from its seeds. Any seed value is valid (all 64 bits
    are mixed); the reference runner passes its --seed plus the chunk's start position.
  * Both methods are lowered whole to the CUDA backend (one AOTI container each); their inputs and
    output are planned in host memory (see `lower`). Each container holds its own copy of weights and
    mutable buffers; the buffer FQNs are identical in both (the wrappers share one model instance), so a
    runner shares them by name. `get_shared_buffers` lists the mutable ones (caches, conv/recurrent
    states) that MUST be shared for decode to see what prefill wrote.

Constant methods (name: type):
    get_tq_export_version: str     marks a program made by tq-export (package version)
    get_model_name: str            CLI name of the model, e.g. "qwen3.5-moe"
    get_max_seq_len: int           cache length: positions must stay < this
    get_max_prefill: int           most tokens one prefill call takes
    get_vocab_size: int
    get_bos_id: int                prepended to a prompt when >= 0 (-1: none)
    get_eos_ids: list[int]         generation stops at any (may be empty)
    get_k_bits, get_v_bits: int    TurboQuant bits per coordinate; 16 or 32 = uncompressed cache dtype
    get_dtype: str                 "bf16" or "fp32" (weights and activations)
    get_shared_buffers: str        mutable-buffer FQNs, one per line ("\\n"-joined, sorted)
    get_method_signatures: str     the two signatures above, one per line
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from .cache import KVCache, TurboQuantKVCache
from .checkpoint import CONFIG_NAME
from .turboquant import packed_dim

PREFILL, DECODE = "prefill", "decode"
METHODS = (PREFILL, DECODE)
PTE_NAME = "model.pte"
PTD_NAME = "aoti_cuda_blob.ptd"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

SIGNATURES = {
    PREFILL: "prefill(tokens: int64[1, T], input_pos: int64[T], temperature: float32[1], seed: int64[1])"
             " -> next_token: int64[1]  (1 <= T <= max_prefill)",
    DECODE: "decode(tokens: int64[1, 1], input_pos: int64[1], temperature: float32[1], seed: int64[1])"
            " -> next_token: int64[1]",
}

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class ExportError(RuntimeError):
    """The pipeline itself failed (not the input): the CLI exits 1."""


class NoGPUError(RuntimeError):
    """Lowering needs an NVIDIA GPU and none is visible: the CLI exits 3."""


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("tq-export")
    except Exception:  # noqa: BLE001 - running from a source tree (scripts/dev_env.sh), not installed
        return "0.1.0+src"


# --------------------------------------------------------------------------------------------
# On-device sampling: greedy or Gumbel-max with counter-based noise
# --------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), never overflowing int64.

    Signed overflow is undefined in the C++ that Inductor emits for CPU and may be folded differently
    by compilers; splitting x into 16-bit halves keeps every product below 2**49.
    """
    return ((x & 0xFFFF) * c + (((x >> 16) * (c & 0xFFFF)) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer finalizer (lowbias32), on int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(seed: torch.Tensor, counter: torch.Tensor, n: int) -> torch.Tensor:
    """float32 [n] uniform in (0, 1), a pure function of (seed [1] int64, counter [1] int64, index).

    Counter-based (no generator state): the graph computes it from its inputs, on the device, and a
    host can recompute it bit for bit. 24 random bits per draw: u = (b + 0.5) / 2**24 is exact in fp32
    and never 0 or 1, so the Gumbel transform below stays finite.
    """
    lo, hi = seed & _M32, (seed >> 32) & _M32  # arithmetic shift, then mask: all 64 seed bits count
    key = _mix32(lo ^ _mix32(hi ^ _mix32(counter & _M32)))  # [1]
    idx = torch.arange(n, device=seed.device, dtype=torch.int64)
    bits = _mix32(_mix32((_mul32(idx, _GOLDEN) + key) & _M32))  # [n], distinct per index (bijections)
    return ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def sample_next_token(logits: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor,
                      counter: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> token ids [B] int64.

    temperature [1] <= 0 selects argmax(logits) (exact: the fp32 upcast of bf16 is lossless, ties go
    to the first index as in torch.argmax); > 0 selects argmax(logits / temperature + Gumbel noise),
    a draw from softmax(logits / temperature). Both branches are computed and one is picked with
    `where`: no data-dependent control flow in the graph.
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    u = uniform_noise(seed, counter, logits.shape[-1])
    gumbel = -torch.log(-torch.log(u))
    sampled = (logits / temperature.clamp(min=1e-6) + gumbel).argmax(dim=-1)
    return torch.where(temperature > 0, sampled, greedy)


# --------------------------------------------------------------------------------------------
# Methods: one small module per method around the same model instance
# --------------------------------------------------------------------------------------------


class NextToken(nn.Module):
    """forward(tokens [1, T], input_pos [T], temperature [1], seed [1]) -> next token id [1].

    Runs the stateful model on one chunk and samples the token after its last position. Every
    instance holds the model under the same attribute name, so buffer and parameter FQNs
    (`model.layers.3...`) are identical across methods: that is what a runner shares them by.
    With `restarts`, a chunk at position 0 starts a new sequence (clears the recurrent states), so a
    runner can generate again without touching the buffers; prefill does this, decode never starts
    a sequence and skips the pass over the states.
    """

    def __init__(self, model: nn.Module, restarts: bool = False):
        super().__init__()
        self.model = model
        self.restarts = restarts

    def forward(self, tokens, input_pos, temperature, seed):
        if self.restarts:
            self.model.start_sequence_if_at_zero(input_pos)
        logits = self.model(tokens, input_pos)[:, -1]  # [B, V]
        return sample_next_token(logits, temperature, seed, input_pos[-1:])


def project_last_position_only(model: nn.Module) -> None:
    """Make `model.lm_head` project only the last position of each chunk (idempotent).

    Only the last row is sampled; projecting all T rows of a prefill chunk would compute and hold
    a [T, vocab] tensor (2 GB at T = 4096, vocab 248K in bf16) for nothing. A forward pre-hook keeps
    the model's code and parameter names unchanged; torch.export traces it like any module call.
    """
    head = getattr(model, "lm_head", None)
    if head is None or getattr(head, "_tq_last_position_only", False):
        return
    head.register_forward_pre_hook(lambda _module, args: (args[0][:, -1:],) + tuple(args[1:]))
    head._tq_last_position_only = True


def example_inputs(method: str, max_prefill: int, device: str | torch.device = "cpu") -> tuple:
    """Example (tokens, input_pos, temperature, seed). Prefill uses its largest chunk, the bound the
    program plans for (AOTInductor also sizes some workspaces from the example)."""
    t = max_prefill if method == PREFILL else 1
    return (torch.zeros(1, t, dtype=torch.int64, device=device), torch.arange(t, device=device),
            torch.zeros(1, dtype=torch.float32, device=device), torch.zeros(1, dtype=torch.int64, device=device))


def dynamic_shapes(method: str, max_prefill: int):
    if method == DECODE:
        return None
    t = torch.export.Dim("T", min=1, max=max_prefill)
    return ({1: t}, {0: t}, None, None)


def export_methods(model: nn.Module, max_prefill: int) -> dict[str, torch.export.ExportedProgram]:
    """torch.export both methods (functionalized: state updates become buffer mutations).

    The model must be in eval mode; its state is reset before and after (export only traces, but the
    programs start from the buffers' current values).
    """
    max_seq_len = getattr(model, "max_seq_len", None)
    if max_prefill < 2 or (max_seq_len is not None and max_prefill > max_seq_len):
        raise ValueError(f"max_prefill must be in [2, max_seq_len={max_seq_len}], got {max_prefill}")
    project_last_position_only(model)
    model.reset()
    programs = {}
    with torch.no_grad():
        for method in METHODS:
            wrapper = NextToken(model, restarts=method == PREFILL)
            ep = torch.export.export(wrapper, example_inputs(method, max_prefill),
                                     dynamic_shapes=dynamic_shapes(method, max_prefill), strict=False)
            programs[method] = ep.run_decompositions({})
    model.reset()
    return programs


def shared_buffers(programs: dict[str, torch.export.ExportedProgram]) -> list[str]:
    """FQNs of the mutable buffers (sorted). Both methods must mutate the same set."""
    sets = {m: set(ep.graph_signature.buffers_to_mutate.values()) for m, ep in programs.items()}
    first = next(iter(sets.values()))
    for method, names in sets.items():
        if names != first:
            raise ExportError(f"methods mutate different buffers: {sorted(names ^ first)[:4]} ({method})")
    return sorted(first)


# ATen ops that AOTInductor runs only through a libtorch fallback kernel (seen on the GPU host
# with torch 2.11 / executorch 1.2: topk, and split as edge's split_copy); sort is one too.
ATEN_FALLBACK_OPS = frozenset({"aten::topk", "aten::sort", "aten::split", "aten::split_with_sizes",
                               "aten::split_copy", "aten::split_with_sizes_copy"})


def ops_without_gpu_kernel(programs: dict[str, torch.export.ExportedProgram]) -> list[str]:
    """Ops the CUDA backend cannot compile: custom ops that are not a `torch.library.triton_op`, and
    the ATen ops in ATEN_FALLBACK_OPS.

    AOTInductor turns such an op into a fallback call through libtorch's proxy executor, which a
    libtorch-free CUDA delegate does not have; ExecuTorch then fails late ("missing fallback
    kernels"). Listing them up front turns that into one early, clear error.
    """
    from torch._library import triton as triton_lib

    triton_ops = getattr(triton_lib, "triton_ops_to_kernels", None)
    missing = set()
    for ep in programs.values():
        for node in ep.graph.nodes:
            target = node.target
            if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
                continue
            name = target.name().split(".")[0]
            if target.namespace in ("aten", "prims"):
                if name in ATEN_FALLBACK_OPS:
                    missing.add(name)
                continue
            if triton_ops is not None and name in triton_ops:
                continue
            missing.add(name)
    return sorted(missing)


# --------------------------------------------------------------------------------------------
# Metadata: special tokens, KV-cache memory, constant methods
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _ids(value) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _token_id(root: Path, token) -> int | None:
    """Id of a special token string (tokenizer_config's form: str or {"content": str}) in tokenizer.json."""
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    tok = _read_json(root / "tokenizer.json")
    for added in tok.get("added_tokens") or []:
        if isinstance(added, dict) and added.get("content") == token and isinstance(added.get("id"), int):
            return added["id"]
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and isinstance(vocab.get(token), int):
        return vocab[token]
    return None


def special_token_ids(checkpoint_dir: str | Path) -> tuple[int, list[int]]:
    """(bos id or -1, eos ids) from config.json, generation_config.json and the tokenizer files.

    BOS is reported only when tokenizer_config.json asks for it (`add_bos_token`): Qwen tokenizers
    do not prepend one. EOS is the union, in order, of every source.
    """
    root = Path(checkpoint_dir)
    config = _read_json(root / CONFIG_NAME)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    gen = _read_json(root / "generation_config.json")
    tok_cfg = _read_json(root / "tokenizer_config.json")
    eos: list[int] = []
    for source in (config.get("eos_token_id"), text.get("eos_token_id"), gen.get("eos_token_id"),
                   _token_id(root, tok_cfg.get("eos_token"))):
        eos += [i for i in _ids(source) if i not in eos]
    bos = -1
    if tok_cfg.get("add_bos_token") is True:
        ids = _ids(config.get("bos_token_id")) or _ids(text.get("bos_token_id")) or _ids(gen.get("bos_token_id"))
        found = ids[0] if ids else _token_id(root, tok_cfg.get("bos_token"))
        bos = found if found is not None else -1
    return bos, eos


def kv_cache_memory(model: nn.Module, k_bits: int = 4, v_bits: int = 4, contexts: tuple[int, ...] = (),
                    mutable: list[str] | None = None) -> dict:
    """KV-cache bytes per token and at each context length, bf16 against TurboQuant (either way round).

    Counts every full-attention cache of the model (bf16 KVCache or TurboQuantKVCache) per batch row;
    the other mutable state (conv/recurrent state of linear-attention layers) does not grow with the
    context and is reported once as `state_bytes` (the `mutable` buffers, FQNs relative to `model`,
    that are not caches).
    """
    layers = []
    cache_buffers = set()
    for name, m in model.named_modules():
        if isinstance(m, (KVCache, TurboQuantKVCache)):
            layers.append((m.n_kv_heads, m.head_dim))
            cache_buffers |= {f"{name}.{b}" for b, _ in m.named_buffers()}
    bf16 = sum(2 * h * d * 2 for h, d in layers)
    tq = sum(h * (packed_dim(d, k_bits) + packed_dim(d, v_bits) + 2 * 2) for h, d in layers)
    buffers = dict(model.named_buffers())
    state = sum(buffers[n].numel() * buffers[n].element_size() for n in mutable or ()
                if n in buffers and n not in cache_buffers)
    return {
        "full_attention_layers": len(layers),
        "kv_heads": sorted({h for h, _ in layers}),
        "head_dims": sorted({d for _, d in layers}),
        "k_bits": k_bits, "v_bits": v_bits,
        "bytes_per_token": {"bf16": bf16, "turboquant": tq},
        "ratio": (bf16 / tq) if tq else None,
        "state_bytes": state,
        "contexts": [{"tokens": n, "bf16": bf16 * n, "turboquant": tq * n, "saved": (bf16 - tq) * n}
                     for n in contexts],
    }


def cache_bits(model: nn.Module, dtype: torch.dtype) -> tuple[int, int]:
    """(k_bits, v_bits) of the model's full-attention caches; the dtype's width if uncompressed."""
    for m in model.modules():
        if isinstance(m, TurboQuantKVCache):
            return m.k_bits, m.v_bits
    for m in model.modules():
        if isinstance(m, KVCache):
            bits = m.k_cache.element_size() * 8
            return bits, bits
    bits = torch.empty((), dtype=dtype).element_size() * 8
    return bits, bits


@dataclasses.dataclass(frozen=True)
class ProgramInfo:
    model_name: str
    max_seq_len: int
    max_prefill: int
    vocab_size: int
    bos_id: int
    eos_ids: tuple[int, ...]
    k_bits: int
    v_bits: int
    dtype: str
    shared_buffers: tuple[str, ...]


def constant_methods(info: ProgramInfo) -> dict:
    """The program's constant methods (see the module docstring for the contract)."""
    return {
        "get_tq_export_version": package_version(),
        "get_model_name": info.model_name,
        "get_max_seq_len": int(info.max_seq_len),
        "get_max_prefill": int(info.max_prefill),
        "get_vocab_size": int(info.vocab_size),
        "get_bos_id": int(info.bos_id),
        "get_eos_ids": [int(i) for i in info.eos_ids],
        "get_k_bits": int(info.k_bits),
        "get_v_bits": int(info.v_bits),
        "get_dtype": info.dtype,
        "get_shared_buffers": "\n".join(info.shared_buffers),
        "get_method_signatures": "\n".join(SIGNATURES[m] for m in METHODS),
    }


# --------------------------------------------------------------------------------------------
# Lowering: ExecuTorch CUDA backend (AOTInductor), executorch 1.2 and 1.5
# --------------------------------------------------------------------------------------------

# Compile-spec key that executorch >= 1.5's CudaPartitioner adds (b"cuda:0"). Its only reader is
# PropagateDevicePass, which then plans the delegate's inputs/outputs on the device and inserts
# et_copy H2D/D2H ops around the delegate. 1.2 has neither. Dropping the spec keeps the 1.2 layout.
TARGET_DEVICE_KEY = "target_device"


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise NoGPUError("lowering (AOTInductor compile for the CUDA backend) needs an NVIDIA GPU and none is "
                         "visible; run with --dry-run to check the export on this machine")


def cuda_backend():
    """(CudaPartitioner, CudaBackend): same module paths in executorch 1.2 and 1.5."""
    try:
        from executorch.backends.cuda.cuda_backend import CudaBackend
        from executorch.backends.cuda.cuda_partitioner import CudaPartitioner
    except ImportError as e:
        raise ExportError(f"executorch's CUDA backend is not importable: {e}") from e
    return CudaPartitioner, CudaBackend


def host_io_partitioner(method: str):
    """A CudaPartitioner for one method whose delegate I/O stays planned in host memory.

    executorch 1.2: the partitioner carries only the method-name spec; I/O is host memory.
    executorch >= 1.4/1.5: CudaPartitioner appends `target_device=cuda:0`, so to_executorch tags the
    delegate's tensors as CUDA and (with `enable_non_cpu_memory_planning`, on by default in 1.5) plans
    them in device memory with et_copy ops around the delegate. We remove that spec from the
    delegation spec (nothing in the backend's compile path reads it) and turn the planner flag off in
    `backend_config`: the program then has the 1.2 layout, host inputs and outputs, on every release.
    """
    CudaPartitioner, CudaBackend = cuda_backend()
    return strip_target_device(CudaPartitioner([CudaBackend.generate_method_name_compile_spec(method)]))


def strip_target_device(partitioner):
    """Drop the `target_device` compile spec from a partitioner's delegation spec (no-op without one)."""
    from executorch.exir.backend.partitioner import DelegationSpec

    spec = partitioner.delegation_spec
    keep = [s for s in spec.compile_specs if s.key != TARGET_DEVICE_KEY]
    partitioner.delegation_spec = DelegationSpec(spec.backend_id, keep)
    return partitioner


def backend_config():
    """ExecutorchBackendConfig: host-memory planning on every release (fields differ by version)."""
    from executorch.exir import ExecutorchBackendConfig

    kwargs = {"extract_delegate_segments": True}
    names = {f.name for f in dataclasses.fields(ExecutorchBackendConfig)}
    if "enable_non_cpu_memory_planning" in names:  # executorch >= 1.5; absent (host-only) in 1.2
        kwargs["enable_non_cpu_memory_planning"] = False
    return ExecutorchBackendConfig(**kwargs)


def edge_compile_config():
    from executorch.exir import EdgeCompileConfig

    # The IR checker rejects triton_ops and the tq:: custom ops; dim-order ops would become
    # fallback kernels inside the AOTI graph.
    return EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True)


# Triton GEMM configs Inductor autotunes per matmul (the first N of its list per template). The full
# list (~20 per template, several templates) made the tiny model's AOTI compile take minutes; the
# GEMMs here are only the projections around the custom kernels.
DEFAULT_GEMM_CONFIGS = 6


@contextmanager
def _compile_settings(gemm_configs: int | None = DEFAULT_GEMM_CONFIGS):
    """Inductor settings for the AOTI compile, restored afterwards.

    Coordinate-descent tuning re-benchmarks every kernel for little gain on these shapes; the wrapper
    .cpp only launches kernels, so -O0 compiles it much faster at no runtime cost (both as in
    executorch's own Qwen 3.5 MoE export). CudaBackend's max_autotune stays on: without it GEMMs
    become cuBLAS extern calls, which a torch-free runtime cannot run (checked on the GPU host);
    `gemm_configs` caps the Triton configs tried per GEMM template (None: Inductor's full list).
    """
    import torch._inductor.config as inductor_config

    saved = {}

    def put(obj, attr, value):
        if hasattr(obj, attr):
            saved[(obj, attr)] = getattr(obj, attr)
            setattr(obj, attr, value)

    put(inductor_config, "coordinate_descent_tuning", False)
    put(inductor_config.aot_inductor, "compile_wrapper_opt_level", "O0")
    put(inductor_config.test_configs, "max_mm_configs", gemm_configs)
    # Triton compiles in this process, where register_caps applies (its worker processes
    # would compile the decode kernel without its register cap).
    put(inductor_config, "compile_threads", 1)
    with _single_arch_kernels(), register_caps():
        try:
            yield
        finally:
            for (obj, attr), value in saved.items():
                setattr(obj, attr, value)


@contextmanager
def register_caps():
    """Keep a Triton kernel's register cap (its autotune config's `maxnreg`) in the compiled program.

    tq4_sdpa's decode kernel caps its registers at 128 so that 4 programs fit per SM; uncapped,
    ptxas takes ~160 and 3 fit, up to 25% slower at 32K-128K (results/attention.md). Inductor
    (torch 2.11-2.13) carries a user kernel's num_warps and num_stages from its config into
    triton.compile but drops maxnreg twice: `config_to_dict` leaves it out of the configs written
    into the generated kernel source, and `_create_compile_options` out of the compile options.
    This puts it back in both places, for the duration of the export. A torch without either
    function compiles the kernel uncapped (slower, same results).
    """
    from torch._inductor.runtime import triton_heuristics as th

    to_dict = getattr(th, "config_to_dict", None)
    autotuner = getattr(th, "CachingAutotuner", None)
    options = getattr(autotuner, "_create_compile_options", None)
    if to_dict is None or options is None:
        yield
        return

    def config_to_dict(config):
        out = to_dict(config)
        if getattr(config, "maxnreg", None):
            out["maxnreg"] = config.maxnreg
        return out

    def create_compile_options(self, cfg, compile_meta):
        out = options(self, cfg, compile_meta)
        if getattr(cfg, "maxnreg", None):
            out["maxnreg"] = cfg.maxnreg
        return out

    th.config_to_dict = config_to_dict
    autotuner._create_compile_options = create_compile_options
    try:
        yield
    finally:
        th.config_to_dict = to_dict
        autotuner._create_compile_options = options


@contextmanager
def _single_arch_kernels():
    """Embed each kernel as a cubin for this GPU instead of a fatbin.

    CudaBackend asks Inductor for multi-arch fatbins, which torch 2.11 builds with one nvcc call per
    kernel, serially, after Triton has already compiled the cubin. Triton compiles for the GPU that
    runs the export, so the fatbin holds that one architecture (plus its PTX) anyway: the program
    runs on the same GPUs either way, and the export skips hundreds of compiler calls.
    """
    _, backend = cuda_backend()
    own = backend.__dict__.get("get_aoti_compile_options")
    inherited = backend.get_aoti_compile_options

    def options(cls, compile_specs):
        opts = inherited(compile_specs)
        if "aot_inductor.emit_multi_arch_kernel" in opts:
            opts["aot_inductor.emit_multi_arch_kernel"] = False
        return opts

    backend.get_aoti_compile_options = classmethod(options)
    try:
        yield
    finally:
        if own is not None:
            backend.get_aoti_compile_options = own
        else:
            del backend.get_aoti_compile_options


# --------------------------------------------------------------------------------------------
# Lowering the two methods at once
#
# The CUDA backend compiles one method after the other, and each compile (AOTInductor: Inductor
# lowering, Triton compiles, GEMM autotuning, the wrapper's C++ build) is most of the export's time.
# With executorch 1.2's backend every method compiles on its own (BackendDetails'
# preprocess_multimethod loops over `preprocess`), so a second process can compile `decode` from
# the same checkpoint while this one compiles `prefill`; this process then uses its result, after
# checking that the worker compiled the very same edge program (fingerprint). Newer backends share
# one weight store across methods and are left to lower in one process.
# --------------------------------------------------------------------------------------------


def can_lower_in_parallel() -> bool:
    """True when the installed CUDA backend compiles each method independently (executorch 1.2)."""
    from executorch.exir.backend.backend_details import BackendDetails

    _, backend = cuda_backend()
    return backend.preprocess_multimethod.__func__ is BackendDetails.preprocess_multimethod.__func__


def program_fingerprint(program: torch.export.ExportedProgram) -> str:
    """sha256 of an edge program's code and every tensor it holds (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(program.graph_module.code.encode())
    tensors = {**program.state_dict, **{k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)}}
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def _preprocess_multimethod(fn):
    """Install fn(cls, edge_programs, compile_specs) as CudaBackend.preprocess_multimethod."""
    _, backend = cuda_backend()
    backend.preprocess_multimethod = classmethod(fn)
    try:
        yield
    finally:
        del backend.preprocess_multimethod


def lower_one(programs: dict[str, torch.export.ExportedProgram], method: str, result_path: str | Path,
              gemm_configs: int | None = DEFAULT_GEMM_CONFIGS) -> None:
    """Worker side: compile `method` only and pickle [(fingerprint, PreprocessResult)] to result_path."""
    require_cuda()
    import pickle

    from executorch.exir import to_edge_transform_and_lower

    def compile_method(cls, edge_programs, compile_specs):
        results = [(program_fingerprint(ep), cls.preprocess(ep, specs))
                   for ep, specs in zip(edge_programs[method], compile_specs[method])]
        tmp = Path(f"{result_path}.tmp")
        tmp.write_bytes(pickle.dumps(results))
        os.replace(tmp, result_path)  # the reader never sees half a file
        return {method: [r for _, r in results]}

    with _compile_settings(gemm_configs), _preprocess_multimethod(compile_method):
        to_edge_transform_and_lower({method: programs[method]}, partitioner={method: [host_io_partitioner(method)]},
                                    compile_config=edge_compile_config())


def lower(programs: dict[str, torch.export.ExportedProgram], constants: dict,
          gemm_configs: int | None = DEFAULT_GEMM_CONFIGS, borrowed: dict | None = None):
    """to_edge_transform_and_lower with one CudaPartitioner per method, then to_executorch.

    `borrowed` maps a method to an object whose `collect(fingerprints)` returns the PreprocessResults
    another process compiled for it (see lower_one), or None to compile it here after all.
    Returns the ExecutorchProgramManager. Needs CUDA (AOTInductor compiles and autotunes on the GPU).
    """
    require_cuda()
    from executorch.exir import to_edge_transform_and_lower

    def compile_methods(cls, edge_programs, compile_specs):
        def here(m):
            return [cls.preprocess(ep, specs) for ep, specs in zip(edge_programs[m], compile_specs[m])]

        results = {m: here(m) for m in edge_programs if m not in borrowed}
        for m in edge_programs:
            if m in borrowed:
                got = borrowed[m].collect([program_fingerprint(ep) for ep in edge_programs[m]])
                results[m] = got if got is not None else here(m)
        return {m: results[m] for m in edge_programs}

    hook = _preprocess_multimethod(compile_methods) if borrowed else nullcontext()
    with _compile_settings(gemm_configs), hook:
        edge = to_edge_transform_and_lower(
            dict(programs),
            partitioner={m: [host_io_partitioner(m)] for m in programs},
            constant_methods=constants,
            compile_config=edge_compile_config(),
        )
        program = edge.to_executorch(backend_config())
    check_host_io(program)
    return program


def check_host_io(program, methods: tuple[str, ...] = METHODS) -> None:
    """Each method must be one delegate call with host I/O: no device copies, no CPU-side ops."""
    for method in methods:
        gm = program.exported_program(method).graph_module
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            target = str(node.target)
            if "et_copy" in target:
                raise ExportError(f"method '{method}' has a host/device copy ({target}); delegate I/O "
                                  "must stay in host memory")
            spec = node.meta.get("spec")
            specs = spec if isinstance(spec, (list, tuple)) else [spec]
            for s in specs:
                device = getattr(s, "device", None)  # TensorSpec.device exists from executorch 1.4 on
                name = str(getattr(device, "name", device)).upper()
                if device is not None and name != "CPU":
                    raise ExportError(f"method '{method}' plans a tensor on {name}; delegate I/O must stay "
                                      "in host memory")
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        delegates = [n for n in calls if "call_delegate" in str(n.target)]
        others = [n for n in calls if not any(k in str(n.target) for k in ("call_delegate", "getitem", "alloc"))]
        if len(delegates) != 1 or others:
            extra = sorted({str(n.target) for n in others})[:3]
            raise ExportError(f"method '{method}' was not lowered as one CUDA delegate "
                              f"({len(delegates)} delegates, non-delegated ops: {extra})")


def write_program(program, out_dir: str | Path) -> list[Path]:
    """model.pte and the tensor data (aoti_cuda_blob.ptd) into out_dir; returns the files written."""
    out = Path(out_dir)
    before = set(out.iterdir())
    with open(out / PTE_NAME, "wb") as f:
        program.write_to_file(f)
    program.write_tensor_data_to_file(str(out))
    written = sorted(set(out.iterdir()) - before)
    if not (out / PTD_NAME).is_file():
        names = ", ".join(p.name for p in written)
        raise ExportError(f"the CUDA backend wrote no {PTD_NAME} (wrote: {names})")
    return written


def read_constant_methods(pte) -> dict:
    """The `get_*` constant methods of a program (path or bytes), read back with executorch's runtime.

    Loading a constant method initializes no delegate, so this works without the CUDA backend.
    Lists come back as lists; everything else as its single value.
    """
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(pte if isinstance(pte, (bytes, bytearray)) else Path(pte))
    out = {}
    for name in sorted(n for n in program.method_names if n.startswith("get_")):
        values = list(program.load_method(name).execute([]))
        out[name] = values if name == "get_eos_ids" or len(values) != 1 else values[0]
    return out


def file_sizes(paths) -> dict[str, int]:
    return {Path(p).name: os.path.getsize(p) for p in paths}

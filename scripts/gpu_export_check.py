"""GPU-host check of the export pipeline: `tq-export --tiny` lowers, and the exported graphs generate what eager does.

    python scripts/gpu_export_check.py --out results/gpu_export_check.json [--variants bf16,tq] [--steps 32]
                                       [--skip-cli] [--skip-compare] [--routes ep,inductor,aoti] [--keep DIR]

Made for the GPU host (torch 2.11 + executorch 1.2.0; `source WHEELHOUSE/install.sh` first). Works from
the source tree without installing it (it puts the repo and `tq_kernels` on the path like
scripts/dev_env.sh).

1. CLI: `python -m tq_export --model qwen3.5-moe --tiny [--turboquant] -o DIR` per variant, timed (target
   < 3 min each); model.pte and aoti_cuda_blob.ptd must exist; the constant methods are read back
   from the .pte with executorch's runtime.
2. Compare: the same `prefill`/`decode` ExportedPrograms the CLI lowers (tq_export.export.export_methods
   on the same tiny checkpoint), moved to CUDA and run
     * `ep`:   as `ep.module()` (the exported graph, eager kernels);
     * `inductor`: compiled by Inductor with the settings ExecuTorch's CUDA backend uses
               (torch.compile of `ep.module()`: the lowering and Triton kernels AOTInductor
               generates, with a Python wrapper instead of a C++ one);
     * `aoti`: compiled with torch._inductor.aoti_compile_and_package and loaded with
               aoti_load_package (not run by default: see DEFAULT_ROUTES);
   the compiled routes run in a child process each: a crash in native code becomes a reported error
   naming the step it died in, with the Python stack faulthandler printed;
   each method with its own copy of everything except the mutable buffers listed by `shared_buffers`,
   which both methods are pointed at by FQN (`ep`: re-registered buffers; `aoti`: load_constants
   with user_managed=True) -- the sharing the C++ runner does. Greedy tokens for `--steps` steps
   (prefill of a 7-token prompt, then decode) are compared with the eager model's argmax tokens, on
   the seeded prompt (of --prompt-tries) whose eager path has the widest top-2 logit gaps: a route
   passes when it gives eager's tokens, or when, fed eager's tokens (teacher forcing), it differs
   only at steps where eager scored its token within 4 bf16 ulps of the top one. After the
   teacher-forced run, and again right after prefill, each compiled route's caches and recurrent
   states are compared bit for bit with those of `ep.module()` fed the same tokens (reported, not
   gating): equal states put any difference in tokens after the cache, in the logits. Also
   reported, not gating: chunked prefill (3 + 3 + 1 tokens, so T = 1 runs through prefill),
   temperature sampling against the eager sampler on eager logits, and the sampler compiled by
   Inductor against eager (bit-exact expected).
Prints a table and writes everything to --out (JSON). Exit status 0 when every gating check passed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bootstrap_path() -> str:
    """Make `tq_export` and `tq_kernels` importable from the source tree; return the PYTHONPATH to use."""
    extra = []
    try:
        import tq_export  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))
        extra.append(str(ROOT))
    return os.pathsep.join(extra + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


PYTHONPATH = _bootstrap_path()

import torch

from tq_export import export as ex
from tq_export import models
from tq_export.tiny import make_tiny_checkpoint

VARIANTS = {"bf16": False, "tq": True}
ROUTES = ("ep", "inductor", "aoti")  # how the exported graphs are run (see the docstring)
# aoti is not run by default: on the GPU host (torch 2.11) aoti_load_package segfaults for any
# package, a single nn.Linear included (results/gpu_export.md, run 11).
DEFAULT_ROUTES = ("ep", "inductor")
DEVICE = "cuda"  # --device cpu: a smoke test of this script itself on a machine without a GPU
MAX_SEQ_LEN, MAX_PREFILL = 4096, 512  # the CLI defaults
PROMPT_LEN = 7
PROMPT_TRIES = 64  # seeded prompts searched for one without near ties (clearest_prompt; --prompt-tries)
NEAR_TIE_ULPS = 4


def log(msg: str) -> None:
    print(msg, flush=True)


STAGE_MARK = "[stage] "
INDUCTOR_CONFIGS: dict = {}  # extra Inductor settings for the compiled routes (--inductor-configs)


def stage(name: str) -> None:
    """Mark the step being entered; a crashed child is reported by its last mark."""
    log(STAGE_MARK + name)


def short_error(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


# --------------------------------------------------------------------------------------------
# 1. The CLI
# --------------------------------------------------------------------------------------------


def run_cli(variant: str, out: Path, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "tq_export", "--model", "qwen3.5-moe", "--tiny", "-o", str(out)]
    if VARIANTS[variant]:
        cmd.append("--turboquant")
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    log(f"[cli {variant}] {' '.join(cmd[1:])}")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = None, e.stdout or "", f"timed out after {timeout} s"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    seconds = time.perf_counter() - start
    result = {"command": cmd[1:], "rc": rc, "seconds": round(seconds, 1), "under_3_min": seconds < 180,
              "stdout_tail": stdout[-3000:], "stderr_tail": stderr[-3000:] if isinstance(stderr, str) else ""}
    pte, ptd = out / ex.PTE_NAME, out / ex.PTD_NAME
    result["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir())} if out.is_dir() else {}
    result["pte_and_ptd"] = pte.is_file() and ptd.is_file()
    if (out / "export_report.json").is_file():
        report = json.loads((out / "export_report.json").read_text())
        result["stages_s"] = report.get("stages_s")
        result["decode_lowered_by_worker"] = report.get("decode_lowered_by_worker")
        result["versions"] = report.get("versions")
    if pte.is_file():
        try:
            result["constant_methods"] = ex.read_constant_methods(pte)
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            result["constant_methods_error"] = short_error(e)
    result["ok"] = rc == 0 and result["pte_and_ptd"]
    log(f"[cli {variant}] rc={rc} {seconds:.1f} s files={result['files']}")
    if rc != 0:
        log(f"[cli {variant}] stderr: {result['stderr_tail'].strip()[-500:]}")
    return result


# --------------------------------------------------------------------------------------------
# 2. Exported graphs on the GPU against eager
# --------------------------------------------------------------------------------------------


def load(ckpt: Path, turboquant: bool, device: str):
    from tq_export.rewrite import apply_turboquant

    model = models.load(ckpt, max_seq_len=MAX_SEQ_LEN, dtype=torch.bfloat16, device=device, name="qwen3.5-moe")
    if turboquant:
        apply_turboquant(model)
    return model


def buffer_of(ep, fqn: str) -> torch.Tensor:
    return ep.state_dict[fqn] if fqn in ep.state_dict else ep.constants[fqn]


def ep_runners(programs: dict, shared: list[str]) -> dict:
    """ep.module() per method; decode's mutable buffers re-bound to prefill's by FQN."""
    mods = {m: programs[m].module() for m in ex.METHODS}
    for fqn in shared:
        owner, _, leaf = fqn.rpartition(".")
        mods["decode"].get_submodule(owner).register_buffer(leaf, mods["prefill"].get_buffer(fqn), persistent=False)

    def reset():
        for fqn in shared:
            mods["prefill"].get_buffer(fqn).zero_()

    def state():
        return {fqn: mods["prefill"].get_buffer(fqn) for fqn in shared}

    return {"prefill": mods["prefill"], "decode": mods["decode"], "reset": reset, "state": state}


def export_inductor_options() -> dict:
    """The Inductor settings ExecuTorch's CUDA backend compiles with (Triton GEMMs, precision casts,
    ...), less the AOT-only ones: the compiled route then generates the kernels the .pte holds."""
    _, backend = ex.cuda_backend()
    opts = backend.get_aoti_compile_options([backend.generate_method_name_compile_spec("decode")])
    opts = {k: v for k, v in opts.items() if not k.startswith("aot_inductor")}
    # A GEMM no Triton template takes (the MoE's [1, H] x [H, 1] shared-expert gate at decode)
    # needs a fallback here (the CUDA backend lowers the edge program's version of it without one).
    if opts.get("max_autotune_gemm_backends") == "TRITON":
        opts["max_autotune_gemm_backends"] = "TRITON,ATEN"
    return opts


def inductor_runners(programs: dict, shared: list[str]) -> dict:
    """ep_runners, each method compiled by Inductor with the export's settings (prefill with a
    dynamic length, as exported). Compiles at the first call, inside ex._compile_settings."""
    run = ep_runners(programs, shared)
    opts = {**export_inductor_options(), **INDUCTOR_CONFIGS}
    for method, dynamic in (("prefill", True), ("decode", False)):
        stage(f"compile {method} (runs at the first call)")
        run[method] = torch.compile(run[method], fullgraph=True, dynamic=dynamic, options=opts)
    return run


def aoti_runners(programs: dict, shared: list[str], workdir: Path, tag: str) -> dict:
    """AOTInductor package per method; both point their mutable-buffer constants at one set of tensors."""
    state = {fqn: torch.zeros_like(buffer_of(programs["prefill"], fqn)) for fqn in shared}
    runners, info = {}, {}
    for method in ex.METHODS:
        start = time.perf_counter()
        stage(f"compile {method}")
        path = torch._inductor.aoti_compile_and_package(
            programs[method], package_path=str(workdir / f"{tag}-{method}.pt2"),
            inductor_configs={"emulate_precision_casts": True, **INDUCTOR_CONFIGS})
        stage(f"load {method}")
        compiled = torch._inductor.aoti_load_package(path)
        info[f"{method}_compile_s"] = round(time.perf_counter() - start, 1)
        fqns = set(compiled.get_constant_fqns())
        missing = sorted(set(shared) - fqns)
        if missing:
            raise RuntimeError(f"{method}: shared buffers are not AOTI constants: {missing[:4]}")
        try:
            stage(f"share buffers {method}")
            compiled.load_constants(state, check_full_update=False, user_managed=True)
            info["user_managed"] = True
        except TypeError:  # a torch without user_managed: copies, so state would NOT be shared
            raise RuntimeError("this torch's AOTICompiledModel.load_constants has no user_managed") from None
        runners[method] = compiled

    def reset():
        for t in state.values():
            t.zero_()

    runners["reset"] = reset
    runners["written"] = lambda: any(bool(t.ne(0).any()) for t in state.values())  # the containers wrote OUR tensors
    runners["info"] = info
    return runners


def generate(run: dict, prompt: torch.Tensor, steps: int, temperature: float, seed: int, chunks=None,
             forced: list[int] | None = None) -> list[int]:
    """prefill (optionally in chunks) then decode; the runner's loop, in Python. With `forced`, each
    decode step is fed forced[i] instead of the method's own token (teacher forcing: one near-tie flip
    then costs one step, not the rest of the sequence)."""
    dev = prompt.device
    temp = torch.tensor([temperature], dtype=torch.float32, device=dev)
    run["reset"]()
    n, pos, tok = prompt.shape[1], 0, None
    for size in chunks or [n]:
        ids = prompt[:, pos:pos + size]
        seed_t = torch.tensor([seed + pos], dtype=torch.int64, device=dev)  # the runner passes seed + start
        tok = run["prefill"](ids, torch.arange(pos, pos + size, device=dev), temp, seed_t)
        tok = tok[0] if isinstance(tok, (list, tuple)) else tok
        pos += size
    out = [int(tok.item())]
    for i in range(steps - 1):
        seed_t = torch.tensor([seed + pos], dtype=torch.int64, device=dev)
        if forced is not None:
            tok = torch.tensor([forced[i]], dtype=torch.int64, device=dev)
        tok = run["decode"](tok.view(1, 1), torch.tensor([pos], device=dev), temp, seed_t)
        tok = tok[0] if isinstance(tok, (list, tuple)) else tok
        out.append(int(tok.item()))
        pos += 1
    return out


def eager_generate(model, prompt: torch.Tensor, steps: int, temperature: float, seed: int):
    """Eager tokens (argmax, or the same sampler on eager logits, seeded as `generate` seeds the methods),
    the top-1/top-2 logit margin at each step, and each step's logits (float, on the CPU)."""
    dev = prompt.device
    temp = torch.tensor([temperature], dtype=torch.float32, device=dev)
    model.reset()
    out, margins, tops, steps_logits = [], [], [], []
    with torch.no_grad():
        start, n = 0, prompt.shape[1]  # the last call's first position and length
        logits = model(prompt, torch.arange(n, device=dev))[:, -1]
        for _ in range(steps):
            top2 = logits.float().topk(2, dim=-1).values[0]
            steps_logits.append(logits[0].float().cpu())
            margins.append(float(top2[0] - top2[1]))
            tops.append(float(top2[0]))
            last = start + n - 1
            tok = ex.sample_next_token(logits, temp, torch.tensor([seed + start], device=dev),
                                       torch.tensor([last], device=dev))
            out.append(int(tok.item()))
            start, n = last + 1, 1
            logits = model(tok.view(1, 1), torch.tensor([start], device=dev))[:, -1]
    model.reset()
    return out, margins, tops, steps_logits


def margin_ulps(margin: float, top: float) -> float:
    """A logit gap in bf16 ulps of the top logit."""
    import math

    return margin / (2.0 ** (math.floor(math.log2(abs(top))) - 7) if top else 2.0 ** -133)


def clearest_prompt(model, steps: int):
    """A prompt whose eager greedy path has no near tie, if one is found among PROMPT_TRIES seeded
    prompts (else the one whose closest call is widest), and that path.

    The tiny model is random and its logits nearly flat: most prompts meet a step whose top two
    logits are within a bf16 ulp or two (even exactly tied), where any compile that rounds
    differently from eager may pick the other token. On a prompt without such a step, every
    compiled route must give eager's tokens exactly (near_tie then excuses nothing)."""
    best = None
    for seed in range(max(1, PROMPT_TRIES)):
        prompt = torch.randint(0, 256, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(seed)).to(DEVICE)
        want, margins, tops, logits = eager_generate(model, prompt, steps, 0.0, 0)
        closest = min(margin_ulps(m, t) for m, t in zip(margins, tops))
        if best is None or closest > best[0]:
            best = (closest, (prompt, want, margins, tops, logits))
        if closest > NEAR_TIE_ULPS:
            break
    return best[1]


def near_tie(margin: float, top: float) -> bool:
    """A logit within 4 bf16 ulps of the top one: compiled and eager kernels may round either way."""
    return margin_ulps(margin, top) <= NEAR_TIE_ULPS


def state_differences(got: dict, want: dict) -> dict:
    """Per shared buffer (caches, recurrent states) that differs bit for bit: how many elements, and
    for a KV cache ([B, H_kv, S, ...]) at which positions."""
    out = {}
    for fqn, w in want.items():
        diff = got[fqn] != w
        if diff.any():
            out[fqn] = {"elements": int(diff.sum())}
            if ".cache." in fqn and diff.dim() >= 3:
                rows = diff if diff.dim() == 3 else diff.flatten(3).any(-1)  # [B, H_kv, S]
                out[fqn]["positions"] = rows.any(1).any(0).nonzero().flatten().tolist()
    return out


def first_mismatch(a: list[int], b: list[int]):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def sampler_exact() -> dict:
    """sample_next_token compiled by Inductor on CUDA against eager on the same logits (bit-exact)."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    logits = torch.randn(1, 248_320, device=DEVICE, generator=g).bfloat16()
    compiled = torch.compile(ex.sample_next_token, fullgraph=True, dynamic=False)
    cases = 0
    for temperature in (0.0, 0.8):
        for seed in (0, 1, -5, 2**40 + 3):
            args = (logits, torch.tensor([temperature], device=DEVICE), torch.tensor([seed], device=DEVICE),
                    torch.tensor([11], device=DEVICE))
            if not torch.equal(compiled(*args), ex.sample_next_token(*args)):
                return {"ok": False, "case": {"temperature": temperature, "seed": seed}}
            cases += 1
    return {"ok": True, "cases": cases}


def drop_device_asserts(ep):
    """Remove aten._assert_tensor_metadata nodes. They pin the device seen at export (CPU here);
    move_to_device_pass rewrites them to a device without an index ("cuda"), which AOTInductor's
    fake tensors (on "cuda:0") then fail. They check nothing the runs below rely on."""
    graph = ep.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)
    ep.graph_module.recompile()
    return ep


def compare(variant: str, ckpt: Path, workdir: Path, steps: int, route: str) -> dict:
    """Tokens of one route (see ROUTES) against eager, in this process."""
    from torch.export.passes import move_to_device_pass

    turboquant = VARIANTS[variant]
    result: dict = {}
    stage("export")
    log(f"[compare {variant}] export on CPU, eager on {DEVICE}")
    cpu_model = load(ckpt, turboquant, "cpu")
    cpu_programs = ex.export_methods(cpu_model, MAX_PREFILL)
    shared = ex.shared_buffers(cpu_programs)

    def on_device() -> dict:
        """The programs on DEVICE. move_to_device_pass moves the exported programs' constants (the
        non-persistent buffers: KV caches, recurrent states) in place, so every call shares those
        tensors: the state comparison clones the route's state before eager runs on them."""
        if DEVICE != "cpu":
            return {m: drop_device_asserts(move_to_device_pass(ep, DEVICE)) for m, ep in cpu_programs.items()}
        return {m: move_to_device_pass(ep, "cpu") for m, ep in cpu_programs.items()}

    programs = on_device()
    ref = load(ckpt, turboquant, DEVICE)
    stage("eager")
    prompt, want, margins, tops, logits = clearest_prompt(ref, steps)
    result["prompt"] = prompt[0].tolist()
    result["eager_min_margin_ulps"] = round(min(margin_ulps(m, t) for m, t in zip(margins, tops)), 2)
    want_t, _, _, _ = eager_generate(ref, prompt, steps, 0.8, 1234)
    result["eager_greedy"] = want
    result["eager_min_margin"] = round(min(margins), 4)

    routes = {}
    try:
        if route == "ep":
            routes["ep"] = ep_runners(programs, shared)
        elif route == "inductor":
            routes["inductor"] = inductor_runners(programs, shared)
        else:
            log(f"[compare {variant}] AOTInductor compile of prefill + decode")
            routes["aoti"] = aoti_runners(programs, shared, workdir, variant)
            result["aoti_info"] = routes["aoti"].pop("info")
    except Exception as e:  # noqa: BLE001
        result[f"{route}_error"] = short_error(e)
        result[f"{route}_traceback"] = traceback.format_exc()[-4000:]
    stage("generate")
    # The settings `tq-export --tiny` lowers with (one GEMM config per template, ...).
    with torch.no_grad(), ex._compile_settings(1):
        for name, run in routes.items():
            try:
                got = generate(run, prompt, steps, 0.0, 0)
                bad = first_mismatch(got, want)
                result[f"{name}_greedy"] = got
                result[f"{name}_greedy_match"] = f"{sum(a == b for a, b in zip(got, want))}/{steps}"
                forced = generate(run, prompt, steps, 0.0, 0, forced=want)
                wrong = [i for i, (a, b) in enumerate(zip(forced, want)) if a != b]
                # A flip is a near-tie when eager scored the route's token within rounding of its top.
                ties = [i for i in wrong if near_tie(tops[i] - float(logits[i][forced[i]]), tops[i])]
                result[f"{name}_greedy_forced_match"] = f"{steps - len(wrong)}/{steps}"
                if name != "ep" and "state" in run:
                    # The caches and recurrent states the route wrote, against the exported graph
                    # run eagerly on the same tokens: where does a difference start? Once after
                    # the whole teacher-forced run, once right after prefill (decaying recurrent
                    # states can round a prefill difference away over the decode steps).
                    got = {fqn: t.clone() for fqn, t in run["state"]().items()}
                    ep_run = ep_runners(on_device(), shared)
                    generate(ep_run, prompt, steps, 0.0, 0, forced=want)
                    result[f"{name}_state_differs_from_ep"] = state_differences(got, ep_run["state"]())
                    generate(run, prompt, 1, 0.0, 0)  # prefill only
                    got = {fqn: t.clone() for fqn, t in run["state"]().items()}
                    generate(ep_run, prompt, 1, 0.0, 0)
                    result[f"{name}_prefill_state_differs_from_ep"] = state_differences(got, ep_run["state"]())
                    result[f"{name}_state_buffers"] = len(shared)
                result[f"{name}_near_tie_flips"] = ties
                # Exact free-running agreement, or every disagreement (teacher-forced) at a near-tie.
                result[f"{name}_greedy_ok"] = bad is None or len(ties) == len(wrong)
                if bad is not None:
                    result[f"{name}_first_mismatch"] = {"step": bad, "eager_margin": round(margins[bad], 4),
                                                        "eager_top": round(tops[bad], 4)}
                if name == "aoti":
                    result["aoti_state_written"] = run["written"]()
                k = min(9, steps)
                chunked = generate(run, prompt, k, 0.0, 0, chunks=[3, 3, 1])
                result[f"{name}_chunked_prefill_ok"] = chunked == want[:k]
                sampled = generate(run, prompt, steps, 0.8, 1234)
                result[f"{name}_sampled_match"] = sum(a == b for a, b in zip(sampled, want_t))
            except Exception as e:  # noqa: BLE001
                result[f"{name}_error"] = short_error(e)
                result[f"{name}_traceback"] = traceback.format_exc()[-4000:]
    stage("done")
    log(f"[compare {variant}] " + ", ".join(f"{k}={v}" for k, v in result.items()
                                          if k.endswith(("_match", "_ok", "_error", "_state_differs_from_ep"))))
    return result


def route_in_child(route: str, variant: str, ckpt: Path, workdir: Path, steps: int, timeout: int) -> dict:
    """One compiled route in a child process (this script with --child): Inductor and AOTInductor
    compile and load native code, and a crash there must not take the whole check down with it."""
    import signal

    out, log_path = workdir / f"{route}-{variant}.json", workdir / f"{route}-{variant}.log"
    cmd = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "--child", variant,
           "--routes", route, "--ckpt", str(ckpt), "--keep", str(workdir), "--steps", str(steps),
           "--out", str(out), "--device", DEVICE, "--inductor-configs", json.dumps(INDUCTOR_CONFIGS),
           "--prompt-tries", str(PROMPT_TRIES)]
    log(f"[compare {variant}] {route} route in a child process, log {log_path}")
    start = time.perf_counter()
    with open(log_path, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                                env={**os.environ, "PYTHONPATH": PYTHONPATH}).returncode
        except subprocess.TimeoutExpired:
            rc = None
    text = log_path.read_text(errors="replace")
    if rc == 0 and out.is_file():
        return json.loads(out.read_text())
    marks = [ln[len(STAGE_MARK):] for ln in text.splitlines() if ln.startswith(STAGE_MARK)]
    where = marks[-1] if marks else "start-up"
    if rc is None:
        why = f"timed out after {timeout} s"
    elif rc < 0:
        why = f"crashed with {signal.Signals(-rc).name}"
    else:
        why = f"exited with {rc}"
    return {f"{route}_error": f"child {why} during '{where}' after {time.perf_counter() - start:.0f} s",
            f"{route}_log_tail": text[-6000:]}


def compare_routes(variant: str, ckpt: Path, workdir: Path, steps: int, routes: list[str], timeout: int) -> dict:
    result = compare(variant, ckpt, workdir, steps, "ep") if "ep" in routes else {}
    for route in routes:
        if route != "ep":
            child = route_in_child(route, variant, ckpt, workdir, steps, timeout)
            result.update({k: v for k, v in child.items() if k.startswith(route) or k not in result})
            if f"{route}_error" in child:
                log(f"[compare {variant}] {route}: {child[f'{route}_error']}")
    result["ok"] = all(result.get(f"{r}_greedy_ok") for r in routes)
    return result


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def mib(files: dict, name: str) -> str:
    return f"{files[name] / 2**20:.1f} MiB" if name in files else "-"


def table(results: dict, steps: int) -> str:
    head = (f"{'variant':<8} {'cli':<6} {'export s':>8} {'.pte':>10} {'.ptd':>10}  "
            + " ".join(f"{r + ' greedy':>15}" for r in ROUTES) + f" {'chunked':>8} {'sampled':>16}")
    rows = [head, "-" * len(head)]
    for variant, r in results["variants"].items():
        cli, cmp_ = r.get("cli", {}), r.get("compare", {})
        files = cli.get("files", {})
        cli_state = "-" if not cli else ("ok" if cli.get("ok") else f"rc={cli.get('rc')}")
        greedy = [cmp_.get(f"{x}_greedy_match", "err" if f"{x}_error" in cmp_ else "-") for x in ROUTES]
        chunked = [cmp_[f"{x}_chunked_prefill_ok"] for x in ROUTES if f"{x}_chunked_prefill_ok" in cmp_]
        sampled = [str(cmp_[f"{x}_sampled_match"]) for x in ROUTES if f"{x}_sampled_match" in cmp_]
        rows.append(f"{variant:<8} {cli_state:<6} {cli.get('seconds', '-')!s:>8} {mib(files, ex.PTE_NAME):>10} "
                    f"{mib(files, ex.PTD_NAME):>10}  " + " ".join(f"{g!s:>15}" for g in greedy)
                    + f" {('ok' if chunked and all(chunked) else 'FAIL' if chunked else '-'):>8} "
                    f"{(','.join(sampled) + f' of {steps}') if sampled else '-':>16}")
    return "\n".join(rows)


def main() -> int:
    global DEVICE, PROMPT_TRIES
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON log path")
    p.add_argument("--variants", default="bf16,tq", help="comma list of: bf16 (bf16 KV cache), tq (--turboquant)")
    p.add_argument("--steps", type=int, default=32, help="generated tokens compared (default 32)")
    p.add_argument("--skip-cli", action="store_true", help="skip the tq-export runs")
    p.add_argument("--skip-compare", action="store_true", help="skip the comparison of the exported graphs with eager")
    p.add_argument("--routes", default=",".join(DEFAULT_ROUTES),
                   help=f"comma list of the routes compared with eager, of {','.join(ROUTES)} "
                        f"(default {','.join(DEFAULT_ROUTES)})")
    p.add_argument("--prompt-tries", type=int, default=PROMPT_TRIES,
                   help=f"seeded prompts searched for one without near ties (default {PROMPT_TRIES})")
    p.add_argument("--timeout", type=int, default=900, help="seconds per tq-export run and per compiled route (default 900)")
    p.add_argument("--keep", type=Path, help="keep artifacts here instead of a temporary directory")
    p.add_argument("--inductor-configs", default="{}",
                   help="extra Inductor settings for the compiled routes, as JSON (to bisect a failure)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--child", metavar="VARIANT", help=argparse.SUPPRESS)  # see route_in_child
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    DEVICE = args.device
    INDUCTOR_CONFIGS.update(json.loads(args.inductor_configs))
    PROMPT_TRIES = args.prompt_tries
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    if not routes or any(r not in ROUTES for r in routes):
        print(f"error: --routes must list some of {ROUTES}", file=sys.stderr)
        return 2
    if args.child:
        result = compare(args.child, args.ckpt, args.keep, args.steps, routes[0])
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU", file=sys.stderr)
        return 3
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        print(f"error: --variants must list some of {sorted(VARIANTS)}", file=sys.stderr)
        return 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="tq-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": os.environ.get("TQ_COMMIT") or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, check=False).stdout.strip() or None,
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "python": platform.python_version(), "torch": torch.__version__,
        "steps": args.steps, "workdir": str(workdir), "variants": {},
    }
    try:
        import executorch.version as ev  # type: ignore

        results["executorch"] = getattr(ev, "__version__", None)
    except Exception:  # noqa: BLE001
        results["executorch"] = None
    log(f"GPU {results['gpu']}, torch {results['torch']}, executorch {results['executorch']}, "
        f"commit {results['commit']}, workdir {workdir}")

    ckpt = None
    if not args.skip_compare:
        ckpt = make_tiny_checkpoint(workdir / "tiny-checkpoint")  # what `--tiny` builds
        try:
            results["sampler_inductor_exact"] = sampler_exact()
        except Exception as e:  # noqa: BLE001
            results["sampler_inductor_exact"] = {"ok": False, "error": short_error(e)}
    for variant in variants:
        entry = results["variants"].setdefault(variant, {})
        if not args.skip_cli:
            entry["cli"] = run_cli(variant, workdir / f"out-{variant}", args.timeout)
        if not args.skip_compare:
            try:
                entry["compare"] = compare_routes(variant, ckpt, workdir, args.steps, routes, args.timeout)
            except Exception as e:  # noqa: BLE001
                entry["compare"] = {"ok": False, "error": short_error(e), "traceback": traceback.format_exc()[-4000:]}
                log(f"[compare {variant}] FAILED: {short_error(e)}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive a later crash

    gates = [r[k]["ok"] for r in results["variants"].values() for k in ("cli", "compare") if k in r]
    if "sampler_inductor_exact" in results:
        gates.append(results["sampler_inductor_exact"].get("ok", False))
    results["ok"] = bool(gates) and all(gates)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log("")
    log(table(results, args.steps))
    log(f"sampler compiled == eager: {results.get('sampler_inductor_exact')}")
    log(f"{'PASS' if results['ok'] else 'FAIL'}; log: {args.out}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

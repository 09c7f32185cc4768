"""`tq-export`: Hugging Face checkpoint -> (TurboQuant KV cache, arXiv 2504.19874) -> model.pte + aoti_cuda_blob.ptd.

    tq-export --model qwen3.5-moe --tiny --turboquant -o out/
    tq-export --model qwen3.5-moe --checkpoint ~/Qwen3.5-35B-A3B --turboquant --max-seq-len 32768 -o out/

Exit codes: 0 ok; 1 unexpected failure (one line; --debug shows the traceback); 2 bad input (flags,
checkpoint, output directory), one line `error: <what> (<file>)`; 3 lowering needs an NVIDIA GPU.
Artifacts are written to a temporary directory beside the output and moved in place at the end: a
failed run leaves the output directory as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_NO_GPU = 0, 1, 2, 3
REPORT_NAME = "export_report.json"
DEFAULT_MAX_SEQ_LEN = 4096
DEFAULT_MAX_PREFILL = 512
CONTEXTS = (32 * 1024, 128 * 1024, 200 * 1024)
NOISY_LOGGERS = ("torch", "torchao", "executorch", "transformers", "triton", "urllib3", "filelock")


class InputError(ValueError):
    """Bad flags or output directory. str(e) is one line: `<what>` or `<what> (<file>)`."""

    def __init__(self, what: str, file: str | Path | None = None):
        self.what, self.file = " ".join(str(what).split()), file
        super().__init__(self.what if file is None else f"{self.what} ({file})")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage block by default)
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_INPUT)


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1, "positive")


def _non_negative(text: str) -> int:
    return _integer(text, 0, "non-negative")


def build_parser() -> argparse.ArgumentParser:
    from . import models
    from .export import DEFAULT_GEMM_CONFIGS, DTYPES

    p = _Parser(prog="tq-export",
                description="Export a Hugging Face LLM with an optional TurboQuant 4-bit KV cache through "
                            "torch.export and ExecuTorch's CUDA backend to model.pte + aoti_cuda_blob.ptd.",
                epilog="exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 no NVIDIA GPU for lowering")
    p.add_argument("--model", required=True, choices=models.names(), help="model family (CLI name)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR", type=Path,
                     help="Hugging Face checkpoint directory (config.json + safetensors shards)")
    src.add_argument("--tiny", action="store_true",
                     help="a small random model of the family, built on the fly (no download)")
    p.add_argument("--turboquant", action="store_true",
                   help="swap every full-attention KV cache for the TurboQuant cache + fused tq4_sdpa attention")
    p.add_argument("--k-bits", type=int, choices=(2, 3, 4), default=None,
                   help="TurboQuant bits per key coordinate (default 4; needs --turboquant)")
    p.add_argument("--v-bits", type=int, choices=(2, 3, 4), default=None,
                   help="TurboQuant bits per value coordinate (default 4; needs --turboquant)")
    p.add_argument("--max-seq-len", type=_positive, default=DEFAULT_MAX_SEQ_LEN, metavar="N",
                   help=f"cache length: prompt + generated tokens (default {DEFAULT_MAX_SEQ_LEN})")
    p.add_argument("--max-prefill", type=_positive, default=None, metavar="N",
                   help=f"most tokens per prefill call (default min({DEFAULT_MAX_PREFILL}, max-seq-len))")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weights and activations (default bf16)")
    p.add_argument("--gemm-configs", type=_non_negative, default=None, metavar="N",
                   help="Triton GEMM tile configs autotuned per matmul during lowering; more can find faster "
                        f"tiles for large models and take longer (default {DEFAULT_GEMM_CONFIGS}, 1 with --tiny "
                        "whose GEMMs are too small to tune; 0: Inductor's full list)")
    p.add_argument("-o", "--output-dir", type=Path, default=Path("out"), metavar="DIR",
                   help="where model.pte, aoti_cuda_blob.ptd, tokenizer files and export_report.json go "
                        "(default ./out)")
    p.add_argument("--dry-run", action="store_true",
                   help="stop before lowering: validate, build, rewrite and torch.export both methods on the "
                        "CPU, print the summary, write nothing")
    p.add_argument("--serial-lowering", action="store_true",
                   help="compile the two methods one after the other in this process (by default a "
                        "second process compiles `decode` meanwhile when the model is small enough)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    # A LoweringWorker's mode: compile one method, pickle the result, write nothing else.
    p.add_argument("--worker-method", help=argparse.SUPPRESS)
    p.add_argument("--worker-result", type=Path, help=argparse.SUPPRESS)
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Cross-flag checks and defaults that argparse cannot express."""
    if (args.k_bits is not None or args.v_bits is not None) and not args.turboquant:
        raise InputError("--k-bits/--v-bits need --turboquant")
    args.k_bits = args.k_bits or 4
    args.v_bits = args.v_bits or 4
    if args.max_seq_len < 2:
        raise InputError(f"--max-seq-len must be at least 2, got {args.max_seq_len}")
    if args.max_prefill is None:
        args.max_prefill = min(DEFAULT_MAX_PREFILL, args.max_seq_len)
    if args.gemm_configs is None:
        from .export import DEFAULT_GEMM_CONFIGS

        args.gemm_configs = 1 if args.tiny else DEFAULT_GEMM_CONFIGS
    if not 2 <= args.max_prefill <= args.max_seq_len:
        raise InputError(f"--max-prefill must be in [2, --max-seq-len={args.max_seq_len}], got {args.max_prefill}")
    return args


# --------------------------------------------------------------------------------------------
# Console: stages with timing (rich when installed, plain lines otherwise)
# --------------------------------------------------------------------------------------------


class Console:
    def __init__(self):
        self.times: dict[str, float] = {}
        try:
            from rich.console import Console as RichConsole

            self.rich = RichConsole(highlight=False)
        except ImportError:  # the GPU host's offline wheelhouse has no rich
            self.rich = None

    def print(self, text: str = "") -> None:
        if self.rich is not None:
            self.rich.print(text, markup=False, soft_wrap=True)
        else:
            print(text, flush=True)

    @contextmanager
    def stage(self, key: str, title: str):
        start = time.perf_counter()
        if self.rich is not None and self.rich.is_terminal:
            with self.rich.status(title + " ..."):
                yield
        else:
            yield
        self.times[key] = time.perf_counter() - start
        self.print(f"  {title:<44} {self.times[key]:7.1f} s")

    def table(self, title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        if self.rich is not None:
            from rich.table import Table

            t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
            for i, h in enumerate(header):
                t.add_column(h, justify="left" if i == 0 else "right")
            for r in rows:
                t.add_row(*r)
            self.rich.print(t)
            return
        widths = [max(len(x) for x in col) for col in zip(header, *rows)]
        self.print(title)
        for r in (header, *rows):
            self.print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def fmt_tokens(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 and n >= 1024 else str(n)


# --------------------------------------------------------------------------------------------
# Checkpoint and output directory checks (cheap, before anything heavy)
# --------------------------------------------------------------------------------------------


def check_checkpoint(checkpoint_dir: Path, model_name: str, turboquant: bool) -> dict:
    """Validate what can be validated from config.json alone; returns the config."""
    from . import models
    from .checkpoint import CONFIG_NAME, CheckpointError, read_config

    config = read_config(checkpoint_dir)
    config_file = checkpoint_dir / CONFIG_NAME
    found, _ = models.for_config(config, config_file)
    if found != model_name:
        raise CheckpointError(f"checkpoint is a {found!r} model, not {model_name!r}", config_file)
    if turboquant:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        head_dim = text.get("head_dim")
        if head_dim is None and text.get("hidden_size") and text.get("num_attention_heads"):
            head_dim = text["hidden_size"] // text["num_attention_heads"]
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0 or head_dim % 4:
            kind = "odd" if isinstance(head_dim, int) and head_dim % 2 else "not a multiple of 4"
            raise CheckpointError(f"head_dim={head_dim} is {kind}: TurboQuant packs 4-bit indices of an even "
                                  "and an odd coordinate per byte and needs head_dim % 4 == 0", config_file)
    return config


def make_staging(out: Path) -> Path:
    """An empty temporary directory beside `out` (same filesystem, so the final rename is atomic)."""
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a directory", out)
    parent = out.absolute().parent
    ancestor = next(p for p in (parent, *parent.parents) if p.exists())
    if not ancestor.is_dir():
        raise InputError("output directory is not writable: a parent path is a file", ancestor)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tq-export-", dir=parent))
    except OSError as e:
        raise InputError(f"output directory is not writable: {e.strerror or e}", out) from None


def publish(staging: Path, out: Path) -> list[Path]:
    """Move the artifacts into place: rename the directory if `out` is new, else replace file by file
    (other files already in `out` are left alone)."""
    names = sorted(p.name for p in staging.iterdir())
    if not out.exists():
        os.replace(staging, out)
    else:
        for name in names:
            os.replace(staging / name, out / name)
        staging.rmdir()
    return [out / n for n in names]


# --------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> int:
    from . import export as ex
    from . import models
    from .checkpoint import CONFIG_NAME, CheckpointError

    dtype = ex.DTYPES[args.dtype]
    staging = None if args.dry_run or args.worker_method else make_staging(args.output_dir)
    tiny_dir = worker = None
    try:
        # --- inputs -------------------------------------------------------------------------
        if args.tiny:
            ckpt = None
        else:
            ckpt = args.checkpoint
            check_checkpoint(ckpt, args.model, args.turboquant)
        if not args.dry_run:
            ex.require_cuda()
            ex.cuda_backend()  # fail now, not after the load, if executorch's CUDA backend is missing

        console.print(f"tq-export {ex.package_version()}: {args.model} "
                      f"({'tiny random' if args.tiny else ckpt}), {args.dtype}, "
                      f"{f'TurboQuant K{args.k_bits}/V{args.v_bits}' if args.turboquant else f'{args.dtype} KV cache'}"
                      f"{', dry run' if args.dry_run else ''}")
        if args.tiny:
            with console.stage("checkpoint", "Building tiny random checkpoint"):
                tiny_dir = tempfile.TemporaryDirectory(prefix="tq-export-tiny-")
                ckpt = make_tiny(args.model, Path(tiny_dir.name), args.debug)
        if not args.dry_run and not args.worker_method and not args.serial_lowering:
            worker = LoweringWorker.start_if_useful(args, Path(ckpt), console)

        # --- build, rewrite, export -----------------------------------------------------------
        with console.stage("load", "Loading checkpoint"):
            model = models.load(ckpt, max_seq_len=args.max_seq_len, dtype=dtype, device="cpu", name=args.model)
        replaced = 0
        if args.turboquant:
            with console.stage("rewrite", "TurboQuant rewrite"):
                from .rewrite import apply_turboquant

                try:
                    replaced = apply_turboquant(model, k_bits=args.k_bits, v_bits=args.v_bits)
                except ValueError as e:  # e.g. a head_dim the quantizer cannot pack
                    raise CheckpointError(str(e), Path(ckpt) / CONFIG_NAME) from None
        with console.stage("export", "torch.export (prefill, decode)"):
            programs = ex.export_methods(model, args.max_prefill)
        if args.worker_method:
            with console.stage("lower", f"Lowering + AOTInductor compile of {args.worker_method} (CUDA)"):
                ex.lower_one(programs, args.worker_method, args.worker_result, gemm_configs=args.gemm_configs or None)
            return EXIT_OK
        shared = ex.shared_buffers(programs)
        blockers = ex.ops_without_gpu_kernel(programs)
        bos, eos = ex.special_token_ids(ckpt)
        k_bits, v_bits = ex.cache_bits(model, dtype)
        info = ex.ProgramInfo(model_name=args.model, max_seq_len=args.max_seq_len, max_prefill=args.max_prefill,
                              vocab_size=model.config.vocab_size, bos_id=bos, eos_ids=tuple(eos),
                              k_bits=k_bits, v_bits=v_bits, dtype=args.dtype, shared_buffers=tuple(shared))
        constants = ex.constant_methods(info)
        contexts = tuple(sorted({args.max_seq_len, *CONTEXTS}))
        memory = ex.kv_cache_memory(model, args.k_bits, args.v_bits, contexts,
                                    mutable=[n.removeprefix("model.") for n in shared])
        report = {
            "tq_export_version": ex.package_version(), "model": args.model,
            "checkpoint": "tiny" if args.tiny else str(ckpt), "dtype": args.dtype, "turboquant": args.turboquant,
            "k_bits": k_bits, "v_bits": v_bits, "rewritten_layers": replaced,
            "max_seq_len": args.max_seq_len, "max_prefill": args.max_prefill, "dry_run": args.dry_run,
            "gemm_configs": args.gemm_configs,
            "methods": dict(ex.SIGNATURES), "constant_methods": constants, "shared_buffers": shared,
            "kv_cache": memory, "lowering_blockers": blockers, "versions": versions(),
            "command": ["tq-export", *args.argv],
        }

        if args.dry_run:
            report["stages_s"] = dict(console.times)
            summary(console, report, files={})
            if blockers:
                console.print(f"warning: lowering would fail: {', '.join(blockers)} have no kernel the CUDA "
                              "backend can compile (needs a torch.library.triton_op or ATen ops)")
            console.print("dry run: nothing written")
            return EXIT_OK

        # --- lower, serialize, publish --------------------------------------------------------
        if blockers:
            raise ex.ExportError(f"cannot lower: {', '.join(blockers)} have no kernel the CUDA backend can "
                                 "compile (needs a torch.library.triton_op or ATen ops)")
        title = "Lowering + AOTInductor compile (CUDA" + (f", {ex.DECODE} in a second process)" if worker else ")")
        with console.stage("lower", title):
            program = ex.lower(programs, constants, gemm_configs=args.gemm_configs or None,
                               borrowed={ex.DECODE: worker} if worker else None)
        with console.stage("serialize", "Serializing model.pte + .ptd"):
            ex.write_program(program, staging)
            for name in ex.TOKENIZER_FILES:
                if (Path(ckpt) / name).is_file():
                    shutil.copy2(Path(ckpt) / name, staging / name)
        report["stages_s"] = dict(console.times)
        report["decode_lowered_by_worker"] = bool(worker and worker.used)
        report["files"] = ex.file_sizes(sorted(staging.iterdir()))
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        files = publish(staging, args.output_dir)
        staging = None
        summary(console, report, files=ex.file_sizes(files))
        console.print(f"wrote {args.output_dir}/")
        return EXIT_OK
    finally:
        if worker is not None:
            worker.stop()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if tiny_dir is not None:
            tiny_dir.cleanup()


class LoweringWorker:
    """A second `tq-export` process that compiles `decode` while this one compiles `prefill`.

    It builds the same programs from the same checkpoint (export is deterministic) and pickles the
    CUDA backend's result for `decode`; `collect` hands it to export.lower, which checks the
    fingerprint of the edge program it was compiled from. Any failure there only costs time: the
    method is then compiled in this process, as with --serial-lowering.
    """

    MAX_CHECKPOINT_BYTES = 8 * 2**30  # two processes each hold the model: only for small ones

    def __init__(self, args: argparse.Namespace, ckpt: Path, console: Console):
        import subprocess

        from .export import DECODE

        self.console, self.method, self.used = console, DECODE, False
        self.dir = Path(tempfile.mkdtemp(prefix="tq-export-worker-"))
        self.result, self.log = self.dir / f"{DECODE}.pkl", self.dir / f"{DECODE}.log"
        argv = ["--model", args.model, "--checkpoint", str(ckpt), "--dtype", args.dtype,
                "--max-seq-len", str(args.max_seq_len), "--max-prefill", str(args.max_prefill),
                "--gemm-configs", str(args.gemm_configs), "--worker-method", DECODE, "--worker-result", str(self.result)]
        if args.turboquant:
            argv += ["--turboquant", "--k-bits", str(args.k_bits), "--v-bits", str(args.v_bits)]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tq_export", *argv], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @classmethod
    def start_if_useful(cls, args: argparse.Namespace, ckpt: Path, console: Console):
        from . import export as ex

        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        if size > cls.MAX_CHECKPOINT_BYTES or not ex.can_lower_in_parallel():
            return None
        return cls(args, ckpt, console)

    def collect(self, fingerprints: list[str]):
        """The worker's PreprocessResults for `decode`, or None (after a warning) to compile it here."""
        import pickle

        rc = self.proc.wait()
        problem = None
        if rc != 0 or not self.result.is_file():
            tail = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            problem = f"exited with {rc}" + (f": {tail[0][:200]}" if tail else "")
        else:
            pairs = pickle.loads(self.result.read_bytes())
            if [f for f, _ in pairs] != fingerprints:
                problem = "compiled a different program"
        if problem:
            self.console.print(f"  note: the {self.method} worker {problem}; compiling {self.method} here")
            return None
        self.used = True
        return [r for _, r in pairs]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_tiny(model_name: str, out: Path, debug: bool) -> Path:
    if model_name != "qwen3.5-moe":
        raise InputError(f"--tiny is not available for {model_name!r}")
    from transformers.utils import logging as hf_logging

    from .tiny import make_tiny_checkpoint

    if not debug:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    return make_tiny_checkpoint(out)


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("executorch", "triton", "transformers"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # noqa: BLE001 - not installed as a distribution
            out[name] = None
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def summary(console: Console, report: dict, files: dict[str, int]) -> None:
    mem = report["kv_cache"]
    tq = f"TQ K{mem['k_bits']}/V{mem['v_bits']}"
    per = mem["bytes_per_token"]
    rows = [("per token", fmt_bytes(per["bf16"]), fmt_bytes(per["turboquant"]),
             f"{mem['ratio']:.2f}x" if mem["ratio"] else "-")]
    for c in mem["contexts"]:
        label = fmt_tokens(c["tokens"]) + (" (max)" if c["tokens"] == report["max_seq_len"] else "")
        rows.append((label, fmt_bytes(c["bf16"]), fmt_bytes(c["turboquant"]), fmt_bytes(c["saved"])))
    console.print()
    console.print(f"Program: {report['methods']['prefill']}")
    console.print(f"         {report['methods']['decode']}")
    console.print(f"         max_prefill {report['max_prefill']}, max_seq_len {report['max_seq_len']}, "
                  f"{len(report['shared_buffers'])} mutable buffers shared by both methods, "
                  f"{len(report['constant_methods'])} constant methods")
    console.print()
    console.print(f"KV cache: {mem['full_attention_layers']} full-attention layer(s), KV heads "
                  f"{', '.join(map(str, mem['kv_heads']))}, head_dim {', '.join(map(str, mem['head_dims']))}; "
                  f"linear-attention state {fmt_bytes(mem['state_bytes'])} (fixed, any context)")
    kind = f"TurboQuant K{report['k_bits']}/V{report['v_bits']}" if report["turboquant"] else report["dtype"]
    console.print(f"this program's cache: {kind}")
    console.table("KV cache bytes (batch 1)", ("context", "bf16", tq, "saved"), rows)
    if files:
        console.print()
        console.table("Files", ("file", "size"), [(name, fmt_bytes(size)) for name, size in files.items()])
    stages = report.get("stages_s", {})
    if stages:
        console.print()
        console.table("Time", ("stage", "s"), [(k, f"{v:.1f}") for k, v in stages.items()]
                      + [("total", f"{sum(stages.values()):.1f}")])


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _quiet(debug: bool) -> None:
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(name)s: %(message)s")
    if debug:
        return
    warnings.simplefilter("ignore")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("tq_export").setLevel(logging.WARNING)


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from .checkpoint import CheckpointError
    from .export import NoGPUError

    def fail(code: int, message: str) -> int:
        if args.debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr, flush=True)
        return code

    try:
        resolve_args(args)
        _quiet(args.debug)
        return run(args, Console())
    except (CheckpointError, InputError) as e:
        return fail(EXIT_INPUT, str(e))
    except NoGPUError as e:
        return fail(EXIT_NO_GPU, str(e))
    except KeyboardInterrupt:
        return fail(130, "interrupted")
    except Exception as e:  # noqa: BLE001 - the CLI's last resort: one line, exit 1
        hint = "" if args.debug else " (--debug shows the traceback)"
        return fail(EXIT_FAILURE, f"{type(e).__name__}: {_one_line(e)}{hint}")


if __name__ == "__main__":
    sys.exit(main())

"""`tq-export` end to end through a subprocess (`python -m tq_export`): dry run, bad input, no GPU.

Bad input must exit 2 with exactly one stderr line `error: <what> (<file>)` and no traceback; a run
without CUDA must exit 3; a failed run must leave the output directory as it was.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tq_export import cli
from tq_export.tiny import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, hide_gpu=False, timeout=600):
    env = dict(os.environ)
    env.setdefault("TRITON_INTERPRET", "1")
    if hide_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, "-m", "tq_export", "--model", "qwen3.5-moe", *map(str, args)],
                          cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_one_error_line(proc, code, *needles):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    assert "Traceback" not in proc.stdout + proc.stderr


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A good tiny checkpoint and broken copies of it."""
    root = tmp_path_factory.mktemp("ckpts")
    good = make_tiny_checkpoint(root / "good")

    def variant(name, edit):
        path = root / name
        shutil.copytree(good, path)
        edit(path)
        return path

    def set_config(**fields):
        def edit(path):
            config = json.loads((path / "config.json").read_text())
            config.update(fields)
            (path / "config.json").write_text(json.dumps(config))
        return edit

    def truncate(path):
        shard = path / "model.safetensors"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    return {
        "good": good,
        "corrupt": variant("corrupt", truncate),
        "llama": variant("llama", set_config(model_type="llama")),
        "odd_head_dim": variant("odd", set_config(head_dim=65)),
    }


# --------------------------------------------------------------------------------------------
# The main job, on a CPU
# --------------------------------------------------------------------------------------------


def test_dry_run_tiny_turboquant_prints_memory_table(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("--tiny", "--turboquant", "--dry-run", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for needle in ("Loading checkpoint", "TurboQuant rewrite", "torch.export (prefill, decode)",
                   "KV cache bytes", "per token", "3.94x", "32K", "128K", "200K", "4K (max)",
                   "prefill(tokens: int64[1, T]", "decode(tokens: int64[1, 1]", "dry run: nothing written"):
        assert needle in text, needle
    # 1 full-attention layer, 1 KV head, head_dim 256: bf16 1 KiB/token, TQ4 260 B/token.
    assert "1.00 KiB" in text and "260 B" in text
    assert proc.stderr == ""  # library warnings stay quiet without --debug
    assert not out.exists() and list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--checkpoint", "--tiny", "--turboquant", "--k-bits", "--v-bits", "--max-seq-len",
                 "--max-prefill", "--dtype", "--output-dir", "--dry-run", "--debug"):
        assert flag in out


# --------------------------------------------------------------------------------------------
# Bad input: exit 2, one line
# --------------------------------------------------------------------------------------------


# odd head_dim: test_input_error_after_staging_leaves_output_untouched (exit 2, one line, config.json).
@pytest.mark.parametrize("case", ["missing_dir", "corrupt_shard", "unsupported_model"])
def test_bad_checkpoint_exits_2_with_one_line(checkpoints, tmp_path, case):
    if case == "missing_dir":
        path, needle = tmp_path / "nope", tmp_path / "nope"
    elif case == "corrupt_shard":
        path = checkpoints["corrupt"]
        needle = path / "model.safetensors"
    else:
        path = checkpoints["llama"]
        needle = path / "config.json"
    proc = run_cli("--checkpoint", path, "--turboquant", "--dry-run")
    assert_one_error_line(proc, 2, needle)


def test_output_dir_under_a_file_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("--tiny", "-o", blocker / "out")
    assert_one_error_line(proc, 2, "not writable", blocker)


def test_read_only_output_dir_exits_2(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: permission bits do not stop writes")
        proc = run_cli("--tiny", "-o", parent / "out")
        assert_one_error_line(proc, 2, "not writable", parent / "out")
    finally:
        parent.chmod(0o755)


# Flag checks happen before anything heavy: run them in-process (same code as the console script).
@pytest.mark.parametrize("flags,needle", [
    (("--tiny", "--k-bits", "5", "--turboquant"), "--k-bits"),
    (("--tiny", "--k-bits", "3"), "--turboquant"),
    (("--tiny", "--max-seq-len", "0"), "--max-seq-len"),
    (("--tiny", "--max-seq-len", "64", "--max-prefill", "65"), "--max-prefill"),
    (("--tiny", "--checkpoint", "x"), "not allowed"),
    (("--tiny", "--dtype", "int8"), "--dtype"),
])
def test_bad_flags_exit_2_with_one_line(capsys, flags, needle):
    argv = ["--model", "qwen3.5-moe", *flags, "--dry-run"]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (code, err)


def test_unknown_model_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--model", "llama", "--tiny"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'llama'" in err[0]


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("--checkpoint", tmp_path / "nope", "--dry-run", "--debug")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: checkpoint directory not found")


# --------------------------------------------------------------------------------------------
# No GPU, and the output directory after a failure
# --------------------------------------------------------------------------------------------


def test_no_cuda_exits_3_and_leaves_output_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    proc = run_cli("--tiny", "--turboquant", "-o", out, hide_gpu=True)
    assert_one_error_line(proc, 3, "NVIDIA GPU")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory left behind


def test_input_error_after_staging_leaves_output_untouched(checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pte").write_bytes(b"previous export")
    before = snapshot(tmp_path)
    proc = run_cli("--checkpoint", checkpoints["odd_head_dim"], "--turboquant", "-o", out)
    assert_one_error_line(proc, 2, "head_dim=65 is odd", checkpoints["odd_head_dim"] / "config.json")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------------------------------
# The success path on a CPU: lowering replaced by a stand-in (the real one needs a GPU)
# --------------------------------------------------------------------------------------------


class FakeProgram:
    def write_to_file(self, f):
        f.write(b"new program")

    def write_tensor_data_to_file(self, outdir):
        (Path(outdir) / "aoti_cuda_blob.ptd").write_bytes(b"weights")


@pytest.fixture
def restore_logging():
    import logging

    names = (*cli.NOISY_LOGGERS, "tq_export")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def test_success_path_publishes_artifacts_and_report(checkpoints, tmp_path, monkeypatch, capsys, restore_logging):
    from tq_export import export as ex

    calls = {}

    def fake_lower(programs, constants, gemm_configs=None, borrowed=None):
        calls.update(programs=programs, constants=constants, gemm_configs=gemm_configs, borrowed=borrowed)
        return FakeProgram()

    monkeypatch.setattr(ex, "require_cuda", lambda: None)
    monkeypatch.setattr(ex, "cuda_backend", lambda: None)
    monkeypatch.setattr(ex, "can_lower_in_parallel", lambda: False)
    monkeypatch.setattr(ex, "ops_without_gpu_kernel", lambda programs: [])
    monkeypatch.setattr(ex, "lower", fake_lower)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "model.pte").write_bytes(b"old program")
    code = cli.main(["--model", "qwen3.5-moe", "--checkpoint", str(checkpoints["good"]), "--turboquant",
                     "--max-seq-len", "64", "--max-prefill", "8", "-o", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # staging directory renamed away
    assert sorted(p.name for p in out.iterdir()) == ["aoti_cuda_blob.ptd", "export_report.json", "keep.txt",
                                                     "model.pte", "tokenizer.json", "tokenizer_config.json"]
    assert (out / "model.pte").read_bytes() == b"new program" and (out / "keep.txt").read_text() == "mine"
    assert set(calls["programs"]) == {"prefill", "decode"}
    assert calls["gemm_configs"] == ex.DEFAULT_GEMM_CONFIGS  # a checkpoint; --tiny defaults to 1
    assert calls["constants"]["get_eos_ids"] == [258] and calls["constants"]["get_max_prefill"] == 8
    report = json.loads((out / "export_report.json").read_text())
    assert report["constant_methods"] == calls["constants"]
    assert set(report["stages_s"]) == {"load", "rewrite", "export", "lower", "serialize"}
    assert report["files"]["aoti_cuda_blob.ptd"] == len(b"weights")
    assert report["kv_cache"]["bytes_per_token"] == {"bf16": 1024, "turboquant": 260}
    assert report["rewritten_layers"] == 1 and report["k_bits"] == 4 and report["turboquant"] is True
    for needle in ("Lowering + AOTInductor compile", "Serializing", "aoti_cuda_blob.ptd", "wrote"):
        assert needle in stdout
    assert calls["borrowed"] is None  # this executorch (or no backend): one process
    assert report["decode_lowered_by_worker"] is False


@pytest.mark.parametrize("serial", [False, True])
def test_decode_is_lowered_by_a_worker_from_the_same_checkpoint(checkpoints, tmp_path, monkeypatch, capsys,
                                                                 restore_logging, serial):
    """With a backend that compiles methods independently, a second tq-export process gets the
    same model flags plus the worker ones, and lower() borrows `decode` from it."""
    import subprocess

    from tq_export import export as ex

    calls, started = {}, []

    class Proc:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def poll(self):
            return 0

    def fake_lower(programs, constants, gemm_configs=None, borrowed=None):
        calls["borrowed"] = borrowed
        return FakeProgram()

    monkeypatch.setattr(ex, "require_cuda", lambda: None)
    monkeypatch.setattr(ex, "cuda_backend", lambda: None)
    monkeypatch.setattr(ex, "ops_without_gpu_kernel", lambda programs: [])
    monkeypatch.setattr(ex, "can_lower_in_parallel", lambda: True)
    monkeypatch.setattr(ex, "lower", fake_lower)
    monkeypatch.setattr(subprocess, "Popen", Proc)
    args = ["--model", "qwen3.5-moe", "--checkpoint", str(checkpoints["good"]), "--turboquant", "--k-bits", "3",
            "--max-seq-len", "64", "--max-prefill", "8", "-o", str(tmp_path / "out")]
    assert cli.main(args + (["--serial-lowering"] if serial else [])) == 0, capsys.readouterr()
    if serial:
        assert started == [] and calls["borrowed"] is None
        return
    (cmd,) = started
    assert cmd[1:3] == ["-m", "tq_export"]
    worker = cli.build_parser().parse_args(cmd[3:])  # the worker's own command line parses
    assert worker.checkpoint == checkpoints["good"] and worker.worker_method == "decode"
    assert worker.turboquant and worker.k_bits == 3 and worker.v_bits == 4
    assert (worker.max_seq_len, worker.max_prefill, worker.gemm_configs) == (64, 8, 6)
    assert list(calls["borrowed"]) == ["decode"]
    assert not worker.worker_result.parent.exists()  # the worker's directory is cleaned up


def make_worker(tmp_path, exit_code: int, pairs=None):
    import pickle
    import subprocess

    w = object.__new__(cli.LoweringWorker)
    w.method, w.dir, w.printed, w.used = "decode", tmp_path, [], False
    w.console = type("C", (), {"print": lambda self, text="": w.printed.append(text)})()
    w.result, w.log = tmp_path / "decode.pkl", tmp_path / "decode.log"
    w.log.write_text("compiling\nRuntimeError: out of memory\n")
    if pairs is not None:
        w.result.write_bytes(pickle.dumps(pairs))
    w.proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({exit_code})"])
    return w


def test_worker_result_is_used_only_when_it_compiled_the_same_program(tmp_path):
    w = make_worker(tmp_path, 0, [("abc", "result-0"), ("def", "result-1")])
    assert w.collect(["abc", "def"]) == ["result-0", "result-1"] and w.printed == [] and w.used
    w = make_worker(tmp_path, 0, [("abc", "result-0")])
    assert w.collect(["xyz"]) is None
    assert w.printed == ["  note: the decode worker compiled a different program; compiling decode here"]
    (tmp_path / "decode.pkl").unlink()
    w = make_worker(tmp_path, 1)
    assert w.collect(["abc"]) is None
    assert "exited with 1: RuntimeError: out of memory" in w.printed[0]

"""Packs runner/tests/synthetic_model.cpp's .so into a CudaBackend program, like tq-export's output.

The program has `prefill` and `decode` lowered to "CudaBackend" with the synthetic .so as their model
and a weights blob in aoti_cuda_blob.ptd, plus tq-export's metadata constant methods. `prefill` uses the
executorch 1.2/1.3 key layout (<method>_so_blob, empty processed bytes) and `decode` the 1.4+ layout
(content-hash keys listed in the processed bytes), so one program exercises both.

On a GPU, tq-runner must then generate exactly the ids `expected_ids()` computes, which it can only do
if decode reads the cache prefill wrote; its load report must show decode loaded no weights of its own.

  python synthetic_program.py --so libsynthetic_model.so --out DIR       # writes model.pte, .ptd, ...
  python synthetic_program.py --expect 1,2,3 --max-new-tokens 8           # prints the expected ids

Exit 77 (ctest SKIP) when torch/executorch are not importable.
"""
import argparse
import hashlib
import os
import struct
import sys

CACHE_LEN = 64
VOCAB = 1000
WEIGHT0 = 7.0
MAX_SEQ_LEN = CACHE_LEN
MAX_PREFILL = 16


def expected_ids(prompt, max_new_tokens, seed=0):
    """The synthetic model's output: see synthetic_model.cpp. The runner passes seed + the start
    position of each call (prefill in chunks of MAX_PREFILL) as the 4th input."""
    cache = [0] * CACHE_LEN
    for i, t in enumerate(prompt):
        cache[i] = t
    pos = len(prompt)
    last_chunk_start = (pos - 1) // MAX_PREFILL * MAX_PREFILL
    nxt = (sum(cache[:pos]) + int(WEIGHT0) + seed + last_chunk_start) % VOCAB
    out = []
    while len(out) < max_new_tokens:
        out.append(nxt)
        if len(out) >= max_new_tokens or pos >= MAX_SEQ_LEN:
            break
        cache[pos] = nxt
        nxt = (sum(cache[: pos + 1]) + int(WEIGHT0) + seed + pos) % VOCAB
        pos += 1
    return out


def build(so_path: str, out_dir: str) -> None:
    try:
        import torch
        from executorch.exir import to_edge_transform_and_lower
        from executorch.exir._serialize._named_data_store import NamedDataStore
        from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult
        from executorch.exir.backend.compile_spec_schema import CompileSpec
        from executorch.exir.backend.partitioner import DelegationSpec, Partitioner, PartitionResult
    except Exception as e:  # noqa: BLE001
        print(f"SKIP: torch/executorch not importable: {e}")
        sys.exit(77)

    with open(so_path, "rb") as f:
        so_data = f.read()
    # weights blob: weight float32[4] then cache int64[CACHE_LEN], back to back as AOTI stores them
    blob = struct.pack("<4f", WEIGHT0, 0.0, 0.0, 0.0) + bytes(8 * CACHE_LEN)

    class CudaBackend(BackendDetails):  # the name is the delegate id the runtime looks up
        @staticmethod
        def preprocess(edge_program, compile_specs):
            method = next(s.value.decode() for s in compile_specs if s.key == "method_name")
            store = NamedDataStore()
            if method == "prefill":  # executorch 1.2/1.3 layout
                so_key, w_key, processed = f"{method}_so_blob", f"{method}_weights_blob", b""
            else:  # executorch 1.4+ layout
                so_key = hashlib.sha256(so_data).hexdigest() + "_so_blob"
                w_key = hashlib.sha256(blob + method.encode()).hexdigest() + "_weights_blob"
                processed = f"{so_key}\n{w_key}".encode()
            store.add_named_data(so_key, so_data, 1, None)
            store.add_named_data(w_key, blob, 1, "aoti_cuda_blob")
            return PreprocessResult(processed_bytes=processed, debug_handle_map={},
                                    data_store_output=store.get_named_data_store_output())

    class WholeGraph(Partitioner):
        def __init__(self, method):
            super().__init__()
            self.delegation_spec = DelegationSpec("CudaBackend", [CompileSpec("method_name", method.encode())])

        def partition(self, ep):
            for node in ep.graph_module.graph.nodes:
                if node.op == "call_function":
                    node.meta["delegation_tag"] = "tag0"
            return PartitionResult(tagged_exported_program=ep, partition_tags={"tag0": self.delegation_spec})

    class Step(torch.nn.Module):  # the graph only fixes the I/O signature; the .so does the work
        def forward(self, tokens, input_pos, temperature, seed):
            return (tokens.sum(dim=1) + input_pos[-1:] + temperature.to(torch.int64) + seed) % VOCAB

    t = torch.export.Dim("t", min=1, max=MAX_PREFILL)
    def one():  # distinct tensors: export would merge an input passed twice
        return torch.zeros(1, dtype=torch.long)

    prefill = torch.export.export(Step(), (torch.zeros(1, 4, dtype=torch.long), torch.arange(4), torch.ones(1), one()),
                                  dynamic_shapes=({1: t}, {0: t}, None, None))
    decode = torch.export.export(Step(), (torch.zeros(1, 1, dtype=torch.long), one(), torch.ones(1), one()))
    constants = {
        "get_tq_export_version": "synthetic",
        "get_max_seq_len": MAX_SEQ_LEN,
        "get_max_prefill": MAX_PREFILL,
        "get_dtype": "fp32",
        "get_method_signatures": "prefill(tokens, input_pos, temperature, seed)\ndecode(tokens, input_pos, temperature, seed)",
        "get_vocab_size": VOCAB,
        "get_bos_id": -1,
        "get_eos_ids": [VOCAB + 1],  # never produced: generation runs to --max-new-tokens
        "get_k_bits": 4,
        "get_v_bits": 4,
        "get_model_name": "synthetic",
        "get_shared_buffers": "cache",  # tq-export joins FQNs with newlines
    }
    edge = to_edge_transform_and_lower({"prefill": prefill, "decode": decode},
                                       partitioner={"prefill": [WholeGraph("prefill")],
                                                    "decode": [WholeGraph("decode")]},
                                       constant_methods=constants)
    prog = edge.to_executorch()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "model.pte"), "wb") as f:
        f.write(prog.buffer)
    prog.write_tensor_data_to_file(out_dir)
    print(f"synthetic CudaBackend program written to {out_dir}: {sorted(os.listdir(out_dir))}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--so")
    ap.add_argument("--out")
    ap.add_argument("--expect", help="prompt token ids, e.g. 1,2,3: print the expected generated ids")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.expect is not None:
        print(" ".join(str(x) for x in expected_ids([int(x) for x in a.expect.split(",")], a.max_new_tokens, a.seed)))
        return 0
    if not a.so or not a.out:
        ap.error("--so and --out are required to build")
    build(a.so, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

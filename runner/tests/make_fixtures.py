"""Writes small CPU-only programs that look like tq-export's output, for the runner's file-handling tests.

No GPU and no CudaBackend are involved: `prefill`/`decode` are plain CPU methods, and the .ptd holds
named blobs with the keys the CUDA backend would use. That is enough to exercise everything tq-runner
checks before it touches the GPU: program and weights file validation, the tq-export marker, metadata
constant methods, prompt length and token id range.

Writes into OUT_DIR:
  model.pte, aoti_cuda_blob.ptd   a "tq-export" program (marker + metadata) and its weights file
  foreign.pte                      same methods, no tq-export marker
  truncated.pte                    model.pte cut in half
  tokenizer.json                   a tiny byte-level BPE (only if `tokenizers` is installed)

Exit 77 (ctest SKIP) when torch/executorch are not importable.
"""
import os
import sys

try:
    import torch
    from executorch.exir import to_edge
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer
except Exception as e:  # noqa: BLE001 - any import problem means: cannot make fixtures here
    print(f"SKIP: torch/executorch not importable: {e}")
    sys.exit(77)

MAX_SEQ_LEN = 64
VOCAB = 300


class Prefill(torch.nn.Module):
    def forward(self, tokens, input_pos, temperature):
        return (tokens[:, -1:] + input_pos[-1:] + temperature.to(torch.int64)).reshape(1) % VOCAB


class Decode(torch.nn.Module):
    def forward(self, tokens, input_pos, temperature):
        return (tokens.reshape(1) + input_pos + temperature.to(torch.int64)) % VOCAB


def export_program(path: str, with_marker: bool) -> None:
    t = torch.export.Dim("t", min=1, max=16)
    prefill = torch.export.export(
        Prefill(),
        (torch.zeros(1, 4, dtype=torch.long), torch.arange(4), torch.ones(1)),
        dynamic_shapes=({1: t}, {0: t}, None),
    )
    decode = torch.export.export(
        Decode(), (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.ones(1))
    )
    constants = {
        "get_max_seq_len": MAX_SEQ_LEN,
        "get_vocab_size": VOCAB,
        "get_bos_id": -1,
        "get_eos_ids": [2, 3],
        "get_k_bits": 4,
        "get_v_bits": 4,
        "get_model_name": "fixture",
        "get_shared_buffers": "layers.0.attn.cache.k\nlayers.0.attn.cache.v",  # tq-export's form
    }
    if with_marker:
        constants["get_tq_export_version"] = "0.1.0"
    prog = to_edge({"prefill": prefill, "decode": decode}, constant_methods=constants).to_executorch()
    with open(path, "wb") as f:
        f.write(prog.buffer)


def write_ptd(path: str) -> None:
    payload = DataPayload(
        buffers=[b"\x00" * 64, b"\x01" * 64],
        named_data={
            "prefill_weights_blob": DataEntry(buffer_index=0, alignment=16, tensor_layout=None),
            "decode_weights_blob": DataEntry(buffer_index=1, alignment=16, tensor_layout=None),
        },
    )
    with open(path, "wb") as f:
        f.write(bytes(FlatTensorSerializer().serialize(payload)))


def write_tokenizer(path: str) -> None:
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        return
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 10, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, this is a tiny corpus for a tiny tokenizer"] * 10, trainer=trainer)
    tok.save(path)


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    os.makedirs(out, exist_ok=True)
    export_program(os.path.join(out, "model.pte"), with_marker=True)
    export_program(os.path.join(out, "foreign.pte"), with_marker=False)
    write_ptd(os.path.join(out, "aoti_cuda_blob.ptd"))
    with open(os.path.join(out, "model.pte"), "rb") as f:
        data = f.read()
    with open(os.path.join(out, "truncated.pte"), "wb") as f:
        f.write(data[: len(data) // 2])
    write_tokenizer(os.path.join(out, "tokenizer.json"))
    print(f"fixtures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

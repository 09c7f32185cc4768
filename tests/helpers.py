"""Plain helpers shared by several test files (imported as `helpers`: pytest puts tests/ on sys.path)."""

import os

import pytest
import torch

# Tests that launch Triton on CPU tensors: only the interpreter runs them (tests/conftest.py sets it
# without a GPU); on a GPU host the gpu-marked tests run the same cases compiled.
interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="CPU tensors need TRITON_INTERPRET=1 (the gpu-marked tests cover CUDA)")


@torch.no_grad()
def greedy(model, ids, steps):
    """Reset the model, prefill `ids` [1, n], then decode `steps` argmax tokens one at a time."""
    model.reset()
    n = ids.shape[1]
    logits = model(ids, torch.arange(n))[:, -1]
    out = []
    for i in range(steps):
        nxt = logits.argmax(-1)
        out.append(int(nxt))
        logits = model(nxt[:, None], torch.tensor([n + i]))[:, -1]
    return out

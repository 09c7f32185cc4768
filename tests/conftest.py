"""Test setup shared by every test file.

Without a GPU, Triton kernels run under the interpreter. TRITON_INTERPRET is read when a kernel is
decorated, so it must be set before any kernel module is imported: this file is imported first.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """make(**overrides) -> a tiny checkpoint dir written by transformers, built once per module and config."""
    from tq_export.tiny import make_tiny_checkpoint

    made = {}

    def make(**kw):
        key = repr(sorted(kw.items()))
        if key not in made:
            made[key] = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), **kw)
        return made[key]

    return make


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)

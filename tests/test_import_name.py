"""The kernels/ folder must not register ops when imported under the name `kernels`.

From the repository root, `kernels` is importable by its folder name and transformers imports a
package of that name while probing for Hugging Face's `kernels`; registering the ops twice left
dangling operator handles that crashed later op calls at random.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_folder_as_kernels_registers_nothing():
    code = (
        "import importlib, torch, tq_kernels\n"
        "before = torch.ops.tq.tq4_sdpa.default._schema\n"
        "importlib.import_module('kernels')\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "assert not is_kernels_available()\n"
        "print(torch.ops.tq.tq4_sdpa.default._schema == before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("True")

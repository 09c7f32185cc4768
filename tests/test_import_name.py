"""The name `kernels` stays Hugging Face's, even from the repository root.

transformers (5.25 on) requires Hugging Face's `kernels` package and imports it with its activations.
A folder named `kernels` at the repository root (where `python -m` puts the working directory on
sys.path, ahead of site-packages) would shadow it, and `import transformers.activations` would
fail there; the kernels' folder is named `tq_kernels`, its import name.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_transformers_imports_its_kernels_package_from_the_repository_root():
    code = (
        "import importlib.util\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(spec.origin if spec else None)\n"
        "import transformers.activations, tq_kernels, torch\n"
        "print(hasattr(torch.ops.tq, 'tq4_sdpa'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    origin, registered = out.stdout.strip().splitlines()[-2:]
    assert origin == "None" or ROOT not in Path(origin).resolve().parents, origin
    assert registered == "True"

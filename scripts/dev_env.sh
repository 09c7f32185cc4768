# Source to use the work tree without installing it (e.g. on a GPU host with no registry):
#     source scripts/dev_env.sh
# Puts the repository root (tq_export, tq_kernels) on PYTHONPATH.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
unset _root

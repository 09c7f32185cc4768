# Source to use the work tree without installing it (e.g. on a GPU host with no registry):
#     source scripts/dev_env.sh
# Puts tq_export on PYTHONPATH and exposes kernels/ under its import name, tq_kernels.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_alias=$(mktemp -d /tmp/tq-path.XXXXXX)
ln -s "$_root/kernels" "$_alias/tq_kernels"
export PYTHONPATH="$_root:$_alias${PYTHONPATH:+:$PYTHONPATH}"
unset _root _alias

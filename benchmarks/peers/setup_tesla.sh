#!/usr/bin/env bash
# TESLA 1.2.2 (pip 'teslaforst') in its own virtual environment: benchmarks/peers/.envs/tesla.
# Its metadata names the dead 'sklearn' package, so it goes in with --no-deps and its real
# dependencies are listed here; anndata 0.12 breaks its superpixel index (anndata==0.11.4, zarr<3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dir="$here/.envs/tesla"
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install -q --no-deps teslaforst==1.2.2
"$env_dir/bin/pip" install -q torch pandas numpy scipy scanpy scikit-learn numba \
    opencv-python-headless "anndata==0.11.4" "zarr<3" psutil
"$env_dir/bin/python" -c "import TESLA, anndata; print('TESLA at', TESLA.__file__, 'anndata', anndata.__version__)"

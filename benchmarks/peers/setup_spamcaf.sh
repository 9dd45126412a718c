#!/usr/bin/env bash
# The TriHRGE reference code (github wenwenmin/SpaMCAF) in its own virtual environment:
# benchmarks/peers/.envs/spamcaf. The code itself is NOT in this repository: pass the folder of a
# checkout (the one that holds SpaMCAF/train.py), e.g. one exported with
#   git --git-dir=<mirror>/repo archive HEAD SpaMCAF | tar -x -C benchmarks/peers/.envs/spamcaf-src
# Only what its training path imports is installed (no timm / UNI: its feature loading is swapped
# for ours by run_spamcaf.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dir="$here/.envs/spamcaf"
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install -q torch numpy pandas scipy scanpy scikit-learn scikit-image einops \
    matplotlib pillow tqdm opencv-python-headless psutil
"$env_dir/bin/python" -c "import torch, einops, scanpy; print('torch', torch.__version__)"

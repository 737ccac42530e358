#!/usr/bin/env bash
# The comparison of bench_vs_pytorch.sh on a CUDA GPU, for a machine with Python and PyTorch
# (CUDA build) but no Rust: our peer is built elsewhere with
#   cargo bench -p srum-world --bench peer --no-run --features cuda
# and its executable carried over.
#
#   scripts/gpu_check.sh PEER_EXE [MODEL_DIR]    (default crates/srum-world/assets/tiny-umm)
#   env: PYTHON (default python3), ITERS (default 5), OUT (where the JSONs go; default a temp dir),
#        TOLERANCE (equivalence bound, default 1e-4), PEER_ARGS (more peer.py flags, e.g. --tf32)
set -euo pipefail
cd "$(dirname "$0")/.."
exe=${1:?usage: scripts/gpu_check.sh PEER_EXE [MODEL_DIR]}
model=${2:-crates/srum-world/assets/tiny-umm}
py=${PYTHON:-python3}
iters=${ITERS:-5}
out=${OUT:-$(mktemp -d)}  # the device runner brings $OUT back

$py -c 'import numpy, torch; assert torch.cuda.is_available(), "PyTorch sees no CUDA GPU"'
"$exe" --device cuda --model "$model" --threads "$(nproc)" --iters "$iters" \
  --json "$out/ours.json" --dump "$out/dump.safetensors"
$py crates/srum-world/benches/reference/peer.py --device cuda --model "$model" --threads "$(nproc)" \
  --iters "$iters" --json "$out/pytorch.json" --dump "$out/dump.safetensors" \
  --tolerance "${TOLERANCE:-1e-4}" ${PEER_ARGS:-}
$py crates/srum-world/benches/reference/table.py "$out/ours.json" "$out/pytorch.json" \
  --machine "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n1)"

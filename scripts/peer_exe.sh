#!/usr/bin/env bash
# Builds the reference model's `peer` bench (with the model's flex kernels, as the `srum` binary has them) and
# prints the path of its executable. Used by scripts/bench_vs_pytorch.sh and scripts/bench_ref_rounds.sh.
#   scripts/peer_exe.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p srum-world --bench peer --features flex --no-run --message-format=json |
  "$1" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "peer" and m.get("executable"):
        print(m["executable"])'

#!/usr/bin/env bash
# BAGEL on a lent CUDA GPU, in one short run (about 5 minutes of device time):
#   1. the real-width MoT layer of the CPU benchmark (examples/layer_bench.rs) in bf16 and f32: forward, forward +
#      backward and a denoising step with text CFG; beside it the official PyTorch layer on the same GPU when
#      PY and BAGEL_SRC allow (below);
#   2. SRUM training steps through srum's Trainer on a BAGEL-7B-MoT-shaped model (real width and depth; random
#      weights, or the folder's when one is given) at 512 and 1024 pixels, bf16 with f32 masters and per-layer
#      checkpointing: the whole generation expert, and LoRA rank 16 (examples/train_step.rs), each with its
#      time per step, the GPU's peak memory and the memory model's prediction;
#   3. where a BAGEL-7B-MoT folder is given (official layout: llm_config.json, vit_config.json, config.json,
#      ema.safetensors, ae.safetensors, tokenizer.json), one rollout image, one judgement and one SRUM training
#      step (examples/bagel_step.rs) in bf16, with their times.
#   The GPU's peak memory is sampled with nvidia-smi every 100 ms.
#
#   scripts/gpu_bagel.sh [BAGEL_DIR]
#   env: LAYER_BENCH, BAGEL_STEP, TRAIN_STEP (prebuilt executables; default: build them here with --features cuda),
#        ITERS (layer runs, default 3), SIZE (default 512x512), STEPS (sampler steps, default 49),
#        OUT (where the JSON lines go; default a temp dir; the device runner brings $OUT back),
#        PY (a python with a CUDA torch, default python3), BAGEL_SRC (the official code, for the PyTorch side)
#
# Build elsewhere and carry the executables:
#   cargo build --release -p srum-bagel --features cuda --example layer_bench --example bagel_step --example train_step
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
iters=${ITERS:-3}
if [[ -z "${LAYER_BENCH:-}" || -z "${BAGEL_STEP:-}" || -z "${TRAIN_STEP:-}" ]]; then
  cargo build --release -p srum-bagel --features cuda --example layer_bench --example bagel_step \
    --example train_step
fi
layer=${LAYER_BENCH:-target/release/examples/layer_bench}
step=${BAGEL_STEP:-target/release/examples/bagel_step}
train=${TRAIN_STEP:-target/release/examples/train_step}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/machine.txt"

# Peak GPU memory of a command: nvidia-smi every 100 ms in the background.
peak() {
  local log="$out/mem-$1.csv"; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" &
  local mon=$!
  local rc=0
  "$@" || rc=$?
  kill "$mon" 2>/dev/null || true
  wait "$mon" 2>/dev/null || true
  echo "peak_gpu_mib $(sort -n "$log" | tail -n1)"
  return $rc
}

for dtype in bf16 f32; do
  peak "layer-$dtype" "$layer" --backend cuda --dtype "$dtype" --iters "$iters" --json "$out/layer-$dtype.json" \
    | tee "$out/layer-$dtype.txt"
done
# The official PyTorch layer on the same GPU and inputs' shapes (scripts/bench_bagel_layer.py --device cuda), when
# $PY has a CUDA torch, transformers 4.49 (e.g. on PYTHONPATH from `pip install --no-deps --target DIR
# transformers==4.49.0`) and BAGEL_SRC holds the official code (github ByteDance-Seed/Bagel 056b5fd). Its f32 products
# stay f32 (PyTorch's default); burn's are TF32 on tensor cores (docs/PERFORMANCE.md), so compare f32 with that in mind.
py=${PY:-python3}
if [[ -n "${BAGEL_SRC:-}" ]] && "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  for dtype in bf16 f32; do
    "$py" scripts/bench_bagel_layer.py --bagel-src "$BAGEL_SRC" --device cuda --dtype "$dtype" --iters "$iters" \
      --json "$out/pytorch-layer-$dtype.json" | tee "$out/pytorch-layer-$dtype.txt" || echo "pytorch layer $dtype failed"
  done
else
  echo "the official layer's side skipped: no CUDA PyTorch in $py or no BAGEL_SRC"
fi
# The recipe's trainable set (the generation expert) and LoRA, at both sizes. A run that does not fit
# fails with the allocation error and the next one goes on.
model=(--shape 7b)
[[ -n "${1:-}" ]] && model=(--checkpoint "$1")
for size in 512x512 1024x1024; do
  for set in "--generation-only" "--lora-rank 16"; do
    tag="train-${size}-${set// /}"
    # shellcheck disable=SC2086
    peak "$tag" "$train" --backend cuda "${model[@]}" --size "$size" --precision bf16 --checkpointing \
      $set --steps 3 | tee "$out/$tag.txt" || echo "$tag failed"
  done
done
if [[ -n "${1:-}" ]]; then
  peak step "$step" --checkpoint "$1" --backend cuda --dtype bf16 --size "${SIZE:-512x512}" \
    --steps "${STEPS:-49}" --generation-only | tee "$out/step.txt"
fi
echo "results in $out"

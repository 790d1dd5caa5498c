#!/usr/bin/env bash
# One lent GPU, one command: three frame-VAE candidates trained side by side from a carried frame pack
# (scripts/pack_vae_frames.py), each inside its time budget (run.max_seconds); all results in OUT/vaes.tgz.
#   bash scripts/gpu_vae.sh PACK OUT          # on the GPU machine (python3 with torch; wheels in .whl)
#   QUICK=1 bash scripts/gpu_vae.sh PACK OUT  # a few CPU steps of each, PyAV hidden as on the GPU image
# Candidates: "l4" fine-tunes the tiny v2 VAE (4 latent channels, drop-in); "l8" and "l16" train the same
# 16-channel network with 8 and 16 latent channels from scratch (these need a DiT of that width).
set -euo pipefail
cd "$(dirname "$0")/.."
PACK="${1:?usage: scripts/gpu_vae.sh PACK OUT}"
OUT="${2:?usage: scripts/gpu_vae.sh PACK OUT}"
PY="${PY:-python3}"
RUNS="$(mktemp -d)/runs"
if [ "${QUICK:-0}" = "1" ]; then
  extra=(--device cpu --block-pyav --set run.steps=130 --set run.batch_size=4 --set run.max_seconds=600 --set run.threads=1)
else
  extra=(--device cuda)
fi
common=(--config configs/train/vae-tiny-face-gpu.yaml --set "data.pack=$PACK")
"$PY" scripts/train_bare.py "${common[@]}" "${extra[@]}" --set "run.output_dir=$RUNS/l4" > "$RUNS.l4.log" 2>&1 & pids=($!)
"$PY" scripts/train_bare.py "${common[@]}" "${extra[@]}" --set "run.output_dir=$RUNS/l8" --set init_from=null \
  --set model=.gpu/tiny-l8.yaml --set optim.lr=1.0e-3 > "$RUNS.l8.log" 2>&1 & pids+=($!)
"$PY" scripts/train_bare.py "${common[@]}" "${extra[@]}" --set "run.output_dir=$RUNS/l16" --set init_from=null \
  --set model=.gpu/tiny-l16.yaml --set optim.lr=1.0e-3 > "$RUNS.l16.log" 2>&1 & pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
mkdir -p "$OUT"
tail -n 5 "$RUNS".*.log
for v in l4 l8 l16; do cp "$RUNS.$v.log" "$RUNS/$v/train.log" 2>/dev/null || true; done
tar czf "$OUT/vaes.tgz" -C "$RUNS" --exclude=checkpoints .
exit $status

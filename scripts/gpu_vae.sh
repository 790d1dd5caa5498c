#!/usr/bin/env bash
# One lent GPU, one command: the first phase of the tiny v3 VAE (configs/train/vae-tiny-face-gpu.yaml) from a
# carried frame pack, inside its time budget (run.max_seconds); the result in OUT/vae.tgz.
#   .venv/bin/python scripts/pack_vae_frames.py --config configs/train/vae-tiny-face-gpu.yaml --out .gpu/pack  # here
#   bash scripts/gpu_vae.sh .gpu/pack OUT        # there (python3 with torch; the model's wheels from .whl)
#   QUICK=1 bash scripts/gpu_vae.sh PACK OUT     # a few CPU steps, PyAV hidden as on the GPU image
# Extra arguments are passed on as --set overrides, e.g. model=PATH to try another latent width.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK="${1:?usage: scripts/gpu_vae.sh PACK OUT [KEY=VALUE ...]}"
OUT="${2:?usage: scripts/gpu_vae.sh PACK OUT [KEY=VALUE ...]}"
shift 2
PY="${PY:-python3}"
RUN="$(mktemp -d)/vae"
if [ "${QUICK:-0}" = "1" ]; then
  extra=(--device cpu --block-pyav --set run.steps=130 --set run.batch_size=4 --set run.threads=1)
else
  extra=(--device cuda)
fi
sets=()
for pair in "$@"; do sets+=(--set "$pair"); done
mkdir -p "$OUT"
"$PY" scripts/train_bare.py --config configs/train/vae-tiny-face-gpu.yaml --set "data.pack=$PACK" \
  --set "run.output_dir=$RUN" "${extra[@]}" "${sets[@]}" 2>&1 | tee "$OUT/train.log"
tar czf "$OUT/vae.tgz" -C "$RUN" --exclude=checkpoints .

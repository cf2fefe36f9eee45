#!/usr/bin/env bash
# Fine-tune the silo-tiny UNet on a GPU within a fixed time budget (a borrowed GPU gives minutes, a CPU
# hour gives ~3000 steps at batch 16): a 40-step probe measures seconds per step at this batch, the main
# run's cosine LR horizon is set to fit BUDGET_S, and --time-limit stops it there in any case.
#   DATA=/path/to/data scripts/finetune_unet_gpu.sh          # DATA: a folder written by `silo build-data`
# Environment: PRIOR (the shipped prior: weights to start from and the frozen VAE), RUN (runs/unet-gpu),
# EXPORT ($RUN/prior), BATCH (256), LR (3e-4), BUDGET_S (400: training seconds, without start-up and export), PYTHON (python3), SILO ($PYTHON -m silo).
# Mixed precision comes from accelerate (ACCELERATE_MIXED_PRECISION, default bf16 here).
set -euo pipefail
DATA=${DATA:?set DATA to a folder written by silo build-data}
PRIOR=${PRIOR:-src/silo/weights/silo-tiny/prior}
RUN=${RUN:-runs/unet-gpu}
EXPORT=${EXPORT:-$RUN/prior}
BATCH=${BATCH:-256}
LR=${LR:-3e-4}
BUDGET_S=${BUDGET_S:-400}
PY=${PYTHON:-python3}
SILO=${SILO:-$PY -m silo}
export ACCELERATE_MIXED_PRECISION=${ACCELERATE_MIXED_PRECISION:-bf16} HF_HUB_OFFLINE=1
THREADS=$(nproc)
common=(--stage unet --data "$DATA" --vae "$PRIOR/vae" --init-from "$PRIOR" --batch-size "$BATCH" --lr "$LR"
        --threads "$THREADS" --no-progress)

if [ -f "$RUN/main/config.json" ]; then  # a rerun resumes with the horizon it was started with
  steps=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['max_steps'])" "$RUN/main/config.json")
  echo "resuming $RUN/main towards step $steps"
else
  $SILO train-prior "${common[@]}" --output "$RUN/probe" --max-steps 40 --eval-every 40 --checkpoint-every 40
  per_step=$("$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['s_per_step'])" "$RUN/probe/log.jsonl")
  # at least 300 steps: the warm-up is 100
  steps=$("$PY" -c "import sys; print(max(300, int(float(sys.argv[1]) / float(sys.argv[2]))))" "$BUDGET_S" "$per_step")
  echo "probe: $per_step s/step at batch $BATCH -> $steps steps in $BUDGET_S s (training time only)"
  mkdir -p "$RUN/main"
  for f in "$RUN"/probe/latents-*.pt; do  # the encoded training latents (keyed by the VAE's checksum)
    [ -e "$RUN/main/$(basename "$f")" ] || cp "$f" "$RUN/main/"
  done
fi
$SILO train-prior "${common[@]}" --output "$RUN/main" --resume-from-checkpoint latest --max-steps "$steps" \
  --time-limit "$BUDGET_S" --eval-every 500 --checkpoint-every 1000 --export "$EXPORT"

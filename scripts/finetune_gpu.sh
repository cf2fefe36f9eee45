#!/usr/bin/env bash
# Fine-tune the shipped silo-tiny UNet or VAE decoder on a GPU within a fixed time budget (a time-limited GPU
# job may last minutes): a 40-step probe measures seconds per step at this batch, the main run's cosine LR horizon
# is set to fit BUDGET_S, and --time-limit stops it there in any case.
#   DATA=/path/to/data scripts/finetune_gpu.sh                 # DATA: a folder written by `silo build-data`
#   STAGE=decoder DATA=/path/to/data scripts/finetune_gpu.sh   # the decoder alone (the latent space stays)
# Environment: STAGE (unet | decoder), PRIOR (the shipped prior: weights to start from, and the frozen VAE
# for the UNet), RUN (runs/STAGE-gpu), EXPORT ($RUN/prior), BATCH (256), LR (3e-4), LOSS (decoder: mse),
# BUDGET_S (400: training seconds, without start-up and export), PYTHON (python3), SILO ($PYTHON -m silo).
# Mixed precision comes from accelerate (ACCELERATE_MIXED_PRECISION: bf16 for the UNet, no for the decoder,
# whose fine-tune works at 30+ dB where bf16's 8-bit mantissa is coarse).
set -euo pipefail
DATA=${DATA:?set DATA to a folder written by silo build-data}
STAGE=${STAGE:-unet}
PRIOR=${PRIOR:-src/silo/weights/silo-tiny/prior}
RUN=${RUN:-runs/$STAGE-gpu}
EXPORT=${EXPORT:-$RUN/prior}
BATCH=${BATCH:-256}
LR=${LR:-3e-4}
BUDGET_S=${BUDGET_S:-400}
PY=${PYTHON:-python3}
SILO=${SILO:-$PY -m silo}
THREADS=$(nproc)
case "$STAGE" in
  unet) stage_args=(--stage unet --vae "$PRIOR/vae"); precision=bf16 ;;
  decoder) stage_args=(--stage vae --freeze-encoder --loss "${LOSS:-mse}" --crop-size 64); precision=no ;;
  *) echo "STAGE must be unet or decoder, not '$STAGE'" >&2; exit 2 ;;
esac
export ACCELERATE_MIXED_PRECISION=${ACCELERATE_MIXED_PRECISION:-$precision} HF_HUB_OFFLINE=1
common=("${stage_args[@]}" --data "$DATA" --init-from "$PRIOR" --batch-size "$BATCH" --lr "$LR"
        --threads "$THREADS" --no-progress)

if [ -f "$RUN/main/config.json" ]; then  # a rerun resumes with the horizon it was started with
  steps=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['max_steps'])" "$RUN/main/config.json")
  echo "resuming $RUN/main towards step $steps"
else
  $SILO train-prior "${common[@]}" --output-dir "$RUN/probe" --max-steps 40 --validation-every 40 --checkpoint-every 40
  per_step=$("$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['s_per_step'])" "$RUN/probe/log.jsonl")
  # at least 300 steps: the warm-up is 100
  steps=$("$PY" -c "import sys; print(max(300, int(float(sys.argv[1]) / float(sys.argv[2]))))" "$BUDGET_S" "$per_step")
  echo "probe: $per_step s/step at batch $BATCH -> $steps steps in $BUDGET_S s (training time only)"
  mkdir -p "$RUN/main"
  for f in "$RUN"/probe/latents-*.pt; do  # the encoded training latents (keyed by the VAE's checksum)
    [ -e "$f" ] && [ ! -e "$RUN/main/$(basename "$f")" ] && cp "$f" "$RUN/main/"
  done
fi
validation_every=$(( steps / 8 > 250 ? steps / 8 : 250 ))
$SILO train-prior "${common[@]}" --output-dir "$RUN/main" --resume-from-checkpoint latest --max-steps "$steps" \
  --time-limit "$BUDGET_S" --validation-every "$validation_every" --checkpoint-every 1000 --export "$EXPORT"

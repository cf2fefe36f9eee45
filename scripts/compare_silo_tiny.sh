#!/usr/bin/env bash
# Compare every method on the shipped silo-tiny: first tune each baseline's step size on
# silo-tiny's TRAINING crops (never the held-out ones), then, with the tuned defaults set in
# silo/samplers/{latent_dps,psld,silo_x0}.py, compare all methods on held-out crops at the same steps.
#   scripts/compare_silo_tiny.sh tune      # -> $OUT/tuning/aggregate.md: pick the best value per method
#   scripts/compare_silo_tiny.sh compare   # -> $OUT/heldout/aggregate.{md,csv,json} and plots/
# Resumable (silo evaluate skips finished results). Environment: RUNS (runs), OUT ($RUNS/compare),
# STEPS (50: silo-tiny's default), PRIOR and OPERATOR (--prior, and --operator as a '{task}' template such as
# 'DIR/{task}-cnn'; default: the shipped ones), TUNE_TASKS, EVAL_TASKS (comma-separated),
# CROPS (32 held-out crops). Every method of a task starts alike: the SILO operator card's start strength.
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=${OUT:-$RUNS/compare}
STEPS=${STEPS:-50}
PRIOR_ARGS=(${PRIOR:+--prior "$PRIOR"} ${OPERATOR:+--operator "$OPERATOR"})
CROPS=${CROPS:-32}
TUNE_TASKS=${TUNE_TASKS:-sr4,gaussian_blur,inpaint_center,jpeg}
EVAL_TASKS=${EVAL_TASKS:-sr4,sr8,gaussian_blur,motion_blur,inpaint_center,inpaint_random,jpeg}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE

case "${1:-}" in
  tune)
    silo evaluate ${PRIOR_ARGS[@]+"${PRIOR_ARGS[@]}"} --photos train --photo-count 16 --photo-size 64 --batch-size 16 --tasks "$TUNE_TASKS" \
      --methods silo_x0,ldps,psld --operator-kind cnn --steps "$STEPS" --no-progress --save none \
      --method-option silo_x0.step=0.25,0.5,1,2 --method-option ldps.zeta=0.25,0.5,1,2,4,8,16 \
      --method-option psld.gamma=0.001,0.01,0.1,1 --output-dir "$OUT/tuning"
    ;;
  compare)
    # SILO with each task's shipped default operator, the baselines (no operator) and the naive estimate;
    # then both SILO variants with the CNN operator (x0-space SILO needs an operator on z0), into the same
    # folder: the table aggregates every log there
    common=(${PRIOR_ARGS[@]+"${PRIOR_ARGS[@]}"} --photos heldout --photo-count "$CROPS" --photo-size 64 --batch-size "$CROPS" --tasks "$EVAL_TASKS"
            --steps "$STEPS" --no-progress --save image --output-dir "$OUT/heldout")
    silo evaluate "${common[@]}" --methods naive,silo,ldps,psld
    silo evaluate "${common[@]}" --methods silo,silo_x0 --operator-kind cnn
    ;;
  *)
    echo "usage: $0 tune|compare" >&2
    exit 2
    ;;
esac

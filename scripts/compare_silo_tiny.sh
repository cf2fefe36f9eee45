#!/usr/bin/env bash
# Compare every method on the shipped silo-tiny: first tune each baseline's step size per task on
# silo-tiny's TRAINING crops (never the held-out ones), then, with the tuned values recorded in the prior
# card (src/silo/weights/silo-tiny/prior/silo_prior.json, "method_options"), compare all methods on
# held-out crops, at their defaults and from noise over a range of steps (a quality-against-time frontier).
#   scripts/compare_silo_tiny.sh tune      # -> $OUT/tuning/aggregate.md: pick the best value per method and task
#   scripts/compare_silo_tiny.sh compare   # -> $OUT/heldout/aggregate.{md,csv,json} and plots/
#   scripts/compare_silo_tiny.sh frontier  # -> $OUT/frontier/frontier.{md,json} and plots/frontier_TASK.png
# Resumable (silo evaluate skips finished results). Environment: RUNS (runs), OUT ($RUNS/compare),
# STEPS (50: silo-tiny's default), PRIOR and OPERATOR (--prior, and --operator as a '{task}' template such as
# 'DIR/{task}-cnn'; default: the shipped ones), TUNE_TASKS, EVAL_TASKS, FRONTIER_TASKS (comma-separated),
# CROPS (32 held-out crops), SWEEP (10,25,50: the frontier's step counts). At the defaults every method of a
# task starts alike: the SILO operator card's start strength. Outputs are the methods' own (--no-keep-known),
# so the consistency PSNR of inpainting measures the method, not the pasted known pixels.
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=${OUT:-$RUNS/compare}
STEPS=${STEPS:-50}
PRIOR_ARGS=(${PRIOR:+--prior "$PRIOR"} ${OPERATOR:+--operator "$OPERATOR"})
CROPS=${CROPS:-32}
SWEEP=${SWEEP:-10,25,50}
TUNE_TASKS=${TUNE_TASKS:-inpaint_center,sr4,gaussian_blur,jpeg}
EVAL_TASKS=${EVAL_TASKS:-sr4,sr8,gaussian_blur,motion_blur,inpaint_center,inpaint_random,jpeg}
FRONTIER_TASKS=${FRONTIER_TASKS:-sr4,gaussian_blur,inpaint_center,jpeg}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE

case "${1:-}" in
  tune)
    # from noise at 25 steps, where the step size decides; sr8, motion_blur and inpaint_random take the values
    # of sr4, gaussian_blur and inpaint_center
    silo evaluate ${PRIOR_ARGS[@]+"${PRIOR_ARGS[@]}"} --photos train --photo-count 4 --photo-size 64 --batch-size 4 \
      --tasks "$TUNE_TASKS" --start-strength 1 --steps 25 --no-keep-known --operator-kind cnn --save none \
      --no-progress --no-plots --methods ldps,silo_daps,daps,psld --method-option ldps.zeta=0.25,0.5,1 \
      --method-option psld.zeta=0.25,0.5,1 --method-option daps.lr=0.1,0.5,1 --method-option silo_daps.lr=0.25,0.5,1 \
      --output-dir "$OUT/tuning"
    silo evaluate ${PRIOR_ARGS[@]+"${PRIOR_ARGS[@]}"} --photos train --photo-count 4 --photo-size 64 --batch-size 4 \
      --tasks inpaint_center,sr4,gaussian_blur --start-strength 1 --steps 25 --no-keep-known --operator-kind cnn \
      --save none --no-progress --no-plots --methods silo_daps --method-option silo_daps.langevin_steps=2,5 \
      --method-option silo_daps.lr=0.25,0.5,1 --output-dir "$OUT/tuning-silo-daps"
    ;;
  compare)
    # SILO with each task's shipped default operator, the baselines (no operator) and the naive estimate;
    # then the SILO variants with the CNN operator (x0-space and annealed SILO need an operator on z0), into
    # the same folder: the table aggregates every log there
    common=(${PRIOR_ARGS[@]+"${PRIOR_ARGS[@]}"} --photos heldout --photo-count "$CROPS" --photo-size 64 --batch-size "$CROPS" --tasks "$EVAL_TASKS"
            --steps "$STEPS" --no-keep-known --no-progress --save image --output-dir "$OUT/heldout")
    silo evaluate "${common[@]}" --methods naive,silo,ldps,psld,resample,daps
    silo evaluate "${common[@]}" --methods silo,silo_x0,silo_daps --operator-kind cnn
    ;;
  frontier)
    # every method from noise (start strength 1) at each step count of $SWEEP; SILO variants with the CNN operator
    silo evaluate ${PRIOR_ARGS[@]+"${PRIOR_ARGS[@]}"} --photos heldout --photo-count "$CROPS" --photo-size 64 --batch-size "$CROPS" \
      --tasks "$FRONTIER_TASKS" --start-strength 1 --sweep-steps "$SWEEP" --no-keep-known --operator-kind cnn \
      --methods silo,silo_x0,silo_daps,ldps,psld,resample,daps --no-progress --save none --output-dir "$OUT/frontier"
    ;;
  *)
    echo "usage: $0 tune|compare|frontier" >&2
    exit 2
    ;;
esac

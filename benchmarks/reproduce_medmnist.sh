#!/usr/bin/env bash
# Reproduce rows of MedMNIST v2's official benchmark with medal's CE student (no teacher needed).
#
#   bash benchmarks/reproduce_medmnist.sh DATASETS MODELS [SEEDS]
#   ROOT=~/.medmnist RUNS=runs/medmnist bash benchmarks/reproduce_medmnist.sh breastmnist resnet18_28 0,1,2
#   bash benchmarks/reproduce_medmnist.sh bloodmnist,pneumoniamnist resnet18,resnet50 0,1,2    # (224): GPU
#
# The published recipe, as MedMNIST's maintainers describe the runs behind their numbers (MedMNIST/experiments
# issues #5, #7, #8, #12; MedMNIST/MedMNIST #60; the experiments README): Adam 1e-3, batch 128, 100 epochs,
# x0.1 at epochs 50 and 75, mean/std 0.5, no augmentation, grayscale converted to 3 channels (--as_rgb),
# the weights with the best validation AUC, and for "(224)" images upsampled by PIL's NEAREST
# (--interpolation nearest). medal's defaults already are 3 channels and the best val AUC. Models named
# *_28 train on the native 28 px images ("(28)" rows); any other model on images upsampled to 224 px
# ("(224)" rows). `medal report` then puts the official numbers beside ours (runs/.../report/medmnist.md).
# EPOCHS and MILESTONES override the recipe for a smoke run; MEDAL_ARGS adds flags to every run, e.g.
# MEDAL_ARGS="--no-as-rgb --keep last" for what MedMNIST's script does without --as_rgb (1 channel) and did before
# its May 2023 fix (the last epoch evaluated); use another RUNS directory, since run names omit the recipe.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,17p "$0"; exit 2; }
DATASETS=${1//,/ }
MODELS=${2//,/ }
SEEDS=${3:-0,1,2}
MEDAL=${MEDAL:-medal}
RUNS=${RUNS:-runs/medmnist}
EPOCHS=${EPOCHS:-100}
MILESTONES=${MILESTONES:-50,75}
ROOT_ARGS=()
[ -n "${ROOT:-}" ] && ROOT_ARGS=(--root "$ROOT")
start=$SECONDS
for dataset in $DATASETS; do
  for model in $MODELS; do
    size=224 resize=(--interpolation nearest)
    [[ $model == *_28 ]] && size=28 resize=()
    for seed in ${SEEDS//,/ }; do
      out="$RUNS/${dataset}_${model}_ce_s${seed}"
      if [ -f "$out/metrics.json" ]; then echo "== $out: done, skipped" >&2; continue; fi
      echo "== $out: started $(date -u +%FT%TZ)" >&2
      t0=$SECONDS
      $MEDAL distill --dataset "$dataset" "${ROOT_ARGS[@]}" --alpha 1 --student "$model" --image-size "$size" \
        "${resize[@]}" --as-rgb --keep best --epochs "$EPOCHS" --milestones "$MILESTONES" --batch-size 128 \
        --lr 1e-3 --seed "$seed" --out "$out" --device "${DEVICE:-auto}" ${MEDAL_ARGS:-}
      echo "== $out: finished in $((SECONDS - t0)) s" >&2
    done
  done
done
echo "== all runs in $((SECONDS - start)) s" >&2
$MEDAL report --runs "$RUNS"

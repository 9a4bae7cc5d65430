#!/usr/bin/env bash
# Reproduce rows of MedMNIST v2's official benchmark with medal's CE student (no teacher needed).
#
#   bash benchmarks/reproduce_medmnist.sh DATASETS MODELS [SEEDS]
#   ROOT=~/.medmnist RUNS=runs/medmnist bash benchmarks/reproduce_medmnist.sh breastmnist resnet18_28 0,1,2
#   bash benchmarks/reproduce_medmnist.sh bloodmnist,pneumoniamnist resnet18,resnet50 0,1,2    # (224): GPU
#
# The official recipe (MedMNIST/experiments, MedMNIST2D/train_and_eval_pytorch.py): Adam 1e-3, batch
# 128, 100 epochs, x0.1 at epochs 50 and 75, mean/std 0.5, no augmentation, grayscale kept at 1
# channel (--no-as-rgb), and the LAST epoch's weights evaluated (--keep last: its `best_model = model`
# keeps a reference to the live model). Models named *_28 train on the native 28 px images ("(28)"
# rows); any other model on images upsampled to 224 px ("(224)" rows). `medal report` then puts
# the official numbers beside ours. EPOCHS and MILESTONES override the recipe for a smoke run.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,13p "$0"; exit 2; }
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
    size=224
    [[ $model == *_28 ]] && size=28
    for seed in ${SEEDS//,/ }; do
      out="$RUNS/${dataset}_${model}_ce_s${seed}"
      if [ -f "$out/metrics.json" ]; then echo "== $out: done, skipped" >&2; continue; fi
      echo "== $out: started $(date -u +%FT%TZ)" >&2
      t0=$SECONDS
      $MEDAL distill --dataset "$dataset" "${ROOT_ARGS[@]}" --alpha 1 --student "$model" --image-size "$size" \
        --no-as-rgb --keep last --epochs "$EPOCHS" --milestones "$MILESTONES" --batch-size 128 --lr 1e-3 \
        --seed "$seed" --out "$out" --device "${DEVICE:-auto}"
      echo "== $out: finished in $((SECONDS - t0)) s" >&2
    done
  done
done
echo "== all runs in $((SECONDS - start)) s" >&2
$MEDAL report --runs "$RUNS"

#!/usr/bin/env bash
# MovieLens-100k on one GPU, end to end: train (configs/experiments/movielens_gpu.gin), embed the
# corpus and the test members, evaluate by cohort with the baselines in the same table.
# Usage: experiments/movielens_gpu.sh [WORKDIR] [DATA_DIR]. Aimed at <= 8 minutes on one H200;
# not yet run (no device lent so far): record the figures in docs/movielens_cpu.md and the README's results table when it is.
set -euo pipefail
workdir=${1:-workdirs/movielens_gpu}
data_dir=${2:-workdirs/tfds}
start=$(date +%s)
ff-jax train --gin_file=experiments/movielens_gpu.gin --gin.DATA_DIR="$data_dir" --workdir="$workdir"
ff-jax embed --workdir="$workdir"
ff-jax eval --workdir="$workdir" "--gin.evaluate_run.baselines=('random', 'popularity', 'itemknn', 'als', 'bpr')"
echo "movielens_gpu: $(( $(date +%s) - start )) s end to end"

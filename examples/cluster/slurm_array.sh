#!/usr/bin/env bash
# A cohort on a SLURM cluster: 4 array tasks, each converting every 4th case of cases.csv
# (columns input,output) into /data/sct/<output>/. Submit with: sbatch examples/cluster/slurm_array.sh
# Task K writes its summary to /data/sct/batch-part-K-of-4.json; a requeued task skips the cases it finished.
#SBATCH --job-name=sctconv
#SBATCH --array=0-3
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --gres=gpu:1
#SBATCH --time=02:00:00
#SBATCH --output=sctconv-%A_%a.log
set -euo pipefail
sctconv convert /data/cases.csv -o /data/sct --quiet \
    --num-parts "${SLURM_ARRAY_TASK_COUNT}" --part-id "${SLURM_ARRAY_TASK_ID}"

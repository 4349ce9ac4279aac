#!/usr/bin/env bash
# Rebuild the shipped models from the real CTs in ../shared/data (see weights/README.md).
# Usage: weights/build.sh WORK_DIR [MR_EPOCHS] [CBCT_EPOCHS] [ITERATIONS]
# Every step is an sctconv command: simulate paired cases, then train on them with held-out CTs
# (two head-and-neck patients and the LIDC chest CT) that no model sees during training.
set -euo pipefail
work=${1:?usage: weights/build.sh WORK_DIR [MR_EPOCHS] [CBCT_EPOCHS] [ITERATIONS]}
mr_epochs=${2:-24}
cbct_epochs=${3:-10}
iterations=${4:-250}
repo=$(cd "$(dirname "$0")/.." && pwd)
data=$repo/../shared/data
sims=3

train_cts=()
for pt in pt_1 pt_106 pt_115 pt_13 pt_17 pt_2 pt_24 pt_27 pt_34 pt_4 pt_43 pt_55 pt_6; do
    train_cts+=("openkbp_$pt:$data/openkbp_hn_ct/$pt/ct.nii.gz")
done
train_cts+=("totalseg_abdomen:$data/totalsegmentator_ct_mr/example_ct.nii.gz"
            "totalseg_aorta_crop:$data/totalsegmentator_ct_mr/ct_cropped_1.5mm_aorta_report.nii.gz"
            "totalseg_pulmonary_crop:$data/totalsegmentator_ct_mr/ct_cropped_1.5mm_pulmonary_report.nii.gz")
heldout_cts=("openkbp_pt_67:$data/openkbp_hn_ct/pt_67/ct.nii.gz"
             "openkbp_pt_7:$data/openkbp_hn_ct/pt_7/ct.nii.gz"
             "lidc_chest:$data/lidc_idri_0001_chest_ct/ct_2mm.nii.gz")

for modality in mr cbct; do
    for entry in "${train_cts[@]}"; do
        for seed in $(seq 1 $sims); do
            out=$work/$modality/train/${entry%%:*}_s$seed
            [ -d "$out" ] || sctconv simulate "${entry#*:}" "$out" --modality $modality --seed $seed
        done
    done
    for entry in "${heldout_cts[@]}"; do
        out=$work/$modality/heldout/${entry%%:*}
        [ -d "$out" ] || sctconv simulate "${entry#*:}" "$out" --modality $modality --seed 1000
    done
done

for modality in mr cbct; do
    epochs=$mr_epochs; [ $modality = cbct ] && epochs=$cbct_epochs
    sctconv train --data "$work/$modality/train" --val-data "$work/$modality/heldout" \
        --output "$work/models/${modality}2ct-small" --task $modality \
        --region head-neck --region thorax --region abdomen \
        --epochs "$epochs" --iterations "$iterations" --val-every 4 --device auto
done

# The default AFP teacher: HU tissue classes of the training CTs.
sctconv train-teacher --data "$work/mr/train" --val-data "$work/mr/heldout" --output "$work/models/ct-teacher-small" \
    --region head-neck --region thorax --region abdomen --epochs 6 --iterations 150 --val-every 2 --device auto

for name in mr2ct-small cbct2ct-small ct-teacher-small; do
    rm -rf "$repo/weights/$name" && mkdir -p "$repo/weights/$name"
    cp "$work/models/$name"/{model.safetensors,model.json,curves.png} "$repo/weights/$name/"
done
for name in mr2ct-small cbct2ct-small; do  # training exported them
    cp "$work/models/$name/model.onnx" "$repo/weights/$name/"
done

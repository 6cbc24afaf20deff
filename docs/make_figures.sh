#!/usr/bin/env bash
# Regenerates the README's latent-space pictures (docs/figures/) from an MNIST model (default: the
# shipped one; a run or model folder works too). The model cards' pictures come from
# experiments/ship_pretrained.py.
#   bash docs/make_figures.sh [MODEL] [MNIST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-pretrained:mnist}
DATA=${2:-../shared/data/mnist}
OUT=docs/figures
WORK=$(mktemp -d)
G=.venv/bin/glowtorch
mkdir -p "$OUT"
# Three test digits as PNG files, and an "inverted MNIST" folder (white background) as out-of-distribution data.
.venv/bin/python - "$DATA" "$WORK" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from glowtorch.data import load_dataset
data, work = load_dataset("mnist", sys.argv[1], train=False), Path(sys.argv[2])
for name, index in (("a", 3), ("b", 2), ("c", 1)):
    Image.fromarray(data.images[index, 0].numpy(), "L").save(work / f"{name}.png")
(work / "inverted").mkdir()
for i in range(5000):
    Image.fromarray(255 - data.images[i, 0].numpy(), "L").save(work / "inverted" / f"{i:05d}.png")
PY
$G temperatures "$RUN" --temperatures 0,0.25,0.5,0.7,0.8,0.9,1.0 --n 10 --scale 2 -o "$OUT/temperatures.png"
$G interpolate "$RUN" "$WORK/a.png" "$WORK/b.png" --steps 10 --method slerp --scale 2 \
    -o "$OUT/interpolation.png" --gif "$OUT/interpolation.gif"
$G directions "$RUN" --dataset mnist --data-dir "$DATA" --limit 10000 -o "$WORK/directions.safetensors"
$G manipulate "$RUN" "$WORK/c.png" --direction "$WORK/directions.safetensors" --attribute 7 \
    --scales -1,-0.5,0,0.5,1,1.5 --scale 2 -o "$OUT/manipulate-7.png"
$G encode "$RUN" "$WORK/a.png" "$WORK/b.png" -o "$WORK/latents.safetensors"
$G decode "$WORK/latents.safetensors" -o "$WORK/decoded"
cmp "$WORK/a.png" "$WORK/decoded/a.png" >/dev/null || .venv/bin/python -c "
import numpy as np, sys; from PIL import Image
a, b = (np.asarray(Image.open(p)) for p in sys.argv[1:]); assert (a == b).all(), 'round trip differs'
print('encode/decode round trip: pixels identical')" "$WORK/a.png" "$WORK/decoded/a.png"
$G score "$RUN" --dataset "mnist=$DATA" --dataset "folder=$WORK/inverted" -o "$OUT/scores.csv" --histogram "$OUT/scores.png"
rm "$OUT/scores.csv"
rm -rf "$WORK"

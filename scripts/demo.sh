#!/usr/bin/env bash
# The main job: index the four CIFAR-10 ResNets of ../shared/data into an embedded store, then
# query across them, draw a neuron and compare two models.
#
#   NEURONATLAS_EMBEDDER  embedder spec (default: a tiny open_clip with random weights, because
#                         this machine cannot download CLIP; with weights use e.g.
#                         open_clip:ViT-B-32:openai or open_clip:ViT-B-32:/path/to/ckpt.pt)
#   DEMO_LIMIT            probe images (class-balanced subset of the 10,000; default 2000)
#   NEURONATLAS_HOME      where the store and caches live (default ./demo-home)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SHARED_DATA:-../shared/data}
export NEURONATLAS_HOME=${NEURONATLAS_HOME:-$PWD/demo-home}
export NEURONATLAS_EMBEDDER=${NEURONATLAS_EMBEDDER:-open_clip:na-tiny:random:0}
LIMIT=${DEMO_LIMIT:-2000}
NA=.venv/bin/neuronatlas
[ -d "$DATA/cifar10-test" ] || { echo "needs the real data in $DATA (see README)"; exit 1; }

for depth in 20 32 44 56; do
  ckpt=$(ls "$DATA"/models/cifar10-resnet$depth-*.th)
  $NA index "resnet$depth" --kind cifar_resnet --depth "$depth" --weights "$ckpt" \
      --probe "$DATA/cifar10-test" --limit "$LIMIT" \
      --vocab broden="$DATA/concepts/broden_labels_clean.txt"
done
$NA models
$NA stats
$NA search "striped texture" --per-model 1
$NA search "a red car" --top-k 5
$NA search "stripes" "dots" "fur" --top-k 3                  # several texts, one batch
$NA show resnet56/layer3.8.conv2/0 --out "$NEURONATLAS_HOME/resnet56-layer3.8.conv2-0.png"
$NA compare resnet20 resnet56 --out "$NEURONATLAS_HOME/compare-resnet20-resnet56"
echo "pictures and reports under $NEURONATLAS_HOME"

#!/usr/bin/env bash
# Meta-train the three shipped models with the same task distribution and budget, one after
# the other, then copy the best-validation weights and model cards into the package.
# Resumable: rerun the script after a kill and every run continues from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PROBE_NOTE="first step of RMS length 0.1 along -g instead of the network's own first step \
(NetConfig.probe), applied after meta-training without it; chosen on validation seeds, see \
bench_results/probe/README.md"
for name in optimus optimus-noprecond mlp; do
  out=runs/$name
  if [ -f "$out/$name.npz" ] && [ "$(python3 -c "import json;print(json.load(open('$out/$name.json'))['outer_steps'])")" = \
       "$(python3 -c "import tomllib;print(tomllib.load(open('configs/$name.toml','rb'))['outer']['steps'])")" ]; then
    echo "$name: already trained"
  elif [ -d "$out/checkpoints" ]; then
    $BIN/optimus train --config configs/$name.toml --out "$out" --resume --quiet
  else
    $BIN/optimus train --config configs/$name.toml --out "$out" --quiet
  fi
  cp "$out/$name.npz" "$out/$name.json" src/optimus/pretrained/
  # the shipped update rule differs from the trained one in the first step only: a probe of
  # RMS length 0.1 (NetConfig.probe), chosen on validation seeds after training
  # (bench_results/probe/README.md); the weights and their sha256 stay the same
  $BIN/python scripts/rule_variants.py src/optimus/pretrained/$name.npz --out src/optimus/pretrained \
    --variant ":probe=0.1" --note "$PROBE_NOTE"
done
echo "all pretrained models updated in src/optimus/pretrained/"

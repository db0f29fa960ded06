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
SR1_NOTE="the quasi-Newton direction from a dense SR1 estimate instead of BFGS while SR1 predicts \
the secant pairs better (NetConfig.sr1, margin 2), applied after meta-training without it; \
chosen on validation seeds, see bench_results/sr1/README.md"
RESTART_NOTE="at a stall of the step acceptance's backtracking at floating-point resolution, a \
restart 0.1 box half-widths from the best point along a pseudo-random +-1 vector \
(NetConfig.restart), applied after meta-training without it; chosen on validation seeds, see \
bench_results/restart/README.md"
SMOOTH_NOTE="a Gaussian-smoothing phase when the first two gradients disagree (cosine < 0.5, \
trapezoid rule along the probe off by >= 0.05 relative, n >= 8): 8 rounds of 8 antithetic samples \
at RMS radius 0.2 * 0.75^r box half-widths moving a centre along their mean gradient (steps \
capped at RMS 2), then a fresh start at the best point (NetConfig.smooth_*), \
applied after meta-training without it; chosen on validation seeds, see \
bench_results/smoothing/README.md"
SMOOTH_RULE="smooth_rounds=8,smooth_samples=8,smooth_decay=0.75,smooth_trap=0.05,smooth_max_step=2.0"
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
  # the shipped update rule differs from the trained one in the first step, a probe of RMS
  # length 0.1 (NetConfig.probe; bench_results/probe/README.md), in restarts at stalls
  # (NetConfig.restart; bench_results/restart/), in a Gaussian-smoothing phase on rough
  # objectives (NetConfig.smooth_*; bench_results/smoothing/), and for optimus, the one model
  # with a dense BFGS estimate, in the SR1 direction (NetConfig.sr1; bench_results/sr1/), all
  # chosen on validation seeds after training; the weights and their sha256 stay the same
  rule=":probe=0.1,restart=0.1,$SMOOTH_RULE"
  note="$PROBE_NOTE; $RESTART_NOTE; $SMOOTH_NOTE"
  if [ "$name" = optimus ]; then
    rule="$rule,sr1=true"
    note="$PROBE_NOTE; $SR1_NOTE; $RESTART_NOTE; $SMOOTH_NOTE"
  fi
  $BIN/python scripts/rule_variants.py src/optimus/pretrained/$name.npz --out src/optimus/pretrained \
    --variant "$rule" --note "$note"
done
echo "all pretrained models updated in src/optimus/pretrained/"

#!/usr/bin/env bash
# Meta-train several seeds of one or more configs, for comparing them on validation problems
# (scripts/validate_weights.py: meta-loss; scripts/bench_validation.py: the benchmark's metric). Every run is resumable: rerun the same
# command after a kill and each run continues from its last checkpoint.
#
#   scripts/train_seeds.sh OUT "0 1 2" configs/optimus.toml configs/mlp.toml ...
#
# writes OUT/NAME-sSEED/ (NAME from the config). JOBS=k runs k configs at a time (default 1;
# on an accelerator several small runs fill it better than one), each looping over the seeds.
# OPTIMUS=... overrides the command (default .venv/bin/optimus).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 OUT SEEDS CONFIG [CONFIG ...]" >&2
  exit 2
fi
out=$1
seeds=$2
shift 2
OPTIMUS=${OPTIMUS:-.venv/bin/optimus}
JOBS=${JOBS:-1}
for cfg in "$@"; do
  [ -f "$cfg" ] || { echo "no such config: $cfg" >&2; exit 2; }
done
mkdir -p "$out"

run_config() {
  local cfg=$1 name s dir
  name=$(basename "$cfg" .toml)
  for s in $seeds; do
    dir=$out/$name-s$s
    if [ -d "$dir/checkpoints" ]; then
      $OPTIMUS train --config "$cfg" --out "$dir" --set outer.seed="$s" --resume --quiet
    else
      $OPTIMUS train --config "$cfg" --out "$dir" --set outer.seed="$s" --quiet
    fi
    echo "$name seed $s: done" >&2
  done
}

status=0
for cfg in "$@"; do
  run_config "$cfg" &
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || status=1; done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || status=1; done
exit $status

#!/usr/bin/env bash
# How much faster the code got, apart from the machine: train.py's training images/s on CIFAR-10 (ResNet-20 and
# MobileNetV2, each with the defaults of its own commit) at two commits of this repository, in fresh processes
# that alternate on this machine. Each side runs from a git worktree of its commit, with this checkout's .venv
# and data; bench/steptimer.py, loaded as a Lightning callback, times the optimizer steps after the first 3.
# MODELS="arch:steps ..." picks the models (default "resnet20:14 mobilenetv2:12"). Given checkpoints, it times
# `evaluate.py CHECKPOINT` instead: the whole process, start to exit.
#   bash bench/code_vs_code.sh OLD [NEW] [ROUNDS]    # e.g. 392ca07 HEAD 3 > results/code_vs_code_zen5.txt
#   bash bench/code_vs_code.sh OLD NEW ROUNDS CHECKPOINT...
set -euo pipefail
usage="usage: bash bench/code_vs_code.sh OLD [NEW] [ROUNDS] [CHECKPOINT...], with OLD and NEW commits of this repository (NEW: HEAD), ROUNDS a positive number of alternations (3) and checkpoints to time evaluate.py on instead of training"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
old=$1 new=${2:-HEAD} rounds=${3:-3}
checkpoints=()
for c in "${@:4}"; do
  [ -f "$c" ] || { echo "code_vs_code: no checkpoint file '$c'. $usage" >&2; exit 2; }
  checkpoints+=("$(cd "$(dirname "$c")" && pwd)/$(basename "$c")")
done
root=$(git rev-parse --show-toplevel)
for commit in "$old" "$new"; do
  git -C "$root" rev-parse -q --verify "$commit^{commit}" >/dev/null \
    || { echo "code_vs_code: '$commit' is not a commit of this repository. $usage" >&2; exit 2; }
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "code_vs_code: ROUNDS must be a positive number, got '$rounds'. $usage" >&2; exit 2; }
for spec in ${MODELS:-}; do
  [[ $spec =~ ^[a-z0-9_]+:[1-9][0-9]*$ ]] \
    || { echo "code_vs_code: MODELS takes arch:steps entries (e.g. \"airbench94:8 resnet20:14\"), got '$spec'." >&2; exit 2; }
done
py=$root/.venv/bin/python
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/old" 2>/dev/null; git -C "$root" worktree remove --force "$tmp/new" 2>/dev/null; rm -rf "$tmp"' EXIT
git -C "$root" worktree add -q --detach "$tmp/old" "$old"
git -C "$root" worktree add -q --detach "$tmp/new" "$new"
mkdir "$tmp/cb" && cp "$root/bench/steptimer.py" "$tmp/cb/"  # the callback alone on the path, not all of bench/
echo "# ${MODELS:+MODELS=\"$MODELS\" }bash bench/code_vs_code.sh $*: old $(git -C "$root" rev-parse --short "$old"), new $(git -C "$root" rev-parse --short "$new"), $(date -u '+%Y-%m-%d %H:%M') UTC"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, torch threads: default; one process at a time"
for checkpoint in "${checkpoints[@]}"; do
  for r in $(seq "$rounds"); do
    for side in old new; do
      start=$(date +%s.%N)
      out=$(cd "$tmp/$side" && ZOO_DATA=${ZOO_DATA:-$root/data} "$py" evaluate.py "$checkpoint" 2>&1) \
        || { echo "evaluate.py $checkpoint ($side) failed: $out" >&2; exit 1; }
      acc=$(grep -o 'test accuracy [0-9.]*' <<<"$out" | cut -d' ' -f3)
      seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
      echo "{\"tag\": \"$checkpoint $side\", \"seconds\": $seconds, \"test_acc\": ${acc:-null}}"
    done
  done
done | tee "$tmp/eval_lines"
for spec in $([ ${#checkpoints[@]} -eq 0 ] && echo "${MODELS:-resnet20:14 mobilenetv2:12}"); do
  set -- ${spec/:/ }
  for r in $(seq "$rounds"); do
    for side in old new; do
      (cd "$tmp/$side" && ZOO_DATA=${ZOO_DATA:-$root/data} PYTHONPATH=$tmp/cb TAG="$1 $side" "$py" train.py fit \
        --data cifar10 --model.arch "$1" --trainer.max_steps "$2" --trainer.limit_val_batches 1 \
        --trainer.limit_test_batches 1 --trainer.callbacks+=steptimer.StepTimer --runs_root "$tmp/runs" 2>&1) \
        | grep '"img_per_s"' || { echo "$1 $side: the run failed" >&2; exit 1; }
    done
  done
done | tee "$tmp/lines"
"$py" - "$tmp/lines" "$tmp/eval_lines" <<'PY'
import json, statistics, sys
for path, key, what, f in ((sys.argv[1], "img_per_s", "img/s", ".0f"), (sys.argv[2], "seconds", "seconds of evaluate.py", ".2f")):
    rows = [json.loads(line) for line in open(path)]
    for name in dict.fromkeys(r["tag"].rsplit(" ", 1)[0] for r in rows):
        med = {side: statistics.median(r[key] for r in rows if r["tag"] == f"{name} {side}") for side in ("old", "new")}
        print(f"{name}: median {what} old {med['old']:{f}}, new {med['new']:{f}}: new / old {med['new'] / med['old']:.2f}x")
PY

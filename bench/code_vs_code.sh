#!/usr/bin/env bash
# How much faster the code got, apart from the machine: train.py's training images/s on CIFAR-10 (ResNet-20 and
# MobileNetV2, each with the defaults of its own commit) at two commits of this repository, in fresh processes
# that alternate on this machine. Each side runs from a git worktree of its commit, with this checkout's .venv
# and data; bench/steptimer.py, loaded as a Lightning callback, times the optimizer steps after the first 3.
#   bash bench/code_vs_code.sh OLD [NEW] [ROUNDS]    # e.g. 392ca07 HEAD 3 > results/code_vs_code_zen5.txt
set -euo pipefail
usage="usage: bash bench/code_vs_code.sh OLD [NEW] [ROUNDS], with OLD and NEW commits of this repository (NEW: HEAD) and ROUNDS a positive number of alternations (3)"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
old=$1 new=${2:-HEAD} rounds=${3:-3}
root=$(git rev-parse --show-toplevel)
for commit in "$old" "$new"; do
  git -C "$root" rev-parse -q --verify "$commit^{commit}" >/dev/null \
    || { echo "code_vs_code: '$commit' is not a commit of this repository. $usage" >&2; exit 2; }
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "code_vs_code: ROUNDS must be a positive number, got '$rounds'. $usage" >&2; exit 2; }
py=$root/.venv/bin/python
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/old" 2>/dev/null; git -C "$root" worktree remove --force "$tmp/new" 2>/dev/null; rm -rf "$tmp"' EXIT
git -C "$root" worktree add -q --detach "$tmp/old" "$old"
git -C "$root" worktree add -q --detach "$tmp/new" "$new"
mkdir "$tmp/cb" && cp "$root/bench/steptimer.py" "$tmp/cb/"  # the callback alone on the path, not all of bench/
echo "# bash bench/code_vs_code.sh $*: old $(git -C "$root" rev-parse --short "$old"), new $(git -C "$root" rev-parse --short "$new"), $(date -u '+%Y-%m-%d %H:%M') UTC"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, torch threads: default; one process at a time"
for spec in "resnet20 14" "mobilenetv2 12"; do
  set -- $spec
  for r in $(seq "$rounds"); do
    for side in old new; do
      (cd "$tmp/$side" && ZOO_DATA=${ZOO_DATA:-$root/data} PYTHONPATH=$tmp/cb TAG="$1 $side" "$py" train.py fit \
        --data cifar10 --model.arch "$1" --trainer.max_steps "$2" --trainer.limit_val_batches 1 \
        --trainer.limit_test_batches 1 --trainer.callbacks+=steptimer.StepTimer --runs_root "$tmp/runs" 2>&1) \
        | grep '"img_per_s"' || { echo "$1 $side: the run failed" >&2; exit 1; }
    done
  done
done | tee "$tmp/lines"
"$py" - "$tmp/lines" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for model in dict.fromkeys(r["tag"].split()[0] for r in rows):
    med = {side: statistics.median(r["img_per_s"] for r in rows if r["tag"] == f"{model} {side}") for side in ("old", "new")}
    print(f"{model}: median img/s old {med['old']:.0f}, new {med['new']:.0f}: new / old {med['new'] / med['old']:.2f}x")
PY

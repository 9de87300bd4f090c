#!/bin/bash
# Issue 16's GPU check, on the GPU machine: rebuild CIFAR-10 from the bundle that bench/gpu_bundle.py made
# (sha256-checked against the shared folder's SHA256SUMS), run the CPU recipes unchanged through
# train.py compare (A: ResNet-20 130 epochs, B: 180 epochs, C: MobileNetV2 24 epochs; ONLY=A runs A
# alone), each stopped with SIGINT (train.py's Ctrl-C: it keeps last.ckpt) if it outlives BUDGET
# seconds from the start, and pack the run directories into OUTDIR (results/README.md, "on a GPU").
# Sent with it (git-ignored, named in the call's carry): .devdata/ from `python bench/gpu_bundle.py pack
# ../shared/data .devdata`, and .whl/ with the wheels the GPU image lacks or has in another version:
# lightning 2.6.6, jsonargparse 4.53.0, docstring_parser 0.18.0, typeshed_client 2.15.0 (pip download
# --no-deps --python-version 3.12 ...). The image's own torch, torchmetrics and numpy are used.
# Usage: [ONLY=ABC] [BUDGET=540] bash bench/gpu_cifar10.sh OUTDIR [quick]   (quick: 1 epoch, 2% of the data)
set -u
T0=$(date +%s)
OUTDIR=$1; QUICK=${2:-}
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
rm -f /tmp/A.log /tmp/B.log /tmp/C.log /tmp/smi.log /tmp/setup.log
log start "$(date -u)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
nproc; grep -m1 "model name" /proc/cpuinfo
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# the wheels install and torch imports while the data is rebuilt (each took ~23 s on the H200 machine)
($PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
$PY -c "import torch, lightning, numpy, jsonargparse, torchmetrics, PIL, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'lightning', lightning.__version__, 'numpy', numpy.__version__, 'jsonargparse', jsonargparse.__version__, 'torchmetrics', torchmetrics.__version__, 'PIL', PIL.__version__)") > /tmp/setup.log 2>&1 & setup=$!
log data
rm -rf /tmp/cifar && mkdir -p /tmp/cifar data/cifar-10-batches-py
$PY bench/gpu_bundle.py unpack .devdata /tmp/cifar/full.pack || exit 1
$PY .devdata/tools/build_cifar10.py --orig-prefix /tmp/cifar/orig_prefix --jpeg-pack /tmp/cifar/full.pack \
  --out data/cifar-10-batches-py || exit 1
cp .devdata/batches.meta data/cifar-10-batches-py/
(cd data && grep " cifar-10-batches-py/" ../.devdata/SHA256SUMS | sha256sum -c -) || log "sha256 MISMATCH: not the project's CIFAR-10 bytes"
wait $setup; ok=$?; cat /tmp/setup.log; [ $ok = 0 ] || exit 1
export ZOO_DATA=$PWD/data
$PY -c "from pathlib import Path; from datamodules.cifar10 import read_batch; x, y = read_batch(Path('data/cifar-10-batches-py/test_batch')); print('test_batch', tuple(x.shape), int(y.sum()))" || exit 1

EP_A=130; EP_B=180; EP_C=24; EXTRA=""
if [ "$QUICK" = quick ]; then EP_A=1; EP_B=1; EP_C=1; EXTRA=" --data.init_args.train_fraction 0.02"; fi
R20="--model.scheduler onecycle --model.label_smoothing 0.1 --data.cutout 16$EXTRA"
MNV2="--model.scheduler onecycle --model.label_smoothing 0.1$EXTRA"
deadline=$((T0 + BUDGET - 45))
run() {  # name, then compare's arguments
  local name=$1; shift
  timeout -s INT -k 30 $((deadline - $(date +%s))) $PY train.py compare --seeds '[0]' --datasets '[cifar10]' \
    --baselines false "$@" > "/tmp/$name.log" 2>&1
  echo "[$(( $(date +%s) - T0 ))s] $name exit $?" >> "/tmp/$name.log"
}
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > /tmp/smi.log 2>&1 & smi=$!
log runs
[[ "${ONLY:-ABC}" == *A* ]] && run A --models '[resnet20]' --epochs $EP_A --train_args="$R20" --out results/cifar10_resnet20_h200 \
  --runs_root checkpoints/h200 & pids="$!"
[[ "${ONLY:-ABC}" == *B* ]] && run B --models '[resnet20]' --epochs $EP_B --train_args="$R20" --out results/cifar10_resnet20_h200_180 \
  --runs_root checkpoints/h200_180 & pids="$pids $!"
[[ "${ONLY:-ABC}" == *C* ]] && run C --models '[mobilenetv2]' --epochs $EP_C --train_args="$MNV2" --out results/cifar10_mobilenetv2_h200 \
  --runs_root checkpoints/h200mnv2 & pids="$pids $!"
wait $pids
log packing
tail -n 3 /tmp/A.log /tmp/B.log /tmp/C.log
pack() {  # archive name, run root, results dir: last.ckpt only for a run that did not finish
  local ex=(); [ -f "$2/cifar10/$4/seed0/metrics.json" ] && ex=(--exclude=last.ckpt)
  tar czf "$OUTDIR/$1" "${ex[@]}" "$2" "$3" 2>&1
}
pack A.tgz checkpoints/h200 results/cifar10_resnet20_h200 resnet20
pack B.tgz checkpoints/h200_180 results/cifar10_resnet20_h200_180 resnet20
pack C.tgz checkpoints/h200mnv2 results/cifar10_mobilenetv2_h200 mobilenetv2
(cd "$OUTDIR" && for f in C.tgz; do [ "$(stat -c %s $f)" -gt 15000000 ] && split -b 15000000 -d $f $f. && rm $f; done)
kill $smi 2>/dev/null
tar czf "$OUTDIR/logs.tgz" -C /tmp A.log B.log C.log smi.log
ls -la "$OUTDIR"
log end

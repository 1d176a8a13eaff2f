#!/usr/bin/env bash
# The checks that need a CUDA device, in one run (for a lent GPU machine with torch on it):
# every test's CUDA case, the normalization and data benchmarks on the GPU, and `onorm train`
# on the GPU with a resume. Logs go to $OUT (or ./cuda_checks). Usage: bash benchmarks/cuda_checks.sh
set -u
out=${OUT:-cuda_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "== $name: exit $rc in $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
step tests 240 $py -m pytest -q -rs -p no:cacheprovider tests/norms tests/trainers -k cuda
step norm_speed 150 $py -m benchmarks.norm_speed --device cuda
step data_speed 150 $py -m benchmarks.data_speed --device cuda
data=$(mktemp -d)
$py -c "from trainers.data.synthetic import write_synthetic_cifar as w; w('$data', classes=10, n_train=2048, n_test=512, seed=0)"
step train 120 bash -c "$py -m orchestrator.cli train cifar10 $data --device cuda --norm-mode online --epochs 2 --seed 0 -b 128 --model-dir $data/run -p 0 && $py -m orchestrator.cli train cifar10 $data --device cuda --norm-mode online --epochs 3 --seed 0 -b 128 --model-dir $data/run -p 0 --resume $data/run/checkpoint.pth.tar && $py -c \"import pandas as pd; print(pd.read_parquet('$data/run/metrics.parquet').to_string())\""

#!/usr/bin/env bash
# The checks that need a CUDA device, in one run (for a lent GPU machine with torch on it):
# every test's CUDA case, the GPU benchmark (layers, ResNet-20 modes, trials sharing the GPU,
# projected GPU-hours of the grids), the data benchmark, and `onorm train` on the GPU with
# every speed option and a resume. Logs go to $OUT (or ./cuda_checks).
# Usage: bash benchmarks/cuda_checks.sh
# The step limits add up to 510 s, so the whole run stays under 9 minutes of device time; a
# step cut short by its limit logs exit 124.
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
cuda_tests() {  # the CUDA cases in parallel groups, each logged to $out/tests-GROUP.log
    # Triton compiles each kernel variant on first use, on one core per process: groups in
    # parallel spread that over the machine's cores (they share Triton's on-disk cache).
    local groups=(
        "triton:tests/norms/test_online_triton.py tests/norms/test_online_chain.py"
        "reference:tests/norms/test_online_vs_reference.py"
        "norms:tests/norms/test_online_dtypes.py tests/norms/test_online_state.py tests/norms/test_registry.py tests/norms/test_recurrences.py"
        "trainers:tests/trainers"
    )
    local pids=() names=() group rc=0 i
    for group in "${groups[@]}"; do
        names+=("${group%%:*}")
        # shellcheck disable=SC2086  # the file list splits on purpose
        $py -m pytest -q -rs -p no:cacheprovider -m "slow or not slow" ${group#*:} -k cuda \
            >"$out/tests-${group%%:*}.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || rc=1
        echo "-- ${names[$i]}: $(tail -n 1 "$out/tests-${names[$i]}.log")"
    done
    return $rc
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
step tests 150 bash -c "$(declare -f cuda_tests); out='$out' py='$py' cuda_tests"
step gpu_speed 190 $py -m benchmarks.gpu_speed
step data_speed 20 $py -m benchmarks.data_speed --device cuda --quick
step data_speed_imagenet 90 $py -m benchmarks.data_speed --imagenet --device cuda --quick
data=$(mktemp -d)
$py -c "from trainers.data.synthetic import write_synthetic_cifar as w; w('$data', classes=10, n_train=2048, n_test=512, seed=0)"
fast="--channels-last --cuda-graph --amp"
step train 60 bash -c "$py -m orchestrator.cli train cifar10 $data --device cuda --norm-mode online --epochs 2 --seed 0 -b 128 --model-dir $data/run -p 0 $fast && $py -m orchestrator.cli train cifar10 $data --device cuda --norm-mode online --epochs 3 --seed 0 -b 128 --model-dir $data/run -p 0 $fast --resume $data/run/checkpoint.pth.tar && $py -c \"import pandas as pd; print(pd.read_parquet('$data/run/metrics.parquet').to_string())\""

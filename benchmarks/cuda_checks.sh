#!/usr/bin/env bash
# The checks that need a CUDA device, in one run for a lent GPU machine with torch on it,
# the most valuable figures first, all of them within 8 minutes from a cold Triton cache.
# Logs go to $OUT (or ./cuda_checks); a summary table of every step closes the run.
# Usage: bash benchmarks/cuda_checks.sh
#
# Steps (limit in seconds; a step cut short by its limit logs exit 124):
#   tests       150  every test's CUDA case (the CUDA reference comparisons), in parallel
#                    groups, while benchmarks/warm_triton.py fills Triton's cache for the
#                    benchmarks' shapes in parallel processes
#   layers       40  Online Norm (Triton, eager) over batch norm, one layer at a time
#   resnet20     60  ResNet-20 step ratio in the grids' own configuration (channels_last +
#                    CUDA graph, seeded and so deterministic) and unseeded
#   resnet50     35  ResNet-50 at the imagenet grid's per-rank batch of 32
#   modes        35  ResNet-20 eager float32 and bfloat16 (the other modes)
#   train        40  `onorm train` on the GPU with every speed option, and a resume
#   data_speed   20  the data pipeline on the device
#   imagenet     35  the ImageNet loader's decoders (today's, pil, gpu with nvJPEG)
#   packing      40  four ResNet-20 trials sharing the GPU (short)
#   projection   15  GPU-hours of the paper grids at the rates measured above
# 470 s in all, plus a few seconds of set-up. Without a CUDA device every step but `smoke`
# (gpu_speed.py end to end on the CPU, tiny shapes) is skipped, and the script still exits 0.
# To add a step: one `step NAME LIMIT CMD...` line below (`gpu_step` for one that needs CUDA);
# its log's lines that start "summary:" join the table.
set -u
out=${OUT:-cuda_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
names=() codes=() times=() limits=()
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name (limit $limit s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "== $name: exit $rc in $((SECONDS - start)) s"
    names+=("$name") codes+=("$rc") times+=("$((SECONDS - start))") limits+=("$limit")
}
gpu_step() {  # the same, skipped without a CUDA device
    if [ "$cuda" = 1 ]; then
        step "$@"
    else
        echo "== $1: skipped (no CUDA device)"
        names+=("$1") codes+=("skipped") times+=(0) limits+=("$2")
    fi
}
cuda_tests() {  # the CUDA cases in parallel groups, each logged to $out/tests-GROUP.log
    # Triton compiles each kernel variant on first use, on one core per process: the groups
    # and the warm-up workloads in parallel spread that over the machine's cores (they share
    # Triton's on-disk cache).
    local groups=(
        "triton:tests/norms/test_online_triton.py tests/norms/test_online_chain.py tests/norms/test_online_nonfinite.py"
        "reference:tests/norms/test_online_vs_reference.py"
        "norms:tests/norms/test_online_dtypes.py tests/norms/test_online_state.py tests/norms/test_registry.py tests/norms/test_recurrences.py"
        "trainers:tests/trainers"
    )
    local pids=() labels=() group rc=0 i k
    for group in "${groups[@]}"; do
        labels+=("${group%%:*}")
        # shellcheck disable=SC2086  # the file list splits on purpose
        $py -m pytest -q -rs -p no:cacheprovider -m "slow or not slow" ${group#*:} -k cuda \
            >"$out/tests-${group%%:*}.log" 2>&1 &
        pids+=($!)
    done
    for ((k = 0; k < $($py -m benchmarks.warm_triton --list); k++)); do
        labels+=("warm-$k")
        $py -m benchmarks.warm_triton --workload "$k" >"$out/tests-warm-$k.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || rc=1
        echo "summary: ${labels[$i]}: $(tail -n 1 "$out/tests-${labels[$i]}.log")"
    done
    return $rc
}
summary() {  # the table of every step, then the figures their logs marked "summary:"
    echo
    echo "== summary"
    printf '%-12s %8s %8s %8s\n' step exit seconds limit
    local i
    for i in "${!names[@]}"; do
        printf '%-12s %8s %8s %8s\n' "${names[$i]}" "${codes[$i]}" "${times[$i]}" "${limits[$i]}"
    done
    for i in "${!names[@]}"; do
        [ -f "$out/${names[$i]}.log" ] && grep -h '^summary:' "$out/${names[$i]}.log" \
            | sed "s/^summary:/${names[$i]}:/"
    done
    echo "total: $SECONDS s"
}

cuda=$($py -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$cuda" = 1 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
$py -c "import torch, torchvision, triton; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
state="$out/gpu_speed_state.json"
rm -f "$state"
speed=($py -m benchmarks.gpu_speed --state "$state")

gpu_step tests 150 bash -c "$(declare -f cuda_tests); out='$out' py='$py' cuda_tests"
gpu_step layers 40 "${speed[@]}" --sections layers
gpu_step resnet20 60 "${speed[@]}" --sections resnet20 --modes g,b
gpu_step resnet50 35 "${speed[@]}" --sections resnet50
gpu_step modes 35 "${speed[@]}" --sections resnet20 --modes a,c
data=$(mktemp -d)
$py -c "from trainers.data.synthetic import write_synthetic_cifar as w; w('$data', classes=10, n_train=2048, n_test=512, seed=0)"
fast="--channels-last --cuda-graph --amp"
gpu_step train 40 bash -c "$py -m orchestrator.cli train cifar10 $data --device cuda --norm-mode online --epochs 2 --seed 0 -b 128 --model-dir $data/run -p 0 $fast && $py -m orchestrator.cli train cifar10 $data --device cuda --norm-mode online --epochs 3 --seed 0 -b 128 --model-dir $data/run -p 0 $fast --resume $data/run/checkpoint.pth.tar && $py -c \"import pandas as pd; print(pd.read_parquet('$data/run/metrics.parquet').to_string())\""
gpu_step data_speed 20 $py -m benchmarks.data_speed --device cuda --quick
gpu_step imagenet 35 $py -m benchmarks.data_speed --imagenet --device cuda --quick
gpu_step packing 40 "${speed[@]}" --sections packing --short
gpu_step projection 15 "${speed[@]}" --sections projection --short
if [ "$cuda" != 1 ]; then   # the script's own plumbing, and gpu_speed end to end, on the CPU
    step smoke 120 "${speed[@]}" --device cpu --tiny
fi
summary

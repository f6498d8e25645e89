#!/usr/bin/env bash
# Issue 25 item 2, one 4-GPU lease: corpusflow_vllm on 1, 2 and 4 GPUs of one host on the 32-hour lecture
# corpus (session 7's commands in docs/benchmarks.md), `corpusflow plan`'s prediction for each from the
# 1-GPU run's rates (benchmarks/gpu_plan.py, inside gpu1/gpu_throughput.json) and the scaling plot
# (benchmarks/gpu_scaling_plot.py). One device command is limited to 10 minutes, so the measurement runs
# detached and later commands wait for it (../shared/gpu/VLLM_ON_DEVICE.md: wheels first, then this).
#
#   bash benchmarks/gpu_scaling_lease.sh start DIR [SPEECH_CLIP]  # starts `run` under setsid; returns at once
#   bash benchmarks/gpu_scaling_lease.sh wait DIR [SECONDS]       # waits up to SECONDS (540) for it, prints the
#                                                                 # log's tail; exit 0 once done, 1 if failed,
#                                                                 # 2 if still running
#   bash benchmarks/gpu_scaling_lease.sh run DIR [SPEECH_CLIP]    # the measurement itself, in the foreground
#
# Results in DIR: gpu1/ gpu2/ gpu4/ (gpu_throughput.json each), scaling.json, gpu_scaling.png, log, and
# done or failed. Runs in session 7's order: 1 GPU (compiles cold), 4 GPUs, 2 GPUs; a rerun skips runs
# whose JSON holds corpusflow's figures already.
# DRY=1 is the CPU check of the same path: tiny models, 2 videos x 1.5 min x 2 copies, the transformers
# pipeline (no vLLM here), Ray's logical GPUs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:?start, wait or run}"
dir="${2:?a results folder}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

case "$cmd" in
start)
    rm -f "$dir/done" "$dir/failed"
    setsid nohup bash "$0" run "$dir" "${3:-}" > "$dir/log" 2>&1 < /dev/null &
    echo "started (pid $!); log: $dir/log"
    exit 0 ;;
wait)
    limit="${3:-540}"
    for ((t = 0; t < limit; t += 10)); do
        [[ -e "$dir/done" || -e "$dir/failed" ]] && break
        sleep 10
    done
    tail -n 25 "$dir/log" || true
    [[ -e "$dir/done" ]] && exit 0
    [[ -e "$dir/failed" ]] && exit 1
    exit 2 ;;
run) ;;
*) echo "unknown command $cmd: start, wait or run" >&2; exit 64 ;;
esac

trap 'touch "$dir/failed"' ERR
cd "$here"
clip=()
[[ -n "${3:-}" ]] && clip=(--speech-clip "$3")
if [[ -n "${DRY:-}" ]]; then
    contender=corpusflow_transformers
    common=(--work "$dir/work" --corpus tiny --videos 2 --minutes 1.5 --copies 2 --cpu-smoke --seek keyframe
            --dedup-threshold 0.02 --asr-rows 4 --asr-placement pairs)
else
    contender=corpusflow_vllm
    common=(--work "$dir/work" --corpus lecture --videos 8 --minutes 15 --copies 16 --seek keyframe
            --dedup-threshold 0.02 --vllm-kv-gib 20 --asr-engine vllm --asr-model large-v3-turbo --asr-batch 128
            --asr-rows 4 --asr-placement pairs
            --vllm-options '{"max_num_batched_tokens":16384,"renderer_num_workers":8,"mm_processor_cache_gb":0,"enable_prefix_caching":false}')
fi
# The plan wants the 1-GPU run first; 4 before 2 as in session 7 (their start-ups then both find the compile cache).
for n in 1 4 2; do
    extra=()
    [[ $n == 1 ]] && extra=(--plan-gpus 1,2,4 --decode-modes keyframe)
    echo "[lease] $n GPU(s), $(date -u +%H:%M:%S)"
    CUDA_VISIBLE_DEVICES="$(seq -s, 0 $((n - 1)))" python3 benchmarks/gpu_throughput.py --out "$dir/gpu$n" \
        "${common[@]}" "${clip[@]}" --gpus "$n" --contenders "$contender" "${extra[@]}"
done
python3 benchmarks/gpu_scaling_plot.py --contender "$contender" --runs 1="$dir/gpu1/gpu_throughput.json" \
    2="$dir/gpu2/gpu_throughput.json" 4="$dir/gpu4/gpu_throughput.json" --plan "$dir/gpu1/gpu_throughput.json" \
    --out "$dir/gpu_scaling.png" > "$dir/scaling.json"
cat "$dir/scaling.json"
echo "[lease] done, $(date -u +%H:%M:%S)"
touch "$dir/done"

#!/usr/bin/env bash
# One whole GPU measurement for issue 23, started detached on the device (setsid nohup bash gpu_lease.sh &;
# COPIES=8 for a 16-h corpus instead of 32 h):
# wheels installed, then in order: matmul peak and the 32-h lecture corpus (inside gpu_throughput.py), the
# corpusflow_vllm pipeline (cold vLLM start: fills the compile cache in model_cache) with NVML sampling,
# ray_data_llm with equal engine settings (a fresh engine process on the filled cache), then `corpusflow run`
# on the same corpus (a fresh process, warm start). Every result and log goes to $RES; a summary table is
# printed last (benchmarks/lease_summary.py). Calls that wait copy $RES/*.json and $RES/logs.tgz to $OUT.
#
#   bash benchmarks/gpu_lease.sh            # on the device, from the copied checkout
#   bash benchmarks/gpu_lease.sh --dry-run  # here, on the CPU: tiny models, 2 x 1.5 min, vLLM contenders skipped,
#                                           # the product path on the tiny-random profile
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
DRY=${1:-}
RES=${RES:-/tmp/lease/res}
WORK=${WORK:-/tmp/cfbench}
mkdir -p "$RES"
log() { echo "[lease $(date -u +%H:%M:%S)] $*"; }
t0=$(date +%s)

if [ "$DRY" != "--dry-run" ]; then
  log "installing wheels"
  ( cd /tmp/vw && for p in $(ls *.part00 2>/dev/null); do w=${p%.part00}; cat "$w".part* > "$w" && rm "$w".part*; done \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site *.whl ) || { log "install failed"; exit 1; }
  # grpc_reflection's generated code pins a grpcio newer than the image's (VLLM_ON_DEVICE.md)
  gv=$(python3 -c 'import grpc; print(grpc.__version__)')
  sed -i "s/^GRPC_GENERATED_VERSION = .*/GRPC_GENERATED_VERSION = '$gv'/" /tmp/site/grpc_reflection/v1alpha/*_pb2_grpc.py
  export PYTHONPATH=/tmp/site:$SRC HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_memory_monitor_refresh_ms=0
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$RES/nvidia_smi.csv" 2>&1 &
  smi=$!
  common="--work $WORK --speech-clip $SRC/.gpuclip/speech.flac --corpus lecture --videos 8 --minutes 15 --copies ${COPIES:-16} --distinct-minutes 5
    --seek keyframe --dedup-threshold 0.02 --vllm-kv-gib 20 --asr-engine vllm --asr-model large-v3-turbo
    --asr-batch 128 --asr-rows 4 --asr-placement pairs --gpus 1"
  opts='{"max_num_batched_tokens":16384,"renderer_num_workers":8,"mm_processor_cache_gb":0,"enable_prefix_caching":false}'
  PY=python3
  contenders=corpusflow_vllm,ray_data_llm
else
  export PYTHONPATH=$SRC
  common="--work $WORK --corpus tiny --videos 2 --minutes 1 --copies 2 --seek keyframe --dedup-threshold 0.02 --cpu-smoke"
  opts='{}'
  PY=${PY:-python3}
  contenders=corpusflow_transformers,ray_data_llm  # the same pipeline code on the transformers engine; no vLLM here
fi
log "job path imports"
$PY -c "import deltalake, ray.data, av, faster_whisper, ctranslate2, py3langid, corpusflow.flows.job, corpusflow.flows.vllm_stage, corpusflow.flows.cli; print('job path imports: ok')" \
  > "$RES/imports.log" 2>&1; cat "$RES/imports.log"

log "gpu_throughput: matmul peak, corpus, corpusflow_vllm (cold), ray_data_llm (warm cache)"
PYTHONUNBUFFERED=1 $PY "$SRC/benchmarks/gpu_throughput.py" --out "$RES" $common --vllm-options "$opts" \
  --contenders $contenders > "$RES/bench.log" 2>&1
log "gpu_throughput exit $? ($(( $(date +%s) - t0 )) s since start)"
cp "$WORK"/ray/session_latest/logs/ray-data/ray-data.log "$RES/ray-data-bench.log" 2>/dev/null

log "corpusflow run (product path, warm start)"
corpus=$(ls -d "$WORK"/corpus_*_x* | head -1)
if [ "$DRY" = "--dry-run" ]; then  # no vLLM here: the product path on the tiny-random profile
  printf 'models: tiny-random\nvideo: {seek: keyframe, dedup_threshold: 0.02}\nmodel_cache: %s\n' "$WORK/cache" > "$WORK/dry_job.yaml"
  cfg="--config $WORK/dry_job.yaml"
else
  cfg=""
fi
PYTHONUNBUFFERED=1 $PY "$SRC/benchmarks/product_run.py" --work "$WORK" --corpus "$corpus" $cfg \
  --bench "$RES/gpu_throughput.json" --json "$RES/product_run.json" > "$RES/product.log" 2>&1
log "product run exit $? ($(( $(date +%s) - t0 )) s since start)"
cp "$WORK"/ray-product/ray/session_latest/logs/ray-data/ray-data.log "$RES/ray-data-product.log" 2>/dev/null

[ -n "${smi:-}" ] && kill "$smi"
du -sh "$WORK"/cache/vllm-compile/* > "$RES/compile_cache.txt" 2>&1
cp -r "$WORK/product_tables" "$RES/" 2>/dev/null  # small: no frames in the tables
tar -czf "$RES/logs.tgz" -C "$RES" --exclude logs.tgz $(cd "$RES" && ls | grep -v '\.json$')
$PY "$SRC/benchmarks/lease_summary.py" "$RES" | tee "$RES/summary.txt"
log "done in $(( $(date +%s) - t0 )) s"
touch "$RES/DONE"

#!/usr/bin/env bash
# The GPU measurement of issue 30 in one call (docs/performance.md, "The fast path"): on a lent H100,
# from the repository root,
#
#     bash bench/gpu_step.sh            # device tool: run(command="bash bench/gpu_step.sh",
#                                       #   carry=["third_party"], timeout_s=540)
#
# Stages, most important first, each under its own time cap and all under GPU_STEP_BUDGET_S (default
# 420 s); a stage that runs out of time keeps the JSON lines it printed, and stages that no longer fit
# are skipped and named in the log:
#
#   train_convlstm, train_predrnn  bench/models.py: W2 and W1, bf16 and float32, the fast paths eager,
#                                  eager+graph, compile, compile+graph (training step; each line says
#                                  how far its output is from eager's)
#   peers                          bench/peers.py: OpenSTL's ConvLSTM and PredRNN, same workloads and
#                                  precisions (needs third_party/OpenSTL: carry it)
#   service                        bench/models.py --service: the shipped convlstm and predrnn, 512 x 512,
#                                  12 leads, batch 1, each precision and fast path
#   max_batch                      bench/models.py --max-batch: largest bf16 training batch at W2 and R256
#   train_sa_convlstm              as the first stages, for SA-ConvLSTM
#
# STAGES="service max_batch" runs only those. GPU_STEP_DEVICE=cpu runs every stage on the CPU at tiny sizes
# (workload "tiny", a 64 x 64 grid, 3 leads, float32, no CUDA graphs): it proves the paths, times nothing. Results: $OUT/train.jsonl, service.jsonl, max_batch.jsonl,
# log.txt (stderr, timings of each stage), env.txt and summary.md (bench/gpu_summary.py, printed last).
# The device has torch, lightning and xarray but no zarr, pysteps or pyproj: the bench imports none of them.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_step}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET=${GPU_STEP_BUDGET_S:-420}
STAGES=${STAGES:-"train_convlstm train_predrnn peers service max_batch train_sa_convlstm"}
START=$(date +%s)
LOG="$OUT/log.txt"

elapsed() { echo $(( $(date +%s) - START )); }

# stage NAME CAP_SECONDS RESULTS_FILE COMMAND...: COMMAND under min(CAP, time left), stdout appended to RESULTS_FILE
stage() {
    local name=$1 cap=$2 results=$3; shift 3
    case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
    local left=$(( BUDGET - $(elapsed) ))
    cap=$(( cap * CAP_SCALE ))
    local limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 30 ]; then
        echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (at most ${limit}s, started at $(elapsed)s): $*" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" >> "$OUT/$results" 2>> "$LOG"
    local rc=$?
    echo "   $name: exit $rc$([ $rc -eq 124 ] && echo ' (its time cap)'), at $(elapsed)s" | tee -a "$LOG"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
    $PY - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton missing: compiling on CUDA needs it")
try:
    import pytorch_lightning
    print("pytorch_lightning", pytorch_lightning.__version__)
except ImportError:
    print("pytorch_lightning missing")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

DEVICE=${GPU_STEP_DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
    WORKLOADS=(W2 W1) BATCH_WORKLOADS=(W2 R256) PRECISIONS=(bf16 32) BATCH_PRECISION=bf16 GRID=512 LEADS=12
    VARIANTS=(eager eager+graph compile compile+graph) REPEATS=10 CAP_SCALE=${CAP_SCALE:-1}
else  # a 2-core CPU compiles for minutes: longer caps (and give GPU_STEP_BUDGET_S=1800 or so)
    WORKLOADS=(tiny) BATCH_WORKLOADS=(tiny) PRECISIONS=(32) BATCH_PRECISION=32 GRID=64 LEADS=3
    VARIANTS=(eager compile) REPEATS=2 CAP_SCALE=${CAP_SCALE:-4}
fi
TRAIN=(--device "$DEVICE" --workload "${WORKLOADS[@]}" --precision "${PRECISIONS[@]}" --fast-path "${VARIANTS[@]}"
       --infer-batches --repeats "$REPEATS")
stage train_convlstm 120 train.jsonl $PY bench/models.py --model convlstm "${TRAIN[@]}"
stage train_predrnn 120 train.jsonl $PY bench/models.py --model predrnn "${TRAIN[@]}"
if [ -d third_party/OpenSTL ]; then
    for model in convlstm predrnn; do
        stage peers 35 train.jsonl $PY bench/peers.py --impl openstl --model $model --device "$DEVICE" \
            --workload "${WORKLOADS[@]}" --precision "${PRECISIONS[@]}" --repeats "$REPEATS"
    done
else
    echo "== peers: skipped, no third_party/OpenSTL (carry it: docs/performance.md)" | tee -a "$LOG"
fi
stage service 75 service.jsonl $PY bench/models.py --service --device "$DEVICE" --model convlstm predrnn \
    --grid "$GRID" --leads "$LEADS" --precision "${PRECISIONS[@]}" --fast-path "${VARIANTS[@]}" --repeats "$(( 2 * REPEATS ))"
stage max_batch 90 max_batch.jsonl $PY bench/models.py --max-batch --device "$DEVICE" --model convlstm predrnn \
    --workload "${BATCH_WORKLOADS[@]}" --precision "$BATCH_PRECISION" --fast-path eager --repeats 3 --max-probes 8
stage train_sa_convlstm 120 train.jsonl $PY bench/models.py --model sa_convlstm "${TRAIN[@]}"

touch "$OUT/train.jsonl" "$OUT/service.jsonl" "$OUT/max_batch.jsonl"
$PY bench/gpu_summary.py "$OUT/train.jsonl" "$OUT/service.jsonl" "$OUT/max_batch.jsonl" > "$OUT/summary.md" 2>> "$LOG"
echo "== done at $(elapsed)s; summary ($OUT/summary.md):"
cat "$OUT/summary.md"

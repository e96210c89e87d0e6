#!/usr/bin/env bash
# The checks that need a CUDA machine (CI has no GPU), by stage:
#   tests           fp16 oracle against autocast + GradScaler on the device, then tests/cuda (the
#                   library on the device against the CPU, Triton-compiled steps, compile_cache
#                   across processes);
#   scripts         the training scripts on the device, a few updates each: MLP (compiled, with
#                   the default compile cache), MLP data parallel on one NCCL rank, CNN eager,
#                   Transformer eager with fp16 + loss scaling;
#   bench-eager     the workloads bench's eager and bf16 rows on the device;
#   bench-compiled  its compiled rows for transformer-small (cold compiles, warm and saved starts).
#
#   scripts/cuda_checks.sh OUT [STAGE...]      (default: every stage, in this order)
#
# Each stage runs under its own time limit (seconds: LIMIT_TESTS=300, LIMIT_SCRIPTS=120 per
# script, LIMIT_BENCH=150, LIMIT_COMPILED=300), so one slow stage leaves the others their time.
# OUT gets one log per stage (pytest -v names the test that was running when a limit struck)
# and the bench's JSON; the bench logs each finished row as it comes. PYTHON picks the
# interpreter (default python3), MULTI30K the data folder (default tests/data/multi30k_sample, the
# committed 300-line sample).
#
# Seen on an H200 with torch 2.11 (2026-12-04): a compiled step's first call took tens of
# seconds (Triton), so the first run's limits (150 s for all tests, 45 s a script) stopped the
# compile_cache test and the compiled MLP script; these limits are sized from that run.
set -u
out=${1:?usage: scripts/cuda_checks.sh OUT [tests|scripts|bench-eager|bench-compiled ...]}
shift
stages=${*:-tests scripts bench-eager bench-compiled}
py=${PYTHON:-python3}
data=${MULTI30K:-tests/data/multi30k_sample}
runs=$(mktemp -d)
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DEEPFN_TEST_DEVICE=cuda

stage() {   # stage NAME SECONDS COMMAND...: run it with a limit, log to OUT/NAME.log, print a summary
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" >>"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    tail -n 4 "$out/$name.log"
}

nvidia-smi -L
"$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'

for s in $stages; do
    case $s in
    tests)
        stage tests "${LIMIT_TESTS:-300}" "$py" -m pytest tests/train/test_fp16_oracle.py tests/cuda -v \
            -p no:cacheprovider --durations=20 ;;
    scripts)
        small=(--max-steps 30 --epochs 1 --no-progress)
        limit=${LIMIT_SCRIPTS:-120}
        stage scripts "$limit" "$py" scripts/train_mlp.py --device cuda "${small[@]}" --out "$runs/mlp"
        stage scripts "$limit" "$py" -m torch.distributed.run --standalone --nproc_per_node 1 \
            scripts/train_mlp.py --distributed --device cuda "${small[@]}" --out "$runs/mlp-dp"
        stage scripts "$limit" "$py" scripts/train_cnn.py --device cuda --no-compile "${small[@]}" --out "$runs/cnn"
        stage scripts "$limit" "$py" scripts/train_transformer.py --device cuda --no-compile --amp \
            --data-dir "$data" --limit 300 --bleu-subset 16 --beam-size 2 "${small[@]}" --out "$runs/transformer" ;;
    bench-eager)
        DEEPFN_BENCH_DEVICE=cuda DEEPFN_BENCH_CONTENDERS=eager,bf16 \
            DEEPFN_BENCH_WORKLOADS=mlp-seed,cnn-seed,transformer-small,mlp-wide,transformer-seed \
            stage bench-eager "${LIMIT_BENCH:-150}" "$py" scripts/bench.py --only workloads --label cuda-eager \
            --out "$out" ;;
    bench-compiled)
        DEEPFN_BENCH_DEVICE=cuda DEEPFN_BENCH_CONTENDERS=compiled DEEPFN_BENCH_WORKLOADS=transformer-small \
            stage bench-compiled "${LIMIT_COMPILED:-300}" "$py" scripts/bench.py --only workloads \
            --label cuda-compiled --out "$out" ;;
    *)
        echo "unknown stage '$s': expected tests, scripts, bench-eager or bench-compiled" >&2
        exit 2 ;;
    esac
done
rm -rf "$runs" "$out"/*.md

#!/usr/bin/env bash
# The prepared FP8 GPU run (issue 20), one call within a time budget:
#
#   LIMIT_S=500 OUT=$OUT bash benchmarks/fp8_gpu_run.sh
#
# 1. builds the random full-size FLUX.1-Fill-dev (Q8_0 and Q4_0 GGUF files; perf_bench's
#    builder, on the GPU) unless it is already there;
# 2. measures, with the production loader, at 1024x1024 and 28 steps (one process,
#    benchmarks/perf_bench.py): `bf16` (the Q8_0 file dequantized to bf16: the reference),
#    `ours-l4-gguf` (today's L4 profile: Q4_0 GGUF layers, compiled, encoders offloaded), `fp8`,
#    `fp8+compile`, `fp8+compile+stepcache` (all from the Q8_0 file) and `ours-l4` (the new L4
#    profile: FP8 + compile + step cache + encoders offloaded; its peak includes a new prompt's T5
#    visit). The JSON is rewritten after each variant, so a run cut by the budget keeps what
#    it measured;
# 3. prints the summary: time per job and per step, peak GPU memory, and the output difference
#    to the bf16 reference (the same seed), for each variant, and which ones were not reached.
#
# Results go to $OUT: fp8-gpu.json, fp8-gpu.log, build.log, summary.txt.
# Environment (defaults): LIMIT_S (500: the whole call, build included), OUT (out/fp8-gpu),
# SCALE (full; tiny: the tests' model), DEVICE (auto; cpu for the CPU check), SIZE / STEPS /
# REPEATS (full: 1024 / 28 / 1; tiny: 64 / 2 / 1), VARIANTS (the list above), REFERENCE (the
# first of VARIANTS), PYTHON (python3). A second call for what a first did not reach:
# VARIANTS=bf16,fp8+compile+stepcache,ours-l4 (keep bf16 first: it is the reference).
# tests/test_fp8_gpu_run.py runs it end to end on CPU at tiny scale: SCALE=tiny DEVICE=cpu.
set -uo pipefail

LIMIT_S=${LIMIT_S:-500}
OUT=${OUT:-out/fp8-gpu}
SCALE=${SCALE:-full}
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python3}
VARIANTS=${VARIANTS:-bf16,ours-l4-gguf,fp8,fp8+compile,fp8+compile+stepcache,ours-l4}
REFERENCE=${REFERENCE:-${VARIANTS%%,*}} # the first variant: pixel differences are to it
if [ "$SCALE" = full ]; then
    SIZE=${SIZE:-1024} STEPS=${STEPS:-28} REPEATS=${REPEATS:-1}
else
    SIZE=${SIZE:-64} STEPS=${STEPS:-2} REPEATS=${REPEATS:-1}
fi
SUMMARY_S=20 # kept back for the summary

cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT" || exit 2
export PYTHONUNBUFFERED=1
started=$(date +%s)
deadline=$((started + LIMIT_S))
left() { echo $((deadline - $(date +%s) - SUMMARY_S)); }

echo "fp8_gpu_run: scale $SCALE, device $DEVICE, ${SIZE}x${SIZE}, $STEPS steps, repeats $REPEATS," \
    "budget ${LIMIT_S} s, variants $VARIANTS"
"$PYTHON" -c 'import torch, torchao; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "capability", torch.cuda.get_device_capability() if torch.cuda.is_available() else None,
    "torchao", torchao.__version__)' 2>&1 | grep -v -i -E "warn|failed to load" | tee "$OUT/versions.txt"

common=(--scale "$SCALE" --device "$DEVICE" --quant Q8_0 --variants "$VARIANTS")
timeout --kill-after=10 "$(left)" "$PYTHON" -m benchmarks.perf_bench "${common[@]}" --build-only \
    >"$OUT/build.log" 2>&1
build_rc=$?
tail -n 3 "$OUT/build.log"
echo "build: rc $build_rc, $(($(date +%s) - started)) s"

bench_rc=125
if [ "$build_rc" -eq 0 ] && [ "$(left)" -gt 30 ]; then
    timeout --kill-after=10 "$(left)" "$PYTHON" -m benchmarks.perf_bench "${common[@]}" \
        --dtype bfloat16 --size "$SIZE" --steps "$STEPS" --repeats "$REPEATS" --reference "$REFERENCE" \
        --no-crop --json "$OUT/fp8-gpu.json" >"$OUT/fp8-gpu.log" 2>&1
    bench_rc=$?
    grep -E "^(measuring|wrote)|Error|error:" "$OUT/fp8-gpu.log" | tail -n 20
fi
echo "bench: rc $bench_rc (124: stopped by the budget), $(($(date +%s) - started)) s in all"

"$PYTHON" -m benchmarks.perf_report --summary "$OUT/fp8-gpu.json" --expect "$VARIANTS" \
    | tee "$OUT/summary.txt"
summary_rc=${PIPESTATUS[0]}
echo "total $(($(date +%s) - started)) s of ${LIMIT_S} s"
exit "$summary_rc"

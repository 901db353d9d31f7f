# Session 32, call C: the 12 GB mode as committed (T5's feed-forward layers streamed in halves) through flux_speed.
set -o pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
timeout $((385 - SECONDS)) python3 -m benchmarks.flux_speed --modes vortex-12gb --iterations 6 --timeout-s $((370 - SECONDS)) --out $OUT/flux_speed_12gb.json 2>&1 \
  | grep -v -i "warn\|^$\|it/s\]\|s/it\]\|^RESULT" | tail -22 | tee $OUT/flux_speed_12gb.txt
echo "elapsed $SECONDS"

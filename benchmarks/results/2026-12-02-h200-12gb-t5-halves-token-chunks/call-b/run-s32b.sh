# Session 32, call B: T5 streamed whole or in pieces (seconds per new prompt, peak), then the 12 GB mode as committed
# (T5 in pieces of at most 32 MiB, no token_chunk) through flux_speed.
set -o pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
timeout 200 python3 .gpu_diag/s32_t5_pieces.py 2>&1 | grep -v -i "warn" | tee $OUT/t5_pieces.txt | cut -c1-300
echo "=== flux_speed (elapsed $SECONDS)"
timeout $((585 - SECONDS)) python3 -m benchmarks.flux_speed --modes vortex-12gb --iterations 6 --timeout-s $((560 - SECONDS)) --out $OUT/flux_speed_12gb.json 2>&1 \
  | grep -v -i "warn\|^$\|it/s\]\|s/it\]\|^RESULT" | tail -22 | tee $OUT/flux_speed_12gb.txt
echo "elapsed $SECONDS"

# Session 33, call A: the 12 GB mode with the NF4 transformer's feed-forward layers in halves (flux_speed: peak
# allocated by phase, new-prompt P50), then the NF4 transformer alone: stock, halves, quarters (s33_nf4_pieces.py).
set -o pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
git log --oneline -1 | cut -c1-80; git status --short | head -5
timeout 340 python3 -m benchmarks.flux_speed --modes vortex-12gb --iterations 6 --timeout-s 320 --out $OUT/flux_speed_12gb.json 2>&1 \
  | grep -v -i "warn\|^$\|it/s\]\|s/it\]\|^RESULT" | tail -30 | tee $OUT/flux_speed_12gb.txt
echo "=== pieces (elapsed $SECONDS)"
ls /dev/shm
PYTHONPATH=.:$PYTHONPATH timeout $((590 - SECONDS)) python3 .gpu_diag/s33_nf4_pieces.py /dev/shm/vortex-flux-random $((575 - SECONDS)) 2>&1 \
  | grep -v -i "warn\|it/s\]\|s/it\]" | tee $OUT/nf4_pieces.txt | cut -c1-330
echo "elapsed $SECONDS"

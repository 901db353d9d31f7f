# Session 32, call A: the 12 GB mode with T5 streamed in pieces (flux_speed: peak allocated by phase, new-prompt P50),
# then where the NF4 transformer peaks at 768x768 and 1024x1024 and whether row chunks bring it down (s32_nf4_peak.py).
set -o pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
git log --oneline -1 | cut -c1-80; git status --short | head -5
timeout 330 python3 -m benchmarks.flux_speed --modes vortex-12gb --iterations 6 --timeout-s 300 --out $OUT/flux_speed_12gb.json 2>&1 \
  | grep -v -i "warn\|^$\|it/s\]\|s/it\]" | tail -30 | tee $OUT/flux_speed_12gb.txt
echo "=== peaks (elapsed $SECONDS)"
ls /dev/shm
timeout $((590 - SECONDS)) python3 .gpu_diag/s32_nf4_peak.py /dev/shm/vortex-flux-random $((575 - SECONDS)) 2>&1 \
  | grep -v -i "warn\|it/s\]\|s/it\]" | tee $OUT/nf4_peak.txt | cut -c1-330
echo "elapsed $SECONDS"

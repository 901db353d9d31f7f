# Session 33, call C: the GPU tests that load NF4 (the feed-forward layers in halves, as committed), then the NF4
# transformer alone: stock, halves, and the addmm variant in quarters, thirds and halves (s33_nf4_pieces.py).
set -o pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
git log --oneline -1 | cut -c1-80; git status --short | head -5
timeout 300 python3 -m pytest -m gpu -q -s tests/test_flux_gpu_loading.py -k "nf4 or 12gb" -p no:cacheprovider 2>&1 \
  | grep -v -i "warn\|^$\|it/s\]\|s/it\]" | tail -40 | tee $OUT/gpu_tests.txt
echo "=== checkpoint (elapsed $SECONDS)"
timeout 150 python3 -m deployments.engines.random_models /dev/shm/vortex-flux-random 2>&1 | tail -2
echo "=== pieces (elapsed $SECONDS)"
PYTHONPATH=.:$PYTHONPATH timeout $((590 - SECONDS)) python3 .gpu_diag/s33_nf4_pieces.py /dev/shm/vortex-flux-random $((575 - SECONDS)) 2>&1 \
  | grep -v -i "warn\|it/s\]\|s/it\]" | tee $OUT/nf4_pieces.txt | cut -c1-330
echo "elapsed $SECONDS"

# Session 26, call D (fresh H200): why the runner's fallback test failed (full output), then a start from the regions
# alone on a fresh host first (its kernels autotune: the warm-up's captures without eager calls fail and fall back).
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider -x --tb=long tests/test_cuda_graphs_gpu.py > $OUT/pytest-full.txt 2>&1
grep -n "Error\|assert\|^E " $OUT/pytest-full.txt | head -30
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-rg && tar xJf .gpu_diag/regions.tar.xz -C /tmp/vortex-rg && echo "unpacked"
echo "=== regions-only (elapsed $SECONDS)"
V=$PWD/.gpu_diag/variants/checksums
(cd $V && PYTHONPATH=$V:$PYTHONPATH timeout 150 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-rg --timeout-s 145 --out $OUT/regions-only.json 2>&1) > $OUT/regions-only.txt
grep '^vortex\|slowest\|precompiled regions\|^start \|captures\|warm start\|Error\|failed' $OUT/regions-only.txt | cut -c1-300
grep -c "A capture without its eager call failed" $OUT/regions-only.txt
echo "elapsed $SECONDS"

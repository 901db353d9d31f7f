# Session 25, call C (fresh H200): the GPU tests of HEAD (fast engine tests; the fp8 read-ahead load against the copied
# one, now comparing the weights' region facts); then the checkpoint and a warm start from call A's regions alone (the
# first on a fresh host: call B's paid 23 s of autotuning), and the regions with inductor's autotuning results back.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -m pytest -m gpu tests/test_flux_gpu_fast.py "tests/test_flux_gpu_loading.py" -k "fast or fp8" -p no:cacheprovider -q 2>&1 | tail -15 > $OUT/gpu_tests.txt
tail -4 $OUT/gpu_tests.txt; echo "tests done, elapsed $SECONDS"
[ $SECONDS -lt 420 ] || exit 0
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start\|Error\|failed'
timeout $((585-SECONDS)) python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 100 --out $OUT/warm-fresh-host.json 2>&1 | grep -v -i "$F" > $OUT/warm-fresh-host.txt; grep "$S" $OUT/warm-fresh-host.txt | cut -c1-300
(cd /tmp/vortex-cc && find . -name "*.best_config" | wc -l && find . -name "*.best_config" > /tmp/best.txt && tar cJf $OUT/regions-and-best-configs.tar.xz vortex-regions -T /tmp/best.txt) && ls -la $OUT/regions-and-best-configs.tar.xz
echo "elapsed $SECONDS"

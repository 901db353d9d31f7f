# Session 23, call A (fresh H200): the checkpoint on local disk; the fp8 load with host->GPU copies on threads
# against the repo's sequential load (fresh processes, alternating); then the fast GPU tests.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
nproc; free -g | head -2
python3 -c "import deployments.engines.flux" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
for i in 1 2; do
  for mode in seq pool-4 streams-4 pool-8 prefault-8; do
    echo "== $mode $i (elapsed $SECONDS)"
    timeout 90 python3 .gpu_diag/load_parallel.py $mode /tmp/ckpt 2>&1 | grep -v -i "warn\|^$\|Loading\|it/s\]" | tail -3
  done
done 2>&1 | tee $OUT/load_parallel.txt
echo "elapsed $SECONDS"
timeout $((590-SECONDS)) python3 -m pytest -m gpu tests/test_flux_gpu_fast.py -x -q -p no:cacheprovider 2>&1 | tail -15 | tee $OUT/gpu_fast.txt
echo "elapsed $SECONDS"

# static compile (as committed) + no replay on capture, bytecode cached; then the GPU tests of the CUDA graph runner
set -o pipefail
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
/usr/bin/time -f "%e s: first import, writing bytecode" python3 -c "import deployments.engines.flux" 2>&1 | tail -1
timeout 330 python3 -m benchmarks.replica_start --cache-dir /tmp/vortex-cc --out $OUT/replica_start.json 2>&1 | tee $OUT/replica_start.txt | grep -v "^RESULT"
export TORCHINDUCTOR_CACHE_DIR=/tmp/vortex-cc
timeout 230 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_flux_gpu_fast.py tests/test_verifier_gpu.py 2>&1 | tee $OUT/gpu_tests.txt | tail -15

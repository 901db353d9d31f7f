# Session 31, call C: the GPU test suite, the modules least recently run first (loading: NF4, 12 GB mode, fp8 read
# ahead, the driver's JIT cache; the verifier; the bf16 engine; the fast engine less the two tests calls B and session
# 30's call C ran), so that a time-out cuts the most recently checked ones.
set -o pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
timeout 480 python3 -m pytest -m gpu -p no:cacheprovider -v -s tests/test_flux_gpu_loading.py tests/test_verifier_gpu.py \
  tests/test_flux_gpu.py tests/test_flux_gpu_fast.py -k "not precompiled_fp8 and not no_request_compiles" 2>&1 \
  | tee $OUT/pytest.txt | grep -E "MEASURED|PASSED|FAILED|SKIPPED|ERROR|passed|failed|Error" | cut -c1-300
echo "elapsed $SECONDS"

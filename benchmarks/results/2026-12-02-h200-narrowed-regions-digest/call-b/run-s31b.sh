# Session 31, call B: on another host, from the folder call A left (regions-s31.tar.xz, the narrowed digest):
# 1) serve_restarts: the fp8 profile through `serve deploy`, a first replica and two replacements of killed ones;
# 2) the GPU test of precompiled regions (the restarted engine reads every region ahead and draws the same image).
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
export CUDA_CACHE_PATH=/tmp/cuda-jit
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) echo -n "left out $n; ";; *) ln -s "$e" "$PV/$n";; esac; done; echo
S0=$SECONDS
/tmp/pv/bin/python3 -c "import deployments.engines.flux, deployments.engines.clip, deployments.app, ray.serve, benchmarks.vram_placement" >/dev/null 2>&1
echo "bytecode written in $((SECONDS-S0)) s"
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-s31.tar.xz -C /tmp/vortex-cc && echo "regions unpacked: $(ls /tmp/vortex-cc/vortex-regions/*/*.bin | wc -l) files, records $(ls /tmp/vortex-cc/vortex-regions/*/warm-up-*.txt | wc -l)"
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 10, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
echo "=== serve_restarts (elapsed $SECONDS)"
timeout 220 /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve-restarts.json 2>&1 | grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" | cut -c1-260
echo "=== GPU test (elapsed $SECONDS)"
timeout $((590 - SECONDS)) python3 -m pytest -m gpu -p no:cacheprovider tests/test_flux_gpu_fast.py -k precompiled_fp8 -s 2>&1 | grep -v "^$" | tail -15 | tee $OUT/pytest.txt
echo "elapsed $SECONDS"

# Session 28, call C: is the slow first start on a host (CLIP text captures of 1.6-2.8 s against 0.3 s, longer
# transformer and VAE captures) the CUDA driver compiling PTX at run time, whose cache (~/.nv/ComputeCache, or
# CUDA_CACHE_PATH) starts empty on a fresh host? Bare warm starts of the fp8 profile in the lean venv, each with its own
# CUDA_CACHE_PATH: 1) empty folder A; 2) folder A again; 3) empty folder B (the page cache is warm by then);
# 4) folder A again.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
echo "driver JIT cache before anything: $(du -sh ~/.nv/ComputeCache 2>&1)"; env | grep "^CUDA_" || echo "no CUDA_ variables"
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) ;; *) ln -s "$e" "$PV/$n";; esac; done
/tmp/pv/bin/python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
S0=$SECONDS
CUDA_CACHE_PATH=/tmp/jit-build python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s; JIT cache of the checkpoint build: $(du -sh /tmp/jit-build 2>&1)"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
F='warn\|^$'
for run in "1 /tmp/jit-a" "2 /tmp/jit-a" "3 /tmp/jit-b" "4 /tmp/jit-a"; do set -- $run
  echo "=== start $1, CUDA_CACHE_PATH=$2 ($(du -sh $2 2>/dev/null | cut -f1) before; elapsed $SECONDS)"
  CUDA_CACHE_PATH=$2 timeout 100 /tmp/pv/bin/python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 95 --out $OUT/warm$1.json 2>&1 | grep -v -i "$F" | grep "^vortex\|Error"
  python3 -c "import json; r = json.load(open('$OUT/warm$1.json'))['results'][0]; print('captures', {k: round(v, 2) for k, v in r['capture_s'].items()}, 'regions', round(r['precompiled_regions']['s'], 1), 'first 512 b1', round(r['first_request_s']['512x512 b1'], 3))"
done
du -sh /tmp/jit-a /tmp/jit-b; find /tmp/jit-a -type f | head -5; find /tmp/jit-a -type f | wc -l
echo "elapsed $SECONDS"

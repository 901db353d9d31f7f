# Session 28, call D: the CUDA driver's JIT cache kept in compile_cache_dir/cuda-jit (use_compile_cache_dir, working
# tree after call C). Lean venv, session 25's compile folder (no cuda-jit in it). 1) Serve: the fp8 profile's first
# replica: does it write the driver's cache into the folder? 2) a bare warm start with that folder; 3) a bare warm start
# after moving cuda-jit out of the folder (the counterfactual: an empty driver cache, same host, page cache warm).
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) ;; *) ln -s "$e" "$PV/$n";; esac; done
/tmp/pv/bin/python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked: $(ls /tmp/vortex-cc | tr '\n' ' ')"
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
echo "=== Serve, first replica (elapsed $SECONDS)"
timeout 150 /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$FLUX" 0 $OUT/serve.json 2>&1 | grep "start:\|Imported\|Loaded\|Warmed\|Error" | cut -c1-200
echo "driver cache in the folder: $(du -sh /tmp/vortex-cc/cuda-jit 2>&1); files: $(find /tmp/vortex-cc/cuda-jit -type f 2>/dev/null | wc -l); ~/.nv: $(du -sh ~/.nv/ComputeCache 2>&1)"
F='warn\|^$'
for run in "1 with-cuda-jit" "2 without-cuda-jit"; do set -- $run
  [ $1 = 2 ] && mv /tmp/vortex-cc/cuda-jit /tmp/cuda-jit-moved
  echo "=== bare start $1, $2 (elapsed $SECONDS)"
  timeout 100 /tmp/pv/bin/python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 95 --out $OUT/warm$1.json 2>&1 | grep -v -i "$F" | grep "^vortex\|Error"
  python3 -c "import json; r = json.load(open('$OUT/warm$1.json'))['results'][0]; print('captures', {k: round(v, 2) for k, v in r['capture_s'].items()}, 'regions', round(r['precompiled_regions']['s'], 1), 'compiled', r['precompiled_regions']['compiled'], 'first 512 b1', round(r['first_request_s']['512x512 b1'], 3))"
done
echo "driver cache after start 2: $(du -sh /tmp/vortex-cc/cuda-jit 2>&1)"
echo "elapsed $SECONDS"

# Session 28, call B: on one host, in the lean venv, how far a warm fp8 replica's start is from the floor that
# plain diffusers sets on the same host. 1) plain diffusers' process start, twice; 2) the fp8 engine's warm start in
# a bare process; 3) Serve: the fp8 profile, first replica and two replacements (serve_restarts.py); 4) Serve: the
# same generator with no speed option (bf16, no compile, no CUDA graphs, so no warm-up): what Serve, the imports and
# a diffusers load cost on this host; first replica and one replacement.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) echo -n "left out $n; ";; *) ln -s "$e" "$PV/$n";; esac; done; echo
/tmp/pv/bin/python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
F='warn\|^$'
for i in 1 2; do
  echo "=== plain diffusers start $i (elapsed $SECONDS)"
  timeout 90 /tmp/pv/bin/python3 -m benchmarks.replica_start --model /tmp/ckpt --starts diffusers --out $OUT/diffusers$i.json 2>&1 | grep -v -i "$F" | grep "^plain"
done
echo "=== fp8 warm start, bare process (elapsed $SECONDS)"
timeout 100 /tmp/pv/bin/python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 95 --out $OUT/warm.json 2>&1 | grep -v -i "$F" | grep "^vortex\|^start\|Error"
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
echo "=== serve_restarts, fp8 profile (elapsed $SECONDS)"
timeout 200 /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve-fp8.json 2>&1 | grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Error" | cut -c1-200
PLAIN='{"precision": "bf16", "compile": "none", "cuda_graphs": 0, "model": "/tmp/ckpt", "offline": true}'
echo "=== serve_restarts, no speed option (elapsed $SECONDS)"
timeout $((580-SECONDS)) /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$PLAIN" 1 $OUT/serve-plain.json 2>&1 | grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Error" | cut -c1-200
echo "elapsed $SECONDS"

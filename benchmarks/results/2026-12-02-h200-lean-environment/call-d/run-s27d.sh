# Session 27, call D (fresh H200): the same host, the same (default) compile threads, Serve in the host's venv and in
# the closure venv (the host's venv less scikit-learn, scipy, pandas, pyarrow and peft). One bare warm start first,
# so that neither Serve run is the host's first start.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) echo -n "left out $n; ";; *) ln -s "$e" "$PV/$n";; esac; done; echo
python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
/tmp/pv/bin/python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
echo "=== bare warm start, host venv (elapsed $SECONDS)"
timeout 90 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 85 --out /tmp/bare.json 2>&1 | grep "^vortex\|Error\|failed" | cut -c1-200
F2='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op\|kernels'
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
serve_run() {  # name, python
  echo "=== $1 (elapsed $SECONDS)"
  timeout 200 $2 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/$1.json 2>&1 | grep -v -i "$F2" > /tmp/$1.txt
  echo "rc $? elapsed $SECONDS"
  grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" /tmp/$1.txt | cut -c1-200
}
serve_run serve-host python3
serve_run serve-closure /tmp/pv/bin/python3
echo "elapsed $SECONDS"

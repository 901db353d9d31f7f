# Session 29, call C: served throughput with generator batches of up to 2 against up to 4 images (the fp8 profile's
# engine, session 25's folder, weights from a local folder): 512x512 batches of 2 (call B measured batches of 4 on
# another host, so 4 again here), then 1024x1024 both.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
export CUDA_CACHE_PATH=/tmp/cuda-jit
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) echo -n "left out $n; ";; *) ln -s "$e" "$PV/$n";; esac; done; echo
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
served() {  # $1 size, $2 max batch, $3 level timeout
  f='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": '$2', "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
  pkill -9 -f "gcs_server|raylet|ray::|dashboard/|log_monitor|ray/autoscaler" >/dev/null 2>&1; sleep 3
  echo "=== served_load $1 max_batch_size $2 (elapsed $SECONDS)"
  timeout 150 /tmp/pv/bin/python3 -m benchmarks.served_load --size $1 --max-batch-size $2 --flux "$f" --concurrency 1 8 \
    --requests-per-level 48 --level-timeout-s $3 --baseline-calls 4 --out $OUT/served-$1-b$2.json > /tmp/served-$1-b$2.log 2>&1
  echo "rc $?"
  grep "^level:\|^baseline diffusers\|RUNNING after\|^served P50\|^saturation" /tmp/served-$1-b$2.log | cut -c1-330
  [ -f $OUT/served-$1-b$2.json ] || tail -8 /tmp/served-$1-b$2.log | cut -c1-300
}
served 512x512 2 20
served 1024x1024 2 25
[ $SECONDS -lt 430 ] && served 1024x1024 4 25
[ $SECONDS -lt 430 ] && served 512x512 4 20
echo "elapsed $SECONDS"

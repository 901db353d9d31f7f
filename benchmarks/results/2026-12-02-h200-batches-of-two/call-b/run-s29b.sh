# Session 29, call B, another host: 1) Serve's warm start of the batches-of-2 fp8 profile (first replica, two
# replacements), as in call A; 2) served throughput with generator batches of up to 2 against up to 4 images (the
# profile's engine, session 25's folder, weights from a local folder) at 512x512, then 1024x1024.
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
cp -a /tmp/vortex-cc /tmp/vortex-b2
python3 - <<'PY'
import pathlib
for folder in pathlib.Path("/tmp/vortex-b2/vortex-regions").iterdir():
    files = sorted(folder.glob("*.bin"), key=lambda p: p.stat().st_mtime)  # the cold start's order: sizes x batches 1-4
    if files[0].name.startswith("Decoder"):
        continue
    assert len(files) == 16, (folder, len(files))
    for i, f in enumerate(files):
        if i % 4 >= 2:
            f.unlink()
PY
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 10, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-b2"}'
echo "=== serve_restarts, b2 profile (elapsed $SECONDS)"
timeout 200 /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve-b2.json 2>&1 | grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" | cut -c1-220
served() {  # $1 size, $2 max batch, $3 level timeout
  f='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": '$2', "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
  echo "=== served_load $1 max_batch_size $2 (elapsed $SECONDS)"
  timeout 200 /tmp/pv/bin/python3 -m benchmarks.served_load --size $1 --max-batch-size $2 --flux "$f" --concurrency 1 8 \
    --requests-per-level 48 --level-timeout-s $3 --baseline-calls 4 --out $OUT/served-$1-b$2.json 2>&1 \
    | grep "^level:\|^baseline:\|^card\|RUNNING\|P50\|saturation\|img/s\|Error" | cut -c1-260 | tail -14
}
served 512x512 4 20
served 512x512 2 20
[ $SECONDS -lt 380 ] && served 1024x1024 2 25
[ $SECONDS -lt 380 ] && served 1024x1024 4 25
echo "elapsed $SECONDS"

# Session 29, call D: 1) the autoscaler's scale-up decision to the new replica's first answer with the batches-of-2
# fp8 profile (benchmarks.vram_placement on one GPU: two generators share the card), weights from a local folder,
# session 25's folder without the regions of batches 3 and 4 (as in calls A and B); 2) served throughput at 512x512,
# batches of up to 2 against up to 4, on this one host (calls B and C measured them on two hosts).
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
echo "=== vram_placement, b2 profile (elapsed $SECONDS)"
timeout 240 /tmp/pv/bin/python3 -m benchmarks.vram_placement --flux "$FLUX" --hold-s 20 --out $OUT/vram_placement.json 2>&1 | grep -v -i "warn\|^$\|^(" | cut -c1-400 > $OUT/vram_placement.txt
echo "rc $?"; grep "cards\|node \|deployed\|load:\|served throughput\|replica \|scaled\|restart\|start\|Error\|failed" $OUT/vram_placement.txt | cut -c1-300
(cd /tmp/ray/session_latest/logs/serve && grep -h "Imported\|Loaded Flux\|Warmed up\|Precompiled regions" replica_vortex_FluxGenerator_*.log | cut -c1-300 > $OUT/vram-replica-lines.txt)
served() {  # $1 max batch, $2 folder, $3 port
  f='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": '$1', "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "'$2'"}'
  echo "=== served_load 512x512 max_batch_size $1 (elapsed $SECONDS)"
  timeout 150 /tmp/pv/bin/python3 -m benchmarks.served_load --size 512x512 --max-batch-size $1 --flux "$f" --concurrency 1 8 \
    --requests-per-level 48 --level-timeout-s 20 --baseline-calls 4 --port $3 --out $OUT/served-512x512-b$1.json > /tmp/served-b$1.log 2>&1
  echo "rc $?"
  grep "^level:\|^baseline diffusers\|RUNNING after\|^served P50\|^saturation" /tmp/served-b$1.log | cut -c1-330
  [ -f $OUT/served-512x512-b$1.json ] || tail -8 /tmp/served-b$1.log | cut -c1-300
}
[ $SECONDS -lt 420 ] && served 2 /tmp/vortex-b2 8001
[ $SECONDS -lt 480 ] && served 4 /tmp/vortex-cc 8002
echo "elapsed $SECONDS"

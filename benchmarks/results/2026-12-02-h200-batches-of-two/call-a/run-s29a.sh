# Session 29, call A: the fp8 profile with batches of up to 2 images (requests for 3-4 in transformer passes of 2),
# against batches of up to 4, on one host. Warm starts from session 25's compile folder: whole for batches of 4;
# without the regions of batches 3 and 4 for batches of 2 (as a cold start of that profile would leave it).
# 1) bare warm starts, alternating b4 / b2; 2) Serve, b2 profile: first replica and two replacements.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
export CUDA_CACHE_PATH=/tmp/cuda-jit   # one driver JIT cache for both folders: only the host's first start pays it
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
    print(folder.name, "kept", len(list(folder.glob("*.bin"))))
PY
# The batches-of-4 profile, as it was before this session: a copy of the tree with the old YAML lines.
mkdir -p /tmp/b4 && cp -a . /tmp/b4/ 2>/dev/null; cd /tmp/b4 && sed -i 's/cuda_graphs: 10 /cuda_graphs: 20 /; /generator: {max_batch_size: 2}/d; /^      batching:$/d' configs/gpu-80gb.yaml && grep -n "cuda_graphs\|batch" configs/gpu-80gb.yaml | grep -v "^ *#" | head; cd - >/dev/null
F='warn\|^$'
start() {  # $1: b2|b4, $2: out name
  if [ "$1" = b4 ]; then dir=/tmp/b4; cc=/tmp/vortex-cc; else dir=$PWD; cc=/tmp/vortex-b2; fi
  echo "=== warm start $1 -> $2 (elapsed $SECONDS)"
  (cd $dir && timeout 110 /tmp/pv/bin/python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir $cc --timeout-s 105 --out $OUT/$2.json 2>&1 | grep -v -i "$F" | grep "^vortex\|^start\|Error\|first")
}
start b4 warm-b4-1
start b2 warm-b2-1
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 10, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-b2"}'
echo "=== serve_restarts, b2 profile (elapsed $SECONDS)"
timeout 200 /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve-b2.json 2>&1 | grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" | cut -c1-220
[ $SECONDS -lt 470 ] && start b4 warm-b4-2
[ $SECONDS -lt 530 ] && start b2 warm-b2-2
echo "elapsed $SECONDS"

# Session 30, call B: Serve's warm starts of the batches-of-2 fp8 profile on the folder call A's cold start left
# (regions read ahead as its record lists them), with the lean venv's bytecode written first, as an image has it:
# 1) vram_placement on one GPU: a deployment's first replica, the scale-up decision to the new replica's first answer,
# the added replica's start beside the busy one; 2) serve_restarts: a first replica and two replacements.
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
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-s30.tar.xz -C /tmp/vortex-cc && echo "regions unpacked: $(ls /tmp/vortex-cc/vortex-regions/*/*.bin | wc -l) files, records $(ls /tmp/vortex-cc/vortex-regions/*/warm-up-*.txt | wc -l)"
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 10, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
echo "=== vram_placement (elapsed $SECONDS)"
timeout 240 /tmp/pv/bin/python3 -m benchmarks.vram_placement --flux "$FLUX" --hold-s 20 --out $OUT/vram_placement.json 2>&1 | grep -v -i "warn\|^$\|^(" | cut -c1-400 > $OUT/vram_placement.txt
echo "rc $?"; grep "cards\|node \|deployed\|load:\|served throughput\|replica \|scaled\|restart\|start\|Error\|failed" $OUT/vram_placement.txt | cut -c1-300
(cd /tmp/ray/session_latest/logs/serve && grep -h "Imported\|Loaded Flux\|Warmed up\|Precompiled regions" replica_vortex_FluxGenerator_*.log | cut -c1-300 > $OUT/vram-replica-lines.txt)
cat $OUT/vram-replica-lines.txt
for i in $(seq 30); do python3 -c "import socket; socket.create_server(('127.0.0.1', 8000)).close()" 2>/dev/null && break; sleep 1; done; echo "port 8000 free after ${i} s"
echo "=== serve_restarts (elapsed $SECONDS)"
timeout 200 /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve-restarts.json 2>&1 | grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" | cut -c1-260
echo "elapsed $SECONDS"

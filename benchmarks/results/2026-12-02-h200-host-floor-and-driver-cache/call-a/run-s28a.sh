# Session 28, call A (prepared in session 27, plus a plain-diffusers start for the baseline). Lean venv (the host's
# venv less scikit-learn, scipy, pandas, pyarrow and peft). 1) plain diffusers' process start from the same folder;
# 2) benchmarks.vram_placement on one GPU, weights from a local folder, session 25's whole compile folder: the
# autoscaler's scale-up decision to the new replica's first answer, and a killed replica's replacement;
# 3) serve_restarts.py (session 27, call B) on the same host: a first replica and two replacements.
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
echo "=== plain diffusers start, lean venv (elapsed $SECONDS)"
timeout 90 /tmp/pv/bin/python3 -m benchmarks.replica_start --model /tmp/ckpt --starts diffusers --out $OUT/diffusers.json 2>&1 | grep -v -i "warn\|^$" | tail -6
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
echo "=== vram_placement, lean venv (elapsed $SECONDS)"
timeout 300 /tmp/pv/bin/python3 -m benchmarks.vram_placement --flux "$FLUX" --hold-s 20 --out $OUT/vram_placement.json 2>&1 | grep -v -i "warn\|^$\|^(" | cut -c1-400 > $OUT/vram_placement.txt
echo "rc $?"; grep "cards\|node \|deployed\|load:\|served throughput\|replica \|scaled\|restart\|start\|Error\|failed" $OUT/vram_placement.txt | cut -c1-300
(cd /tmp/ray/session_latest/logs/serve && grep -h "Imported\|Loaded Flux\|Warmed up\|Precompiled regions" replica_vortex_FluxGenerator_*.log | cut -c1-300 > $OUT/vram-replica-lines.txt)
echo "=== serve_restarts, lean venv (elapsed $SECONDS)"
timeout $((575-SECONDS)) /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve-closure.json 2>&1 | grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Error" | cut -c1-200
echo "elapsed $SECONDS"

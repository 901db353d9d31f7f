# Prepared in session 27 for the next GPU session (one fresh H200, about 7 minutes; copy to .gpu_diag/ and run as
# session 27's calls were). Issue 14, item 6, in the lean venv (the host's venv less scikit-learn, scipy, pandas,
# pyarrow and peft): `benchmarks.vram_placement` on one GPU, weights from a local folder, the whole compile folder of
# session 25. It times the autoscaler's scale-up decision to the new replica's first answer (29-33 s so far, with
# weights built on the GPU and the host's venv) and a killed replica's replacement. Then one more Serve run of
# serve_restarts.py (session 27, call B) on the same host, for the spread between hosts.
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
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
echo "=== vram_placement, lean venv (elapsed $SECONDS)"
timeout 330 /tmp/pv/bin/python3 -m benchmarks.vram_placement --flux "$FLUX" --hold-s 20 --out $OUT/vram_placement.json 2>&1 | grep -v -i "warn\|^$" | grep "cards\|node \|deployed\|load:\|served throughput\|replica \|scaled\|restart\|start\|Error\|failed" | cut -c1-300
echo "=== serve_restarts, lean venv (elapsed $SECONDS)"
timeout $((560-SECONDS)) /tmp/pv/bin/python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve-closure.json 2>&1 | grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Error" | cut -c1-200
echo "elapsed $SECONDS"

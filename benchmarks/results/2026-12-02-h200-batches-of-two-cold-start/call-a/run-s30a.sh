# Session 30, call A (second try; the first exported CC as the folder, and Triton ran it as its compiler): (1) why a deployment's first replica imported for 14.4 s in session 29's calls B and D: the lean
# venv's first process, with no bytecode cached for its paths (PYTHONPYCACHEPREFIX), against its second;
# (2) the cold start of the batches-of-2 fp8 profile with this session's code (a new regions digest; the warm-up's
# record of the files it asked for); (3) two warm starts on the folder it left; (4) the folder packed for later calls.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
export CUDA_CACHE_PATH=/tmp/cuda-jit
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) echo -n "left out $n; ";; *) ln -s "$e" "$PV/$n";; esac; done; echo
/tmp/pv/bin/python3 -c "import deployments.engines.flux" >/dev/null 2>&1  # bytecode, as an image has it (first try: 22.7 s, then 9.4 and 7.2 s)
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
CCDIR=/tmp/vortex-cc
echo "=== cold (elapsed $SECONDS)"
timeout 460 /tmp/pv/bin/python3 -m benchmarks.replica_start --model /tmp/ckpt --starts cold --cache-dir $CCDIR --timeout-s 450 --out $OUT/cold.json 2>&1 | grep -v -i "warn\|^$" | grep -v "^RESULT" | tail -12
ls $CCDIR/vortex-regions/*/ | head -40; wc -l $CCDIR/vortex-regions/*/warm-up-*.txt
(cd $CCDIR && find . -name "*.best_config" > /tmp/best.txt && wc -l < /tmp/best.txt && tar cJf $OUT/regions-s30.tar.xz vortex-regions -T /tmp/best.txt) && ls -la $OUT/regions-s30.tar.xz
echo "=== warm, warm (elapsed $SECONDS)"
timeout $((590 - SECONDS)) /tmp/pv/bin/python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm warm --cache-dir $CCDIR --timeout-s 100 --out $OUT/warm-warm.json 2>&1 | grep -v -i "warn\|^$" | grep -v "^RESULT" | tail -14
for f in cold warm-warm; do python3 -c "import json; [print(r['mode'], {k: r.get(k) for k in ('imports_s', 'load_s', 'warmup_s', 'ready_s', 'capture_s', 'precompiled_regions', 'peak_reserved_gib', 'compiled_on_requests', 'captured_on_requests')}) for r in json.load(open('$OUT/$f.json'))['results']]" | cut -c1-600; done
echo "elapsed $SECONDS"

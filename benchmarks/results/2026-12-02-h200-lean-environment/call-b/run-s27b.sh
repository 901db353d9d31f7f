# Session 27, call B (fresh H200). Bare warm starts from the whole compile folder (session 25's regions and autotuning
# results): HEAD as it is, and with TORCHINDUCTOR_COMPILE_THREADS=1 (inductor then starts no pool of compile-worker
# processes; by default, loading a saved region's Triton kernels starts one, 16 processes here, each importing torch
# while the replica warms up), alternating; one in a venv holding only the product's dependency closure (the host's
# venv less scikit-learn, scipy, pandas, pyarrow and peft, which transformers and diffusers import when present;
# `pip install .` brings none of them); one of a copy whose warm-up captures batch sizes 1, 2 and 4 only (what
# padding a batch of 3 to 4 would leave). Then Serve (a first replica, two replacements) in the closure venv with
# TORCHINDUCTOR_COMPILE_THREADS=1.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) echo -n "left out $n; ";; *) ln -s "$e" "$PV/$n";; esac; done; echo
python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
/tmp/pv/bin/python3 -c "import deployments.engines.flux, ray.serve; import sys; print('closure venv imports ok;', [m for m in ('sklearn', 'scipy', 'pandas', 'peft') if m in sys.modules])" 2>&1 | tail -1
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|slowest\|precompiled regions\|captures\|warm start\|Error\|failed'
run() {  # name, variant dir, python, env assignments...
  echo "=== $1 (elapsed $SECONDS)"
  (for i in $(seq 40); do echo "$(ps -e --no-headers | wc -l) $(pgrep -fc compile_worker)"; sleep 0.5; done) > /tmp/procs-$1.txt &
  P=$!
  (cd $2 && env "${@:4}" PYTHONPATH=$2:$PYTHONPATH timeout 90 $3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 85 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > /tmp/$1.txt
  kill $P 2>/dev/null
  grep "$S" /tmp/$1.txt | cut -c1-300
  echo "most processes on the host during the start: $(cut -d' ' -f1 /tmp/procs-$1.txt | sort -n | tail -1); compile_worker processes: $(cut -d' ' -f2 /tmp/procs-$1.txt | sort -n | tail -1)"
}
H=$PWD; B=$PWD/.gpu_diag/variants/b124; PY=python3; PVY=/tmp/pv/bin/python3
run head1 $H $PY X=1
grep -q "'compiled': 0" /tmp/head1.txt || { echo "the regions do not fit this commit: stop"; exit 1; }
run threads1_1 $H $PY TORCHINDUCTOR_COMPILE_THREADS=1
run head2 $H $PY X=1
run threads1_2 $H $PY TORCHINDUCTOR_COMPILE_THREADS=1
run closure_threads1 $H $PVY TORCHINDUCTOR_COMPILE_THREADS=1
run b124_threads1 $B $PY TORCHINDUCTOR_COMPILE_THREADS=1
python3 - $OUT <<'PY'
import json, sys, pathlib
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"), key=lambda p: p.stat().st_mtime):
    r = json.loads(p.read_text())["results"][0]
    caps = {k: round(v, 2) for k, v in r["capture_s"].items()}
    print(p.stem, "imports %.1f load %.1f warm-up %.1f ready %.1f" % (r["imports_s"], r["load_s"], r["warmup_s"], r["ready_s"]),
          caps, "regions", {k: round(v, 1) for k, v in r["precompiled_regions"].items()}, "peak %.2f" % r["peak_reserved_gib"],
          "requests compiled/captured", r["compiled_on_requests"], r["captured_on_requests"],
          "slowest first request %.3f" % max(r["first_request_s"].values()))
PY
if [ $SECONDS -lt 330 ]; then
  F2='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op\|kernels'
  FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
  echo "=== Serve, closure venv, TORCHINDUCTOR_COMPILE_THREADS=1 (elapsed $SECONDS)"
  env TORCHINDUCTOR_COMPILE_THREADS=1 timeout $((560-SECONDS)) $PVY .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve-closure-threads1.json 2>&1 | grep -v -i "$F2" > /tmp/serve.txt
  echo "rc $? elapsed $SECONDS"
  grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" /tmp/serve.txt | cut -c1-300
fi
echo "elapsed $SECONDS"

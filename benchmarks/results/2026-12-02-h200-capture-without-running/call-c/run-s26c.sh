# Session 26, call C (fresh H200): HEAD (warm-up captures each runner's later shapes without running them while every
# precompiled region was loaded). 1. the runner's GPU tests; 2. a warm start from the whole folder, its first
# requests' images checksummed against call A's HEAD (captured after eager calls); 3. a start from the regions alone
# (kernels autotune: the captures without eager calls fail and fall back); 4. Serve's first replica and two replacements.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_graphs_gpu.py 2>&1 | tail -4 | tee $OUT/pytest.txt
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc /tmp/vortex-rg && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && tar xJf .gpu_diag/regions.tar.xz -C /tmp/vortex-rg && echo "unpacked"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op\|kernels'
S='^vortex\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start\|Error\|failed'
V=$PWD/.gpu_diag/variants/checksums
run() {  # name, cache folder
  echo "=== $1 (elapsed $SECONDS)"
  (cd $V && PYTHONPATH=$V:$PYTHONPATH timeout 120 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir $2 --timeout-s 115 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > /tmp/$1.txt
  grep "$S" /tmp/$1.txt | cut -c1-300
}
run warm /tmp/vortex-cc
run regions-only /tmp/vortex-rg
grep -c "A capture without its eager call failed" /tmp/regions-only.txt
run warm2 /tmp/vortex-cc
python3 - $OUT .gpu_diag/s26a-head.json <<'PY'
import json, sys, pathlib
ref = json.loads(pathlib.Path(sys.argv[2]).read_text())["results"][0]["checksums"]
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(p.read_text())["results"][0]
    same = sum(r["checksums"][k] == v for k, v in ref.items())
    close = sum(abs(r["checksums"][k][0] - v[0]) < 1e-3 * abs(v[0]) for k, v in ref.items())
    caps = {k: round(v, 2) for k, v in r["capture_s"].items()}
    print(p.stem, "imports %.1f load %.1f warm-up %.1f ready %.1f" % (r["imports_s"], r["load_s"], r["warmup_s"], r["ready_s"]),
          caps, "regions", r["precompiled_regions"], "peak %.2f" % r["peak_reserved_gib"], "autotuning",
          r["dynamo_s"].get("CachingAutotuner.benchmark_all_configs", 0), "requests compiled/captured",
          r["compiled_on_requests"], r["captured_on_requests"], "checksums equal to call A's HEAD:", same, "close:", close, "of", len(ref))
PY
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
echo "=== serve (elapsed $SECONDS)"
timeout 280 python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve.json --settle-s 20 2>&1 | grep -v -i "$F" > /tmp/serve.txt
echo "rc $? elapsed $SECONDS"
grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" /tmp/serve.txt | cut -c1-300
echo "elapsed $SECONDS"

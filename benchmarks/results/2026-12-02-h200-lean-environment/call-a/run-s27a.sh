# Next GPU session, call A (a fresh H200; about 4 minutes). 1. Where the engine's imports spend 8.6-11 s on this host
# (4.6 s on the 2-core CPU machine): `python -X importtime`, after one import that writes the bytecode. 2. The
# recovery variant: its runner GPU test, then a start from the regions alone on this fresh host (kernels autotune, so
# the captures without running fail and must fall back), its images checksummed.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux" 2>/dev/null
for i in 1 2; do python3 -X importtime -c "import deployments.engines.flux" 2> $OUT/importtime$i.txt; done
sort -t'|' -k2 -n $OUT/importtime2.txt | tail -25 | cut -c1-160
V=$PWD/.gpu_diag/variants/recover
(cd $V && timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/test_cuda_graphs_gpu.py 2>&1 | tail -15 | tee $OUT/pytest.txt)
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-rg && tar xJf .gpu_diag/regions.tar.xz -C /tmp/vortex-rg && echo "unpacked"
(cd $V && PYTHONPATH=$V:$PYTHONPATH timeout 150 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-rg --timeout-s 145 --out $OUT/regions-only.json 2>&1) > /tmp/regions-only.txt
grep '^vortex\|slowest\|precompiled regions\|^start \|captures\|warm start\|Error\|failed' /tmp/regions-only.txt | cut -c1-300
grep -c "A capture without its eager call failed" /tmp/regions-only.txt
python3 - $OUT/regions-only.json .gpu_diag/s26a-head.json <<'PY'
import json, sys, pathlib
r = json.loads(pathlib.Path(sys.argv[1]).read_text())["results"][0]
ref = json.loads(pathlib.Path(sys.argv[2]).read_text())["results"][0]["checksums"]
print("checksums equal to session 26's HEAD:", sum(r["checksums"][k] == v for k, v in ref.items()), "of", len(ref),
      "(autotuning may choose other configs: last-bit differences are possible)")
PY
echo "elapsed $SECONDS"

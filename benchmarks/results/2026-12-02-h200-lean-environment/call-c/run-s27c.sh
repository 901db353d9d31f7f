# Session 27, call C (fresh H200): which of call B's two changes made Serve's warm start 17.7-18.7 s from scheduling.
# Serve (a first replica, two replacements), the whole compile folder: in the closure venv (the host's venv less
# scikit-learn, scipy, pandas, pyarrow and peft) with inductor's default compile threads; then in the host's venv with
# TORCHINDUCTOR_COMPILE_THREADS=1. First, -X importtime of the engine in the closure venv.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --without-pip /tmp/pv
PV=$(/tmp/pv/bin/python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for e in "$SP"/*; do n=$(basename "$e"); case "${n,,}" in sklearn|scikit_learn*|scipy|scipy[-.]*|pandas|pandas[-.]*|pyarrow|pyarrow[-.]*|peft|peft[-.]*) echo -n "left out $n; ";; *) ln -s "$e" "$PV/$n";; esac; done; echo
echo "distributions in the host's venv: $(ls -d $SP/*.dist-info | wc -l); in the closure venv: $(ls -d $PV/*.dist-info | wc -l)"
python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
/tmp/pv/bin/python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
for i in 1 2; do /tmp/pv/bin/python3 -X importtime -c "import deployments.engines.flux" 2> /tmp/importtime-closure.txt; done
gzip -c /tmp/importtime-closure.txt > $OUT/importtime-closure.txt.gz
grep " deployments.engines.flux$" /tmp/importtime-closure.txt
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
F2='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op\|kernels'
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
serve_run() {  # name, python, env assignments...
  echo "=== $1 (elapsed $SECONDS)"
  env "${@:3}" timeout 200 $2 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/$1.json 2>&1 | grep -v -i "$F2" > /tmp/$1.txt
  echo "rc $? elapsed $SECONDS"
  grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" /tmp/$1.txt | cut -c1-200
}
serve_run serve-closure /tmp/pv/bin/python3 X=1
serve_run serve-host-threads1 python3 TORCHINDUCTOR_COMPILE_THREADS=1
echo "elapsed $SECONDS"

set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
timeout 250 python3 benchmarks/results/2026-12-01-h200-precompiled-warm-start/run9-first-request-one-shape/first_request.py regional 2>&1 | grep -v -i "warn\|^$" | tee $OUT/first_request.txt | grep -v "^ \|^-\|^Name\|^Self" 
echo "elapsed $SECONDS"

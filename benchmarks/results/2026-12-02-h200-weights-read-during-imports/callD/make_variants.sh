#!/bin/bash
# Copies of HEAD for warm-start A/Bs, each with one change; precompiled.py stays byte-identical (its source is in the
# regions' digest), so every copy finds the regions a cold start of HEAD saved.
set -e
cd "$(git rev-parse --show-toplevel)"
V=.gpu_diag/variants
rm -rf $V && mkdir -p $V
for name in nopreload restore; do
  mkdir $V/$name && git archive HEAD deployments benchmarks/*.py configs pyproject.toml | tar -x -C $V/$name
done
# the switch interval back to 5 ms at the load's end (as d01cd9c), not at the warm-up's
sed -i '/starting.enter_context(gil_handoff())/d' $V/restore/deployments/engines/flux.py
# the transformer blocks and T5 copied by the load after the imports, as before the preload (replica_start is what the A/B runs)
sed -i 's/early_weights = start_reading(config) if mode != "diffusers" else None/early_weights = None/' $V/nopreload/benchmarks/replica_start.py
for name in nopreload restore; do
  echo "== $name"; diff -r deployments $V/$name/deployments | grep '^[<>]' || true
  diff benchmarks/replica_start.py $V/$name/benchmarks/replica_start.py | grep '^[<>]' || true
  cmp deployments/engines/precompiled.py $V/$name/deployments/engines/precompiled.py
done

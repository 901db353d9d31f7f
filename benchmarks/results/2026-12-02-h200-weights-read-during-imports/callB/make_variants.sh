#!/bin/bash
# Copies of HEAD for warm-start A/Bs, each with one change; precompiled.py stays byte-identical (its source is in the
# regions' digest), so every copy finds the regions a cold start of HEAD saved.
set -e
cd "$(git rev-parse --show-toplevel)"
V=.gpu_diag/variants
rm -rf $V && mkdir -p $V
for name in nopreload preload5ms switch noprefetch; do
  mkdir $V/$name && git archive HEAD deployments benchmarks/*.py configs pyproject.toml | tar -x -C $V/$name
done
# regions loaded on the main thread when first called (no prefetch thread)
sed -i 's/with regions.prefetching() if regions is not None else contextlib.nullcontext():/with contextlib.nullcontext():/' $V/noprefetch/deployments/engines/flux.py
# the early weights read at Python's default switch interval (5 ms) instead of 0.2 ms
sed -i 's/^SWITCH_INTERVAL_S = 0.0002$/SWITCH_INTERVAL_S = 0.005/' $V/preload5ms/deployments/engines/preload.py
# after the load, the switch interval stays at 0.5 ms (not 5): the region prefetch thread yields the
# GIL to the main thread's load and warm-up sooner
sed -i 's/        sys.setswitchinterval(self._switch_interval)/        sys.setswitchinterval(0.0005)/' $V/switch/deployments/engines/preload.py
# the transformer blocks and T5 copied by the load after the imports, as before the preload (replica_start is what the A/B runs)
sed -i 's/early_weights = start_reading(config) if mode != "diffusers" else None/early_weights = None/' $V/nopreload/benchmarks/replica_start.py
for name in nopreload preload5ms switch noprefetch; do
  echo "== $name"; diff -r deployments $V/$name/deployments | grep '^[<>]' || true
  diff benchmarks/replica_start.py $V/$name/benchmarks/replica_start.py | grep '^[<>]' || true
  cmp deployments/engines/precompiled.py $V/$name/deployments/engines/precompiled.py
done

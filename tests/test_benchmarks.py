"""Every benchmark still runs: its CPU rehearsal (tiny models, logical GPUs) with a user's arguments, so a
config or API change that breaks one fails here. The VRAM placement rehearsal, which starts a cluster of its
own, runs as a user types it; the others run in the test's own process, which has the model stack imported
already (10-20 s per process here), the served-load rehearsal on the session's Ray cluster. The VRAM placement
rehearsal is also the test of VRAM-aware placement and scaling on a two-node cluster: its assertions are the
behaviour a user relies on."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def rehearse(tmp_path: Path, benchmark: str, *options: str, timeout_s: float = 300) -> dict:
    """`python -m benchmarks.BENCHMARK --rehearse ...` from the repository root; returns the JSON it wrote."""
    out = tmp_path / f"{benchmark}.json"
    command = [sys.executable, "-m", f"benchmarks.{benchmark}", "--rehearse", *options, "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "CPU rehearsal" in result.stdout  # the table names the card
    return json.loads(out.read_text())


def rehearse_in_process(capsys, tmp_path: Path, benchmark: str, *options: str) -> dict:
    """`benchmarks.BENCHMARK.main` with a user's arguments, in this process; returns the JSON it wrote."""
    out = tmp_path / f"{benchmark}.json"
    importlib.import_module(f"benchmarks.{benchmark}").main(["--rehearse", *options, "--out", str(out)])
    assert "CPU rehearsal" in capsys.readouterr().out  # the table names the card
    return json.loads(out.read_text())


def test_flux_speed_rehearsal_measures_each_mode_against_diffusers(capsys, tmp_path):
    results = rehearse_in_process(capsys, tmp_path, "flux_speed", "--iterations", "2")["results"]
    assert [row["mode"] for row in results] == ["diffusers-bf16", "vortex-bf16", "vortex-fp8"]
    for row in results:
        assert "error" not in row, row
        assert row["p50"] > 0 and set(row["images_per_s"]) == {"1", "2"}
        assert row["mean_abs_difference_from_baseline"] < 0.05  # every mode computes the same model
    assert list(results[1]["progression"]) == ["eager: our engine without speed options", "+ fused QKV"]
    # The memory of each phase of a replica's life (GPU runs read the 12 GB mode's budget from it).
    assert list(results[2]["peak_allocated_gib_by_phase"]) == ["load", "warm-up 128x128", "new prompt 128x128"]


def test_verifier_speed_rehearsal(capsys, tmp_path):
    results = rehearse_in_process(capsys, tmp_path, "verifier_speed", "--iterations", "2")["results"]
    assert set(results) == {"0"} and all(ms > 0 for ms in results["0"]["p50_ms"].values())


def test_replica_start_rehearsal_warms_every_shape_so_requests_compile_nothing(capsys, tmp_path):
    results = rehearse_in_process(capsys, tmp_path, "replica_start")["results"]
    assert [row["mode"] for row in results] == ["diffusers", "cold", "warm"]
    for row in results[1:]:
        # 2 sizes x the profile's batches of 1-2 images; first requests for 1-4 images (limits.max_images)
        assert row["shapes"] == 4 and len(row["first_request_s"]) == 8
        assert row["compiled_on_requests"] == 0 and row["captured_on_requests"] == 0
        # The startup heap is collected once and frozen, as in a replica: the freeze's collection is reported.
        assert set(row["full_collections_s"]) == {"load and warm-up", "freeze", "first requests"}
        assert row["full_collections_s"]["freeze"] > 0


def test_replica_start_rehearsal_reads_a_checkpoint_from_local_disk(capsys, tmp_path):
    """`--model DIR`: both the replica and plain diffusers read the weights from a diffusers folder, as a replica with
    its checkpoint on local disk does (the GPU run uses the full-size random one `random_models` saves)."""
    from deployments.engines.random_models import tiny_flux_pipeline

    folder = tmp_path / "checkpoint"
    tiny_flux_pipeline(seed=3).save_pretrained(folder, safe_serialization=True)
    options = ["--model", str(folder), "--starts", "diffusers", "warm"]
    result = rehearse_in_process(capsys, tmp_path, "replica_start", *options)
    assert result["flux"]["model"] == str(folder) and result["flux"]["random_weights"] is None
    diffusers, warm = result["results"]
    assert diffusers["transformer_parameters"] > 0 and diffusers["load_s"] > 0
    assert warm["load_s"] > 0 and warm["compiled_on_requests"] == 0 and warm["captured_on_requests"] == 0


def test_sizes_rehearsal_compares_each_size_with_diffusers_and_its_floor(capsys, tmp_path):
    result = rehearse_in_process(capsys, tmp_path, "sizes", "--iterations", "2")
    rows = result["rows"]
    assert [row["size"] for row in rows] == ["256x256", "512x256"]
    for row in rows:
        assert row["diffusers_p50_s"] > 0 and row["p50_with_previews_s"] > 0
        assert 0 < row["floor_s"] < row["p50_s"]  # no call beats the work at the measured matmul rate
        assert row["work"]["transformer_linear_tflop"] > 0 and row["work"]["rest_tflop"] > 0
        assert row["step_kernels_ms"]["matmul"] > 0 and row["step_kernels_ms"]["attention"] > 0  # the step profile
        encodings = row["encodings"]
        assert set(encodings) == {"png", "jpeg 100", "jpeg 75", "webp 100", "webp 75"}
        assert encodings["jpeg 75"]["bytes"] < encodings["jpeg 100"]["bytes"]
    assert rows[1]["work"]["transformer_linear_tflop"] > rows[0]["work"]["transformer_linear_tflop"]  # more pixels


def test_served_load_rehearsal_serves_every_request(capsys, tmp_path, shared_ray):
    """On the session's Ray cluster: a cluster start and the model stack's imports cost a process 15 s here."""
    options = ("--concurrency", "1", "2", "--requests-per-level", "4", "--port", "8123")
    result = rehearse_in_process(
        capsys, tmp_path, "served_load", *options, "--size", "256x256", "--output-format", "jpeg"
    )
    assert [(level["concurrency"], level["ok"]) for level in result["levels"]] == [(1, 4), (2, 4)]
    assert result["request"]["size"] == "256x256" and all(level["mean_response_kib"] for level in result["levels"])
    assert result["ratios"]["served_p50_c1"] > 0


def test_vram_placement_rehearsal_scales_within_vram_and_back_down(tmp_path):
    """Two nodes with one logical GPU and 24 `vram_gb` each; a generator asks for 0.45 GPU and 13 GiB."""
    # The load stays on for a second once two generators run: the guard holds the third back from the first decision.
    result = rehearse(tmp_path, "vram_placement", "2", "--hold-s", "1", timeout_s=420)
    load = result["load"]
    assert load["statuses"] and set(load["statuses"]) == {200}
    states = load["replica_states"]
    assert max(seen.count("RUNNING") for seen in states) == 2  # scaled up under load
    assert max(len(seen) for seen in states) <= 2  # never a third: no replica left pending for VRAM
    running = [replica for replica in result["placed"] if replica["state"] == "RUNNING"]
    assert len({replica["node"] for replica in running}) == 2  # 0.45 GPU each would share a node; VRAM cannot
    assert any(
        "VRAM guard: FluxGenerator wants" in line and "no node has them free" in line for line in result["controller"]
    )
    # Each generator's start as Serve timed it: the first replica's, the one the autoscaler added, and the one
    # that replaced the killed replica.
    starts = result["generator_starts"]
    assert len({start["replica"] for start in starts}) >= 3
    assert all(start["scheduled_to_ready_s"] >= start["constructor_s"] > 0 for start in starts)
    restart = result["restart"]
    assert restart["replacement"] != restart["killed"]
    assert restart["replacement"] in {start["replica"] for start in starts}

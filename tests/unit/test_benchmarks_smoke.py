"""Smoke test of the hand-run benchmarks: each script runs with ``--quick`` and prints its ratios.

Timings are never asserted (the numbers depend on the machine and its load); only that every
script still runs against the current API and reports its headline ``RATIO`` lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

EXPECTED = {
    "bench_extract.py": ["extract_vs_fwd_bwd", "batched_speedup", "max_abs_diff_batched_vs_per_image"],
    "bench_inject.py": ["per_iter_speedup_double_backprop", "per_iter_speedup_jacobian", "best_speedup"],
    "bench_memory.py": ["peak_rss_large_vs_small", "time_large_vs_small", "cpu_time_per_image_large_vs_small"],
    "bench_inject_scaling.py": ["time_per_iter_largest_vs_smallest_U", "time_per_iter_largest_vs_smallest_P",
                                "dense_bf16_bytes_ratio", "dense_bf16_relative_dW"],
    "bench_cache.py": ["read_speedup_cache_vs_jpeg", "loader_share_cache"],
    "bench_pipeline.py": ["pipeline_time_cache_vs_files", "stages_slower_with_cache"],
}
RATIO = re.compile(r"^RATIO (\S+)(?: \([^)]*\))? = [-+0-9.e]+x?(?: \(target .*\))?$", re.M)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_quick(script: str, tmp_path: Path) -> None:
    out_json = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--device", "cpu",
                           "--json", str(out_json)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = set(RATIO.findall(proc.stdout))
    missing = [name for name in EXPECTED[script] if name not in printed]
    assert not missing, f"{script}: no RATIO line for {missing}:\n{proc.stdout[-3000:]}"
    assert "| metric | target | measured |" in proc.stdout
    values = json.loads(out_json.read_text())
    assert all(name in values for name in EXPECTED[script])


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_torch_only(tmp_path: Path) -> None:
    """``gpu_check.sh --device cpu --tiny``: every number printed, and nothing but torch/torchvision
    (and this repo's src/) needed: no Prefect, MLflow, DVC, PyYAML, SciPy or pandas is imported."""
    out_json = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu", "--tiny", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=600, env={**_env(), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "# modules beyond torch/torchvision loaded: none" in proc.stdout
    values = json.loads(out_json.read_text())
    for arch in ("vgg16", "resnet101"):
        for key in ("finetune_{}_images_per_s", "finetune_{}_ratio", "extract_{}_images_per_s",
                    "extract_{}_vs_forward_backward", "inject_{}_iterations_per_s"):
            assert values[key.format(arch)] > 0, key.format(arch)
    assert "| check | value |" in proc.stdout


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

"""The generation benchmarks run end to end in their smoke mode (tiny random models on the CPU) and write
the figures they promise: benchmarks/generate_ceiling.py and benchmarks/gpu_generate.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: int = 600) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    env.pop("PREFECT_API_URL", None)  # each benchmark starts its own temporary server
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--smoke", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def positive(*values: float) -> bool:
    return all(isinstance(v, int | float) and v > 0 for v in values)


@pytest.mark.slow
def test_generate_ceiling_smoke(tmp_path: Path) -> None:
    out = tmp_path / "ceiling.json"
    run_benchmark("generate_ceiling.py", "--out", str(out), "--work", str(tmp_path / "work"))
    doc = json.loads(out.read_text())
    assert {"machine", "date", "torch", "command", "runs", "memory"} <= set(doc)
    assert doc["smoke"] is True and doc["machine"]
    assert [r["count"] for r in doc["runs"]] == [20, 40]
    for row in doc["runs"]:
        assert row["command"]["exit_code"] == 0
        assert row["accepted"] == row["count"]
        assert 0 < row["acceptance_rate"] <= 1
        assert positive(
            row["ceiling"]["images_per_s"],
            row["command"]["wall_seconds"],
            row["command"]["peak_rss_mib"],
            row["accepted_per_s"],
            row["ratio"],
        )
        share = row["share_of_wall"]
        assert set(share) == {"load", "sample", "score", "encode", "write", "rest"}
        assert share["sample"] > 0 and 0 < share["rest"] < 1
        phases = row["phase_seconds"]
        assert {"startup", "prefect_start", "publish", "teardown"} <= set(phases)
        assert sum(phases.values()) == pytest.approx(row["command"]["wall_seconds"], rel=0.02)
        assert positive(phases["startup"], phases["prefect_start"], phases["publish"])
        assert row["metrics"]["task_seconds"]["sample"] > 0  # timed_cli kept the task timings
        assert isinstance(row["targets"]["parts_over_10_percent"], list)
    assert positive(doc["memory"]["peak_rss_ratio"])


@pytest.mark.slow
def test_gpu_generate_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    run_benchmark(
        "gpu_generate.py", "--out", str(out), "--work", str(tmp_path / "work"), "--peak-tflops", "1.0"
    )
    doc = json.loads(out.read_text())
    card = doc["card"]
    assert card and doc["smoke"] is True
    parts = doc["parts"]
    assert {"data", "judges", "train", "ceiling", "prefect_start", "generate", "evaluate"} <= set(parts)
    assert all(p["card"] == card and p["seconds"] > 0 for p in parts.values())
    gen = doc["generate"]
    assert gen["card"] == card and gen["accepted"] == 200
    assert positive(gen["accepted_per_s"], gen["wall_seconds"], gen["ratio_to_ceiling"])
    assert gen["share_of_wall"]["sample"] > 0
    assert positive(doc["ceiling"]["images_per_s"]) and doc["ceiling"]["card"] == card
    assert doc["train"]["steps"] >= 3 and doc["train"]["card"] == card
    floor = doc["floor"]
    assert floor["card"] == card and floor["peak_bf16_tflops"] == 1.0
    assert floor["evaluations_per_digit"] == pytest.approx(4 * 2 / gen["acceptance_rate"])
    assert positive(floor["flops_per_evaluation"], floor["seconds"], floor["digits_per_s"])
    assert doc["evaluate"]["card"] == card and 0 <= doc["evaluate"]["conditional_accuracy_published"] <= 1

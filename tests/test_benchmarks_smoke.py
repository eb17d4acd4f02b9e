"""The benchmarks run end to end in their smoke mode (tiny random models on the CPU) and write the figures
they promise: benchmarks/generate_ceiling.py, generate_student.py, gpu_generate.py, data_scaling.py,
few_real.py, distill_frontier.py and task_thread_speed.py; compare_scaling.py on hand-made runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

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
        c = row["ceiling"]  # drawn before and after the command; ratios divide by the mean
        assert c["thread"] == "worker"  # where the flow's tasks sample
        assert c["images_per_s"] == pytest.approx(
            (c["before"]["images_per_s"] + c["after"]["images_per_s"]) / 2
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


def interval_ok(row: dict) -> bool:
    lo, hi = row["interval"]
    return lo is not None and hi is not None and lo <= row["mean"] <= hi


@pytest.mark.slow
def test_data_scaling_smoke(tmp_path: Path) -> None:
    out, plot = tmp_path / "scaling.json", tmp_path / "scaling.png"
    work = str(tmp_path / "work")
    run_benchmark("data_scaling.py", "--out", str(out), "--plot", str(plot), "--work", work, timeout=300)
    doc = json.loads(out.read_text())
    assert {"machine", "cores", "date", "command", "settings", "seconds"} <= set(doc)
    assert doc["smoke"] is True and doc["machine"] and doc["cores"] >= 1 and positive(doc["seconds"])
    assert doc["settings"]["pool_sizes"] == {"real": 480, "synthetic": 400}
    assert [r["size"] for r in doc["real"]] == [r["size"] for r in doc["synthetic"]] == [20, 40, 80]
    assert doc["skipped"] == [{"pool": "synthetic", "size": 1000, "why": "the pool holds 400 digits"}]
    for row in doc["real"] + doc["synthetic"]:
        assert row["seeds"] == [0, 1] and len(row["per_seed"]) == 2
        assert all(0.0 <= a <= 1.0 for a in row["per_seed"]) and interval_ok(row)
        assert all(1 <= e <= 2 for e in row["epochs"]) and positive(*row["seconds"])
    real = {r["size"]: r["mean"] for r in doc["real"]}
    synthetic = {r["size"]: r["mean"] for r in doc["synthetic"]}
    assert [m["real_size"] for m in doc["synthetic_to_match_real"]] == [20, 40, 80]
    for m in doc["synthetic_to_match_real"]:
        assert m["real_mean"] == real[m["real_size"]]
        if m["synthetic"] is None:
            assert m["why"] and m["per_real"] is None
        else:
            lo, hi = m["between"]
            assert lo <= m["synthetic"] <= hi and m["per_real"] == pytest.approx(
                m["synthetic"] / m["real_size"]
            )
    assert [g["size"] for g in doc["gap_points"]] == [20, 40]  # in both lists, up to the smoke's --gap-max
    for gap in doc["gap_points"]:
        assert gap["mean"] == pytest.approx(100 * (real[gap["size"]] - synthetic[gap["size"]]))
        assert len(gap["per_seed"]) == 2 and interval_ok(gap)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["settings"]["test"] == "prepared" and doc["settings"]["test_size"] == 60
    # the work ledger keys a fit by what decides it: a real fit never by the synthetic versions (another
    # pool reuses it), every fit by the torch threads it ran on
    ledger = json.loads((tmp_path / "work" / "fits.json").read_text())
    assert len(ledger) == 2 * (3 + 3)
    for key, row in ledger.items():
        assert row["settings"]["threads"] == doc["threads"]
        assert ("versions" in row["settings"]) == key.startswith("synthetic/"), key


@pytest.mark.slow
def test_data_scaling_smoke_on_mnists_own_test_digits(tmp_path: Path, npm_cache: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["cache_dir"] = str(npm_cache.parent)  # the session's npm tarballs, not the repository's
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "scaling.json"
    run_benchmark(
        "data_scaling.py",
        *("--test", "mnist-official", "--params", str(tmp_path / "params.yaml"), "--out", str(out)),
        *("--plot", str(tmp_path / "scaling.png"), "--work", str(tmp_path / "work")),
        timeout=300,
    )
    doc = json.loads(out.read_text())
    assert doc["settings"]["test"] == "mnist-official" and doc["settings"]["test_size"] == 10_000
    assert [r["size"] for r in doc["real"]] == [20, 40, 80] and all(
        len(r["per_seed"]) == 2 for r in doc["real"]
    )


def test_data_scaling_refuses_mnists_test_digits_when_the_prepared_splits_hold_them(tmp_path: Path) -> None:
    from diffusion.config import DataConfig
    from diffusion.data.prepare import mix, write_splits
    from diffusion.data.sources import RawDigits
    from tests.judges_fixtures import render_digits

    images, labels = render_digits(
        100, seed=0
    )  # ids as npm-mnist-full and torchvision give MNIST's test digits
    raw = RawDigits(images, labels, [f"mnist-test-{i:05d}" for i in range(100)], "mnist")
    write_splits(mix([("handwritten-mnist", raw)]), DataConfig(), tmp_path / "prepared")
    proc = subprocess.run(
        [sys.executable, "benchmarks/data_scaling.py", "--prepared", str(tmp_path / "prepared")]
        + [
            "--versions",
            str(tmp_path / "none"),
            "--test",
            "mnist-official",
            "--out",
            str(tmp_path / "s.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "train.parquet: holds MNIST test digits (e.g. mnist-test-" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.json").exists()


def test_data_scaling_can_test_on_mnists_own_test_digits(npm_cache: Path) -> None:
    from benchmarks.data_scaling import official_test

    test = official_test(npm_cache.parent)  # params' data.cache_dir: the tarball goes to <it>/npm
    assert test.images.shape == (10_000, 1, 28, 28) and test.images.dtype == torch.float32
    assert -1.0 <= float(test.images.min()) < float(test.images.max()) <= 1.0
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow
def test_few_real_smoke_and_its_rerun_reuses_every_part(tmp_path: Path) -> None:
    work, plot = tmp_path / "work", tmp_path / "few.png"
    docs = []
    for name in ("first.json", "again.json"):
        out = tmp_path / name
        run_benchmark("few_real.py", "--out", str(out), "--plot", str(plot), "--work", str(work), timeout=300)
        docs.append(json.loads(out.read_text()))
    first, again = docs
    assert {"machine", "cores", "date", "command", "settings", "parts"} <= set(first)
    assert first["smoke"] is True and first["machine"] and first["cores"] >= 1
    parts = {"data", "classifier", "clip", "diffusion", "generate"}
    parts |= {"cas_real_small", "cas_real_plus_synthetic", "cas_synthetic"}
    assert set(first["parts"]) == parts
    assert all(p["seconds"] >= 0 and not p["reused"] for p in first["parts"].values())
    assert positive(first["parts"]["generate"]["seconds"], first["parts"]["diffusion"]["seconds"])
    assert first["data"]["per_class"] == [5] * 10
    assert first["diffusion"]["steps"] == 3 and 0 <= first["classifier"]["test_accuracy"] <= 1
    assert first["generate"]["accepted"] == 100 and Path(first["generate"]["version"]).is_dir()
    sizes = {"real_small": 50, "real_plus_synthetic": 150, "synthetic": 100}
    assert {a: r["train_size"] for a, r in first["arms"].items()} == sizes
    for row in first["arms"].values():
        assert row["seeds"] == [0, 1] and all(0.0 <= a <= 1.0 for a in row["per_seed"]) and interval_ok(row)
    for arm, gain in first["gain_points"].items():
        paired = [
            100 * (b - a)
            for a, b in zip(
                first["arms"]["real_small"]["per_seed"], first["arms"][arm]["per_seed"], strict=True
            )
        ]
        assert gain["per_seed"] == pytest.approx(paired) and interval_ok(gain)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the rerun trains nothing, generates nothing and fits nothing: every part is reused, every figure kept
    assert set(again["parts"]) == parts and all(p["reused"] for p in again["parts"].values())
    assert again["arms"] == first["arms"] and again["generate"] == first["generate"]


@pytest.mark.slow
def test_generate_student_smoke(tmp_path: Path) -> None:
    out = tmp_path / "student.json"
    run_benchmark("generate_student.py", "--out", str(out), "--work", str(tmp_path / "work"))
    doc = json.loads(out.read_text())
    assert {"machine", "date", "command", "setting", "runs"} <= set(doc) and doc["smoke"] is True
    assert doc["setting"]["student_sampler"] == {"name": "distilled", "steps": 2, "guidance": 1.0, "eta": 0.0}
    (row,) = doc["runs"]
    assert row["count"] == 20 and positive(row["speedup"], row["ceiling_speedup"])
    for side in ("teacher", "student"):
        assert row[side]["command"]["exit_code"] == 0 and row[side]["accepted"] == 20
    teacher, student = row["teacher"]["command"]["argv"], row["student"]["command"]["argv"]
    assert "--student" not in teacher and student[student.index("--student") + 1].endswith("student")
    assert teacher[teacher.index("--model") + 1] == student[student.index("--model") + 1]  # the teacher
    assert row["student"]["ceiling"]["sampler"]["name"] == "distilled"
    assert row["teacher"]["ceiling"]["sampler"]["name"] == "dpm-solver++"


@pytest.mark.slow
def test_distill_frontier_smoke(tmp_path: Path) -> None:
    out = tmp_path / "frontier.json"
    run_benchmark("distill_frontier.py", "--out", str(out))
    doc = json.loads(out.read_text())
    assert {"machine", "date", "command", "rows"} <= set(doc) and doc["smoke"] is True
    assert [
        (r["sampler"]["name"], r["sampler"]["steps"], r["evaluations_per_digit"]) for r in doc["rows"]
    ] == [
        ("dpm-solver++", 2, 4),
        ("distilled", 2, 2),
        ("distilled", 1, 1),
    ]
    for row in doc["rows"]:
        assert 0.0 <= row["evaluator_accuracy"] <= 1.0 and positive(row["digits_per_s"])
        assert "cas_ratio" in row["cas"]["means"]
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_distill_frontier_refuses_a_student_as_generate_does(tmp_path: Path) -> None:
    """A step count the student was not distilled for (or a guidance outside its range): one line, exit 2."""
    for flags, says in ((["--student-steps", "3"], "(3): the student in"), (["--guidance", "9"], "outside")):
        proc = subprocess.run(
            [
                sys.executable,
                "benchmarks/distill_frontier.py",
                "--smoke",
                "--out",
                str(tmp_path / "f.json"),
                *flags,
            ],
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "f.json").exists()


@pytest.mark.slow
def test_task_thread_speed_smoke(tmp_path: Path) -> None:
    out = tmp_path / "task-thread.json"
    run_benchmark("task_thread_speed.py", "--out", str(out))
    doc = json.loads(out.read_text())
    assert {"machine", "date", "command", "setting", "rounds"} <= set(doc) and doc["smoke"] is True
    assert len(doc["rounds"]) == 2 and all(set(r) == {"main", "thread", "prefect"} for r in doc["rounds"])
    assert all(positive(*r.values()) for r in doc["rounds"])
    assert doc["relative_to_main"]["main"] == 1.0 and positive(*doc["relative_to_main"].values())
    assert doc["orders"] == [["main", "thread", "prefect"], ["main", "prefect", "thread"]]
    ratio = doc["per_round_ratio_to_main"]["prefect"]
    assert set(doc["per_round_ratio_to_main"]) == {"thread", "prefect"}
    assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]


def _scaling_doc(real: list[float], synthetic: list[float]) -> dict:
    """A data_scaling.py document of one size (100) and three seeds."""

    def row(accuracies: list[float]) -> dict:
        return {"size": 100, "seeds": [0, 1, 2], "per_seed": accuracies, "mean": sum(accuracies) / 3}

    gap = 100 * (sum(real) - sum(synthetic)) / 3
    return {"real": [row(real)], "synthetic": [row(synthetic)], "gap_points": [{"size": 100, "mean": gap}]}


def test_compare_scaling_pairs_synthetic_by_seed_and_refuses_other_real_lines(tmp_path: Path) -> None:
    before, after, other = tmp_path / "before.json", tmp_path / "after.json", tmp_path / "other.json"
    before.write_text(json.dumps(_scaling_doc([0.90, 0.92, 0.94], [0.88, 0.90, 0.91])))
    after.write_text(json.dumps(_scaling_doc([0.90, 0.92, 0.94], [0.89, 0.92, 0.91])))  # +1, +2, 0 points
    other.write_text(json.dumps(_scaling_doc([0.90, 0.92, 0.95], [0.89, 0.92, 0.91])))
    out = tmp_path / "compare.json"
    script = [sys.executable, "benchmarks/compare_scaling.py"]
    proc = subprocess.run(
        [*script, str(before), str(after), "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["sizes"]
    assert row["size"] == 100 and row["narrower_by"]["per_seed"] == pytest.approx([1.0, 2.0, 0.0])
    assert row["narrower_by"]["mean"] == pytest.approx(1.0)
    assert row["gap_before"] - row["gap_after"] == pytest.approx(1.0)  # the same, when the real lines agree
    lo, hi = row["narrower_by"]["interval"]
    assert lo < 0 < 1.0 < hi  # three seeds cannot tell +1 point from noise here
    assert "narrower by +1.00" in proc.stdout
    refused = subprocess.run([*script, str(before), str(other)], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "real lines differ" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"real": [{"size": 100}], "synthetic": []}))  # a row without its seeds
    refused = subprocess.run([*script, str(before), str(broken)], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "broken.json: not a data_scaling.py document" in refused.stderr
    assert "Traceback" not in refused.stderr
    missing = subprocess.run(
        [*script, str(before), str(tmp_path / "no.json")], cwd=REPO, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no.json" in missing.stderr and "Traceback" not in missing.stderr


def test_on_worker_thread_runs_off_the_calling_thread_and_raises_its_error_here() -> None:
    import threading

    from benchmarks.common import on_worker_thread

    caller = threading.get_ident()
    assert on_worker_thread(threading.get_ident) != caller

    def fails() -> None:
        raise ZeroDivisionError("in the worker")

    with pytest.raises(ZeroDivisionError, match="in the worker"):
        on_worker_thread(fails)


def test_grading_fits_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fits.json"
    run_benchmark("grading_fits.py", "--out", str(out))
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and doc["machine"] and doc["threads"] >= 1
    for way in ("here", "side_by_side"):
        assert positive(doc[way]["seconds"]) and [r["seed"] for r in doc[way]["runs"]] == [0, 1, 2]
        assert 0 < doc[way]["means"]["cas_ratio"] < 2
    assert positive(doc["speedup"]) and doc["max_abs_difference"] >= 0
    assert doc["side_by_side"]["workers"] == min(doc["threads"], len(os.sched_getaffinity(0)))

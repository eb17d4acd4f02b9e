"""Generation with the `distilled` sampler: exact counts through the real flow, and its bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion.checkpoint import CheckpointError
from diffusion.config import HardwareConfig, SamplerConfig
from diffusion.generate.plan import GenerationError
from diffusion.generate.run import prepare_run
from diffusion.model.saved import load_diffusion
from tests.generate_fixtures import distill_tiny_student, run_generate, tiny_generate


@pytest.fixture(scope="module")
def student(tiny_models, tmp_path_factory) -> str:
    """A student of the tiny teacher for 4, 2 and 1 steps (a few steps each: shapes, not quality)."""
    root = tmp_path_factory.mktemp("student")
    return distill_tiny_student(tiny_models, root / "student", root / "resume", teacher_steps=4)


def _distilled(tiny_models, tmp_path: Path, steps: int = 2, guidance: float = 1.5, **over: object):
    sampler = SamplerConfig(name="distilled", steps=steps, guidance=guidance)
    return tiny_generate(tiny_models, tmp_path, sampler=sampler, **over)


@pytest.mark.slow
def test_generation_with_the_distilled_sampler_publishes_exact_counts(
    prefect_server, tiny_models, student, tmp_path: Path
) -> None:
    cfg = _distilled(tiny_models, tmp_path, per_class={0: 5, 3: 2, 9: 1})
    result = run_generate(cfg, tiny_models, student=student)
    assert result.metrics["accepted"] == 8
    assert {row["class"]: row["accepted"] for row in result.classes if row["requested"]} == {0: 5, 3: 2, 9: 1}
    manifest = result.version.manifest
    assert manifest["params"]["sampler"] == {"name": "distilled", "steps": 2, "guidance": 1.5, "eta": 0.0}
    # the page's "how these digits were drawn": the student the manifest names draws it (without --model, or
    # given as --model); the teacher did not draw this version
    from diffusion.quality.report import build_reports

    for model, drawn in ((None, True), (student, True), (tiny_models["model"], False)):
        out = tmp_path / f"reports-{drawn}-{model is None}"
        build_reports(cfg.output_root, cfg.name, str(out), version=result.version.path, model=model)
        page = (out / result.version.version / "index.html").read_text()
        assert ('id="trajectory"' in page) is drawn, model
        assert (out / result.version.version / "trajectory.png").is_file() is drawn


@pytest.mark.parametrize(
    "steps, guidance, message",
    [
        (8, 1.5, "generate.sampler.steps (8): the student in"),
        (2, 3.5, "generate.sampler.guidance (3.5) is outside [1, 3]"),
    ],
)
def test_a_student_refuses_steps_and_guidance_it_was_not_distilled_for(
    tiny_models, student, tmp_path: Path, steps: int, guidance: float, message: str
) -> None:
    cfg = _distilled(tiny_models, tmp_path, steps=steps, guidance=guidance)
    args = (cfg, HardwareConfig(), tiny_models["model"], tiny_models["classifier"], tiny_models["train"])
    with pytest.raises(CheckpointError) as err:
        prepare_run(*args, student_dir=student)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not Path(cfg.staging_dir).exists()  # nothing staged


def test_a_student_of_another_teacher_or_none_at_all_is_refused(tiny_models, student, tmp_path: Path) -> None:
    cfg = _distilled(tiny_models, tmp_path)
    other = tmp_path / "other-teacher"
    teacher, _ = load_diffusion(tiny_models["model"])
    from diffusion.model.saved import save_diffusion
    from tests.generate_fixtures import TINY_DIFFUSION

    state = {k: v + 1.0 for k, v in teacher.state_dict().items()}
    save_diffusion(other, TINY_DIFFUSION, state, state, {})
    args = (cfg, HardwareConfig(), str(other), tiny_models["classifier"], tiny_models["train"])
    with pytest.raises(CheckpointError, match="distilled from another teacher"):
        prepare_run(*args, student_dir=student)
    with pytest.raises(GenerationError, match="pass the student's folder"):
        prepare_run(*args)
    assert not Path(cfg.staging_dir).exists()

"""The scheduled deployment of the generation flow: `digits serve` serves it with `generate.schedule`.

Every scheduled run publishes a new version: its logical date is the slot's scheduled start time,
which also shifts the seed (`seed_from_date`), so each night draws new digits while a retried run of
the same slot resumes its own staged batches. `generate.schedule.overlap` sets what the Prefect server
does with a slot that comes while a run is still going (a deployment concurrency limit of 1).
"""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import serve
from prefect.schedules import Cron

from diffusion.config import Params
from diffusion.quality.grading import Grading
from flows.generate import generate_dataset

# generate.schedule.overlap -> the deployment's concurrency limit (None: no limit)
OVERLAP: dict[str, ConcurrencyLimitConfig | None] = {
    "skip": ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
    "queue": ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
    "run": None,
}


def build_deployment(
    params: Params, model: str, classifier: str, train_data: str, grading: Grading, student: str | None = None
) -> RunnerDeployment:
    """A deployment of `generate_dataset` on the cron schedule of `generate.schedule`, with every
    parameter taken from params.yaml (nothing to repeat on the command line or in the UI). Every run
    grades the version it publishes (`grading`): a flagged version ends the run Failed."""
    cfg = params.generate
    return generate_dataset.to_deployment(
        concurrency_limit=OVERLAP[cfg.schedule.overlap],
        name=f"{cfg.name}-scheduled",
        schedule=Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone),
        parameters={
            "cfg": cfg.model_dump(mode="json"),
            "hardware": params.hardware.model_dump(mode="json"),
            "model": model,
            "classifier": classifier,
            "train_data": train_data,
            "quality": params.quality.model_dump(mode="json"),
            "seed_from_date": True,
            "grading": grading.model_dump(mode="json"),
            "student": student,
        },
        description=f"Generate and publish a new version of '{cfg.name}' on '{cfg.schedule.cron}' ({cfg.schedule.timezone}).",
        tags=["digits", "generate"],
    )


def serve_generation(
    params: Params, model: str, classifier: str, train_data: str, grading: Grading, student: str | None = None
) -> None:
    """Serve the scheduled deployment until interrupted (needs a Prefect server: `prefect server start`)."""
    serve(build_deployment(params, model, classifier, train_data, grading, student))

"""The scheduled deployment of the generation flow: `digits serve` serves it on the `serve` schedule.

Every scheduled run publishes a new version: its logical date is the slot's scheduled start time,
which also shifts the seed (`seed_from_date`), so each night draws new digits while a retried run of
the same slot resumes its own staged batches. `serve.overlap` sets what the Prefect server
does with a slot that comes while a run is still going (a deployment concurrency limit of 1, held by a
lease that the running flow renews).
"""

from __future__ import annotations

from typing import Any

from prefect import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import serve
from prefect.schedules import Cron

from diffusion.config import Params
from diffusion.errors import DigitsError, one_line
from diffusion.quality.grading import Grading
from flows.generate import generate_dataset

# serve.overlap -> the deployment's concurrency limit (None: no limit)
OVERLAP: dict[str, ConcurrencyLimitConfig | None] = {
    "skip": ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
    "queue": ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
    "run": None,
}
# Prefect's default lease storage: in the server's memory, so a server restart forgets every lease while the
# slot count stays in its database (the slot stays taken; a running flow's renewal fails and it is stopped).
MEMORY_LEASES = "prefect.server.concurrency.lease_storage.memory"
DISK_LEASES = "prefect.server.concurrency.lease_storage.filesystem"


def check_overlap(overlap: str, server_settings: dict[str, Any] | None = None) -> None:
    """DigitsError (one line) when `serve.overlap` limits the deployment but the Prefect server
    keeps its concurrency leases in memory; `server_settings`: the server's `/admin/settings` (None: read
    them from the server at PREFECT_API_URL)."""
    if OVERLAP[overlap] is None:
        return
    if server_settings is None:
        with get_client(sync_client=True) as client:
            try:
                response = client.request("GET", "/admin/settings")
                response.raise_for_status()
                server_settings = response.json()
            except Exception as err:  # no server, a refusal (Prefect Cloud has no such route), not JSON
                raise DigitsError(
                    f"serve.overlap: {overlap} needs the server's lease storage, but"
                    f" {client.api_url}admin/settings cannot be read ({one_line(err)}); or set overlap: run"
                ) from None
    server = server_settings.get("server") if isinstance(server_settings, dict) else None
    concurrency = server.get("concurrency") if isinstance(server, dict) else None
    storage = concurrency.get("lease_storage") if isinstance(concurrency, dict) else None
    storage = storage or MEMORY_LEASES  # a server that does not say is taken at Prefect's default
    if storage == MEMORY_LEASES:
        raise DigitsError(
            f"serve.overlap: {overlap} needs a Prefect server that keeps its concurrency leases"
            f" outside its memory (with {storage} a server restart strands the slot and stops the running"
            f" run): start it with PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE={DISK_LEASES}, or set overlap: run"
        )


def build_deployment(
    params: Params, model: str, classifier: str, train_data: str, grading: Grading, student: str | None = None
) -> RunnerDeployment:
    """A deployment of `generate_dataset` on the cron schedule of the `serve` section, with every
    parameter taken from params.yaml (nothing to repeat on the command line or in the UI). Every run
    grades the version it publishes (`grading`): a flagged version ends the run Failed."""
    cfg, slot = params.generate, params.serve
    return generate_dataset.to_deployment(
        concurrency_limit=OVERLAP[slot.overlap],
        name=f"{cfg.name}-scheduled",
        schedule=Cron(slot.cron, timezone=slot.timezone),
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
        description=f"Generate and publish a new version of '{cfg.name}' on '{slot.cron}' ({slot.timezone}).",
        tags=["digits", "generate"],
    )


def serve_generation(
    params: Params, model: str, classifier: str, train_data: str, grading: Grading, student: str | None = None
) -> None:
    """Serve the scheduled deployment until interrupted (needs a Prefect server: `prefect server start`)."""
    serve(build_deployment(params, model, classifier, train_data, grading, student))

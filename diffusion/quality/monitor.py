"""Drift alarms: the `monitor` section's floors and ceilings applied to a graded version's metrics.

A version outside them is flagged in its evaluation document, on its report page and in the index; the run
that graded it (the generation flow) then fails with `QualityAlert`, one line naming the metric and the
version; `digits evaluate` (the DVC stage) prints that line as `alert:` and goes on. The version itself stays published for audit; `latest_version` skips it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from diffusion.config import MonitorConfig
from diffusion.errors import QualityAlert


@dataclass(frozen=True)
class Flag:
    """One bound a version broke: `value` of `metric` below its floor or above its ceiling (NaN: not
    measured, which breaks any bound set on it)."""

    metric: str
    value: float
    bound: float
    kind: Literal["floor", "ceiling"]

    def describe(self) -> str:
        if math.isnan(self.value):
            return f"{self.metric} was not measured (its {self.kind} is {self.bound:g})"
        where = "below its floor" if self.kind == "floor" else "above its ceiling"
        return f"{self.metric} {self.value:.4g} {where} {self.bound:g}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(metrics: dict[str, float], monitor: MonitorConfig) -> list[Flag]:
    """Every floor and ceiling of `monitor` that `metrics` break, floors first, in params order."""
    flags = []
    for kind, bounds in (("floor", monitor.floors), ("ceiling", monitor.ceilings)):
        for name, bound in bounds.items():
            raw = metrics.get(name)
            value = math.nan if raw is None else float(raw)  # None: NaN as JSON documents store it
            broken = value < bound if kind == "floor" else value > bound
            if math.isnan(value) or broken:
                flags.append(Flag(name, value, bound, kind))
    return flags


def raise_if_flagged(doc: dict[str, Any]) -> None:
    """Raise QualityAlert (one line: the version and every broken bound) when the document is flagged."""
    if doc.get("flagged") or doc.get("flags"):
        flags = [
            Flag(**{**f, "value": math.nan if f["value"] is None else f["value"]})
            for f in doc.get("flags") or []
        ]
        broken = "; ".join(f.describe() for f in flags) or "no bound recorded (an old flat document)"
        raise QualityAlert(
            f"{doc.get('name', 'the version')} {doc.get('version', '')} flagged: {broken} (monitor section of"
            " params.yaml)"
        )

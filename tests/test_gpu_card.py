"""benchmarks/gpu_card.py: the card's peak rate, the compute floor and the wheels the lent image lacks."""

from __future__ import annotations

import pytest

from benchmarks.gpu_card import IMAGE_HAS, floor, peak_tflops, wheel_list


@pytest.mark.parametrize(
    ("card", "rate", "source"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0, "table: H100"),
        ("NVIDIA H100 PCIe", 756.0, "table: H100 PCIe"),  # the longer piece is listed first
        ("NVIDIA H200 NVL", 835.0, "table: H200 NVL"),
        ("NVIDIA L40S", 362.0, "table: L40S"),
        ("AMD EPYC 7B13", None, "unknown card"),
    ],
)
def test_peak_tflops_takes_the_first_matching_piece(card: str, rate: float | None, source: str) -> None:
    assert peak_tflops(card, None) == (rate, source)


def test_an_override_wins_over_the_table() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", 500.0) == (500.0, "--peak-tflops")


def test_the_floor_is_count_x_evaluations_x_flops_over_the_rate() -> None:
    bound = floor(60000, 40.0, 10**8, 1000.0)  # 60,000 x 40 x 1e8 FLOPs / 1e15 FLOP/s = 0.24 s
    assert bound["seconds"] == pytest.approx(0.24)
    assert bound["digits_per_s"] == pytest.approx(60000 / 0.24)
    assert floor(60000, 40.0, 10**8, None)["seconds"] is None  # an unknown card has no floor


def test_the_wheel_list_pins_what_the_image_lacks() -> None:
    wheels = dict(line.split("==") for line in wheel_list())
    assert {"prefect", "great-expectations", "open-clip-torch", "pydantic"} <= set(wheels)
    assert not set(wheels) & IMAGE_HAS and all(wheels.values())

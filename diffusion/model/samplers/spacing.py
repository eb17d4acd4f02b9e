"""Which training timesteps a few-step sampler visits."""

from __future__ import annotations


def trailing_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from T - 1 downwards, T / steps apart, e.g. (1000, 4) -> [999, 749, 499, 249].

    The "trailing" spacing of Lin et al. (2024) Table 2 (diffusers: timestep_spacing="trailing"): the first
    step starts from the noisiest state x_T, which is what x_T ~ N(0, I) is closest to.
    """
    ratio = num_timesteps / steps
    return [round(num_timesteps - i * ratio) - 1 for i in range(steps)]

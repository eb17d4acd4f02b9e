"""`python -m diffusion.cli ...` is `digits ...`."""

from diffusion.cli import run

run()

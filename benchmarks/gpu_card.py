"""What benchmarks/gpu_generate.py needs to know of the lent card and its machine image.

    wheel_list()                            the pinned wheels the image lacks (`gpu_generate.py --wheel-list`)
    peak_tflops(card, override)             the card's dense bf16 TFLOP/s and where that figure came from
    flops_per_evaluation(model, device)     FLOPs of one U-Net forward pass of one image
    floor(count, evaluations, flops, rate)  the seconds and digits/s no implementation can beat on the card

The floor is the compute bound of issue 14's GPU target: count x evaluations per accepted digit x FLOPs per
evaluation / the card's dense bf16 rate. It ignores memory traffic, so a real run is always above it.
"""

from __future__ import annotations

from typing import Any

# What the lent machine's image already holds (KINDS.md): left out of --wheel-list; torch's own stack too.
_IMAGE_HAS = """
torch torchvision torchaudio triton numpy pandas pyarrow pillow safetensors pyyaml tqdm fsspec psutil scipy
timm huggingface-hub hf-xet jinja2 markupsafe requests urllib3 idna certifi charset-normalizer packaging
filelock typing-extensions sympy mpmath networkx click rich pygments markdown-it-py mdurl anyio h11 httpx
httpcore attrs cloudpickle regex six python-dateutil setuptools pip wheel protobuf msgpack toolz uvloop typer
shellingham sortedcontainers tabulate wrapt zipp colorama aiofiles prometheus-client pytest pluggy iniconfig
opt-einsum tokenizers joblib narwhals typing-inspect mypy-extensions pyparsing markdown humanize annotated-doc
pathspec
"""
IMAGE_HAS = frozenset(_IMAGE_HAS.split())
WHEEL_ROOTS = ("pydantic", "open_clip_torch", "prefect", "great_expectations", "ftfy")

# Dense bf16 tensor rate (TFLOP/s, no sparsity) by a piece of torch.cuda.get_device_name(); first match wins.
PEAK_BF16_TFLOPS = [
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("A6000", 155.0),
]


def wheel_list() -> list[str]:
    """`name==version` of this venv's runtime closure of WHEEL_ROOTS, less what the image holds."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, str] = {}
    todo = list(WHEEL_ROOTS)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen or name in IMAGE_HAS:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": "", "python_version": "3.12"}):
                todo.append(req.name)
    return [f"{name}=={version}" for name, version in sorted(seen.items())]


def peak_tflops(card: str, override: float | None) -> tuple[float | None, str]:
    """The card's dense bf16 TFLOP/s and where it came from; (None, "unknown card") off the table."""
    if override:
        return override, "--peak-tflops"
    for piece, rate in PEAK_BF16_TFLOPS:
        if piece.lower() in card.lower():
            return rate, f"table: {piece}"
    return None, "unknown card"


def flops_per_evaluation(model: Any, device: Any) -> int:
    """FLOPs of one U-Net forward pass of one image (FlopCounterMode: matmuls, convolutions, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *model.image_shape), device=device)
    t, label = torch.full((1,), 500, device=device), torch.zeros(1, dtype=torch.int64, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, label)
    return int(counter.get_total_flops())


def floor(count: int, evaluations: float, flops: int, rate: float | None) -> dict[str, Any]:
    """The compute floor of `count` digits at `evaluations` network evaluations per accepted digit, `flops`
    per evaluation and `rate` TFLOP/s (None: unknown card, no floor)."""
    seconds = count * evaluations * flops / (rate * 1e12) if rate else None
    return {
        "flops_per_evaluation": flops,
        "evaluations_per_digit": evaluations,
        "peak_bf16_tflops": rate,
        "seconds": seconds,
        "digits_per_s": count / seconds if seconds else None,
    }

"""The CAS classifier: a LeNet-5-style CNN, a third architecture beside the filtering judge and the evaluator.

CAS (diffusion/quality/cas.py) trains a classifier on the data it grades. Were that classifier the filtering
judge's architecture, digits that merely suit that architecture (they were chosen by it) would score well;
were it the evaluator's, the evaluator would be grading its own kind. LeNet-5 (LeCun, Bottou, Bengio and
Haffner 1998, "Gradient-based learning applied to document recognition") is neither: two 5x5 convolutions
with 2x2 subsampling, then three dense layers (120, 84, 10), about 61k parameters. Two modern changes: ReLU
instead of the scaled tanh and max- instead of average-pooling (the usual "LeNet-5" of today's tutorials);
no batch norm, no dropout, so training draws no randomness but the batch order.

The network is built on the meta device and initialised from an explicit `torch.Generator`, so building one
never reads or advances torch's global RNG (CAS runs inside Prefect's worker threads).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffusion.judges.training import NUM_CLASSES, JudgeNet


class LeNet5(JudgeNet):
    """(N, 1, 28, 28) digits in [-1, 1] -> 10 logits; `features` are the 84 activations before the head.

    28x28 input, padded by 2 as LeNet-5 saw its 32x32 images: conv 5x5 (6) -> 28 -> pool -> 14 -> conv 5x5
    (16) -> 10 -> pool -> 5 -> dense 400 -> 120 -> 84 -> 10.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.head = nn.Linear(84, NUM_CLASSES)


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every conv and dense layer of `model` (on the CPU) PyTorch's default init, drawn from `generator`.

    Weights: Kaiming-uniform with a = sqrt(5); biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as
    `nn.Linear.reset_parameters` and `nn.Conv2d.reset_parameters` do, but from the given CPU generator.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight[0].numel())  # fan_in
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model


def new_lenet(generator: torch.Generator, device: torch.device | str = "cpu") -> LeNet5:
    """A LeNet5 initialised from `generator` (a CPU generator), in train mode on `device`; the global RNG is
    left alone (the layers are built on the meta device, then materialised and initialised on the CPU)."""
    with torch.device("meta"):
        model = LeNet5()
    model = init_weights(model.to_empty(device="cpu"), generator)
    return model.to(device).train()

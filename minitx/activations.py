"""Every parameter-free activation function a Hugging Face GPT-2 config.json may name, by that name."""

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# GPT-2's own is "gelu_new", the tanh approximation; torch's fused kernel computes the same formula
# (to float rounding) much faster than writing it out. Every parameter-free HF activation is here.
_gelu_tanh = functools.partial(F.gelu, approximate="tanh")
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    **dict.fromkeys(["gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate"], _gelu_tanh),
    **dict.fromkeys(["gelu", "gelu_python"], F.gelu), **dict.fromkeys(["silu", "swish"], F.silu),
    "gelu_10": lambda x: F.gelu(x).clamp(-10, 10), "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu, "relu2": lambda x: F.relu(x).square(), "relu6": F.relu6, "leaky_relu": F.leaky_relu,
    "mish": F.mish, "hardswish": F.hardswish, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(), "linear": lambda x: x,
    "laplace": lambda x: 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
}

"""bnn-lightning: train binarized neural networks with PyTorch Lightning."""

from bnn_lightning.layers import (
    MODES,
    BinaryConv2d,
    BinaryLinear,
    QuantizedLayer,
    binary_layers,
    get_modes,
    set_mode,
    set_quantizers,
)
from bnn_lightning.quantizers import (
    QUANTIZERS,
    ApproxSign,
    Clamp,
    LeakyClip,
    MagnitudeAwareSign,
    Quantizer,
    ReLU,
    SteSign,
    SwishSign,
    get_quantizer,
)

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "QUANTIZERS",
    "ApproxSign",
    "BinaryConv2d",
    "BinaryLinear",
    "Clamp",
    "LeakyClip",
    "MagnitudeAwareSign",
    "QuantizedLayer",
    "Quantizer",
    "ReLU",
    "SteSign",
    "SwishSign",
    "__version__",
    "binary_layers",
    "get_modes",
    "get_quantizer",
    "set_mode",
    "set_quantizers",
]

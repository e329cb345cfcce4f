"""bnn-lightning: train binarized neural networks with PyTorch Lightning."""

from bnn_lightning.callbacks import ActivationCurriculum, BNNDiagnostics, StageHandoff, WeightClip
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
from bnn_lightning.losses import BNNLoss, CenterLoss
from bnn_lightning.models import BinaryResNet, create_model, list_models
from bnn_lightning.module import BNNClassifier
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
from bnn_lightning.schedules import WarmupCosineLR, WarmupMultiStepLR
from bnn_lightning.summary import ModelSummary, summary

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "QUANTIZERS",
    "ActivationCurriculum",
    "ApproxSign",
    "BNNClassifier",
    "BNNDiagnostics",
    "BNNLoss",
    "BinaryConv2d",
    "BinaryLinear",
    "BinaryResNet",
    "CenterLoss",
    "Clamp",
    "LeakyClip",
    "MagnitudeAwareSign",
    "ModelSummary",
    "QuantizedLayer",
    "Quantizer",
    "ReLU",
    "StageHandoff",
    "SteSign",
    "SwishSign",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WeightClip",
    "__version__",
    "binary_layers",
    "create_model",
    "get_modes",
    "get_quantizer",
    "list_models",
    "set_mode",
    "set_quantizers",
    "summary",
]

"""bnn-lightning: train binarized neural networks with PyTorch Lightning."""

from bnn_lightning.callbacks import (
    ActivationCurriculum,
    BNNDiagnostics,
    NonFiniteGuard,
    StageHandoff,
    WeightClip,
)
from bnn_lightning.checkpoint_io import AtomicCheckpointIO, CheckpointError
from bnn_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    ImageFolderDataModule,
    Lighting,
)
from bnn_lightning.export import (
    ExportReport,
    PackedFormatError,
    export_checkpoint,
    export_packed,
    load_packed,
)
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
from bnn_lightning.packed import PackedBinaryConv2d, convert_to_packed
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
from bnn_lightning.schedules import LinearDecayLR, OneCycleLR, WarmupCosineLR, WarmupMultiStepLR
from bnn_lightning.summary import ModelSummary, summary
from bnn_lightning.thresholds import RPReLU, RSign

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "QUANTIZERS",
    "ActivationCurriculum",
    "ApproxSign",
    "AtomicCheckpointIO",
    "BNNClassifier",
    "BNNDiagnostics",
    "BNNLoss",
    "BinaryConv2d",
    "BinaryLinear",
    "BinaryResNet",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CenterLoss",
    "CheckpointError",
    "Clamp",
    "ExportReport",
    "ImageFolderDataModule",
    "LeakyClip",
    "Lighting",
    "LinearDecayLR",
    "MagnitudeAwareSign",
    "ModelSummary",
    "NonFiniteGuard",
    "OneCycleLR",
    "PackedBinaryConv2d",
    "PackedFormatError",
    "QuantizedLayer",
    "Quantizer",
    "RPReLU",
    "RSign",
    "ReLU",
    "StageHandoff",
    "SteSign",
    "SwishSign",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WeightClip",
    "__version__",
    "binary_layers",
    "convert_to_packed",
    "create_model",
    "export_checkpoint",
    "export_packed",
    "get_modes",
    "get_quantizer",
    "list_models",
    "load_packed",
    "set_mode",
    "set_quantizers",
    "summary",
]

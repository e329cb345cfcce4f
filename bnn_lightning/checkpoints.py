"""Load networks and weights from checkpoints: strict stage-1 hand-off and distillation teachers.

Every file is read with ``torch.load(weights_only=True)``. A checkpoint of this project is a
Lightning checkpoint whose ``state_dict`` holds the network under ``net.`` and whose
``hyper_parameters["net"]`` says how to build it (``{"class_path": ..., "init_args": ...}``, as
LightningCLI writes it, or as :func:`net_config` records it outside the CLI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from torch import Tensor, nn

from bnn_lightning.checkpoint_io import read_checkpoint
from bnn_lightning.checks import net_config_mismatch
from bnn_lightning.layers import MODES, get_modes
from bnn_lightning.registry import Registry

__all__ = [
    "NETS",
    "TORCHVISION_PREFIX",
    "build_net",
    "describe_mode",
    "freeze",
    "init_from_checkpoint",
    "is_plain",
    "load_checkpoint",
    "load_net_state",
    "load_net_weights",
    "load_strict",
    "load_teacher",
    "net_config",
    "net_from_checkpoint",
    "net_state_dict",
]

NETS: Registry[type[nn.Module]] = Registry(
    "network class_path", base=nn.Module, example="bnn_lightning.BinaryResNet"
)
"""Networks by name for :func:`build_net` (any importable ``nn.Module`` class path works too)."""

TORCHVISION_PREFIX = "torchvision:"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint or state dict onto the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: No file at ``path``.
        CheckpointError: A truncated, corrupt or unsafe file (see :func:`read_checkpoint`).
    """
    return read_checkpoint(path)


def net_state_dict(checkpoint: Mapping[str, Any], prefix: str = "net.") -> dict[str, Tensor]:
    """Network weights: a Lightning checkpoint's keys under ``prefix``, or a plain state dict."""
    if "state_dict" not in checkpoint:
        return {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    state = checkpoint["state_dict"]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _shorten(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(
    module: nn.Module, state: Mapping[str, Tensor], source: str, differences: Sequence[str] = ()
) -> None:
    """``load_state_dict`` that lists every missing, unexpected and mis-shaped key in one error.

    ``differences`` (e.g. ``["width=8 (this net: 16)"]``) end the error when given.

    Raises:
        ValueError: The weights in ``source`` do not fit ``module``'s architecture.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        problems = [
            f"{label}: {_shorten(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if keys
        ]
        raise ValueError(
            f"The weights in {source} do not match the network ({'; '.join(problems)}); build "
            "the network with the same architecture arguments as the run that saved them"
            + (f": {', '.join(differences)}." if differences else ".")
        )
    module.load_state_dict(state, strict=True)


def load_net_weights(net: nn.Module, path: str | Path) -> None:
    """Load a checkpoint's network weights into ``net`` strictly (the stage-2 ``init_from``)."""
    load_net_state(net, load_checkpoint(path), str(path))


def load_net_state(net: nn.Module, checkpoint: Mapping[str, Any], source: str) -> None:
    """:func:`load_strict` of a loaded checkpoint's net weights; when they do not fit, the error
    also names the net arguments the checkpoint recorded differently (arch, num_classes...)."""
    differences = net_config_mismatch(checkpoint.get("hyper_parameters", {}).get("net"), net)
    load_strict(net, net_state_dict(checkpoint), source, differences)


def _spec_name(spec: Any) -> str:
    """Short name of a quantizer spec: its name, or the class of a class_path mapping / module."""
    if isinstance(spec, Mapping):
        return str(spec.get("class_path", "?")).rpartition(".")[2]
    return spec if isinstance(spec, str) else type(spec).__name__


def describe_mode(config: Any, net: nn.Module | None = None) -> str:
    """``"binary (ste_sign, magnitude_aware_sign)"``: a net's recorded mode and the quantizers it
    uses (the activation's, then the weight's), from ``{"init_args": {...}}`` as checkpoints record
    it; from ``net``'s layers when nothing is recorded (``"no recorded mode"`` without a net)."""
    init_args = config.get("init_args") if isinstance(config, Mapping) else None
    if not isinstance(init_args, Mapping) or init_args.get("mode") is None:
        modes = sorted(get_modes(net)) if net is not None else []
        return "/".join(modes) if modes else "no recorded mode"
    mode = init_args["mode"]
    used = {
        "activation_quantizer": mode in ("binary_activations", "binary"),
        "weight_quantizer": mode in ("binary_weights", "binary"),
    }
    specs = [_spec_name(init_args[k]) for k, on in used.items() if on and k in init_args]
    return f"{mode} ({', '.join(specs)})" if specs else str(mode)


def init_from_checkpoint(
    net: nn.Module, path: str | Path, target: Any = None, required_mode: str | None = None
) -> str:
    """The stage handoff: load ``path``'s network weights into ``net`` strictly and return the
    line ``"init_from <path>: <source mode> -> <target mode>"`` (see :func:`describe_mode`).

    Args:
        net: The network of the new run.
        path: A checkpoint of this project (or a plain state dict, whose mode is unrecorded).
        target: ``net``'s recorded config (``{"init_args": {...}}``), for the line.
        required_mode: The mode the checkpoint's run must have recorded (e.g. stage 2 requires
            ``binary_activations``: a stage-1 run); None accepts any.

    Raises:
        ValueError: The checkpoint's mode is not ``required_mode``, or its weights do not fit.
    """
    if required_mode is not None and required_mode not in MODES:
        raise ValueError(f"Unknown mode {required_mode!r}; use one of {', '.join(MODES)}.")
    checkpoint = load_checkpoint(path)
    source = checkpoint.get("hyper_parameters", {}).get("net")
    recorded = source.get("init_args", {}).get("mode") if isinstance(source, Mapping) else None
    if required_mode is not None and recorded != required_mode:
        found = f"mode {recorded}" if recorded is not None else "no recorded mode"
        raise ValueError(
            f"init_from {path} holds a network of {found}, but init_from_mode requires "
            f"{required_mode}; point init_from at the checkpoint of a {required_mode} run."
        )
    load_net_state(net, checkpoint, str(path))
    return f"init_from {path}: {describe_mode(source)} -> {describe_mode(target, net)}"


def is_plain(value: Any) -> bool:
    """True for None, bool, int, float, str and lists / str-keyed dicts of them (YAML values)."""
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def net_config(net: nn.Module) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a net that records plain ``init_args``, else None."""
    init_args = getattr(net, "init_args", None)
    if not isinstance(init_args, Mapping) or not is_plain(init_args):
        return None
    cls = type(net)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(init_args)}


def build_net(config: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``{"class_path": ..., "init_args": ...}``; the class must be an ``nn.Module``."""
    cls = NETS.lookup(config.get("class_path"))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "net", fail_untyped=False)
    parsed = parser.parse_object({"net": dict(config.get("init_args") or {})})
    return parser.instantiate(parsed).net


def net_from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the network a checkpoint of this project was trained with and load its weights."""
    checkpoint = load_checkpoint(path)
    config = checkpoint.get("hyper_parameters", {}).get("net")
    if not isinstance(config, Mapping) or "class_path" not in config:
        raise ValueError(
            f"{path} does not record how to build its network (hyper_parameters['net']); "
            "pass the network as a module instead, or use a checkpoint written by BNNClassifier."
        )
    net = build_net(config)
    load_strict(net, net_state_dict(checkpoint), str(path))
    return net


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients and put ``module`` in eval mode (in place); returns it."""
    module.requires_grad_(False)
    return module.eval()


def load_teacher(
    teacher: nn.Module | str, weights: str | None = None, num_classes: int | None = None
) -> nn.Module:
    """A frozen teacher from a module, a checkpoint of this project, or ``torchvision:<name>``.

    Args:
        teacher: An ``nn.Module``; a checkpoint path; or ``"torchvision:resnet34"`` style names.
        weights: State-dict file for a torchvision teacher (no download happens).
        num_classes: Output size of a torchvision teacher (its weights must match it).
    """
    if isinstance(teacher, nn.Module):
        return freeze(teacher)
    if not teacher.startswith(TORCHVISION_PREFIX):
        return freeze(net_from_checkpoint(teacher))
    import torchvision

    if weights is None:
        raise ValueError(f"Teacher {teacher!r} needs teacher_weights: a state-dict file for it.")
    name = teacher[len(TORCHVISION_PREFIX) :]
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    net = torchvision.models.get_model(name, weights=None, **kwargs)
    load_strict(net, net_state_dict(load_checkpoint(weights)), weights)
    return freeze(net)

"""Logger setup for the CLI: W&B offline without credentials, CSV when W&B is disabled.

:func:`configure_logger` edits a logger's parsed config (``class_path`` / ``init_args``) before
LightningCLI instantiates it: logs go under the run's ``default_root_dir`` unless ``save_dir`` is
set; a ``WandbLogger`` runs offline when no API key is configured (``wandb sync`` uploads the
run later) and becomes a ``CSVLogger`` in the same folder when ``WANDB_MODE=disabled``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.loggers import Logger, WandbLogger

__all__ = ["CSV_LOGGER", "WANDB_LOGGER", "configure_logger", "finish_wandb", "wandb_has_api_key"]

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"


def wandb_has_api_key() -> bool:
    """True when ``WANDB_API_KEY`` is set or the netrc file (``$NETRC`` or ``~/.netrc``) has one."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].rstrip("/")
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def configure_logger(logger: Namespace, out: Path) -> None:
    """Logs under ``out`` unless ``save_dir`` is set; W&B offline without an API key, and a
    CSVLogger in the same place when ``WANDB_MODE=disabled``."""
    init = logger.init_args
    if "save_dir" in init and init.save_dir in (None, "."):
        init.save_dir = str(out)
    if logger.class_path != WANDB_LOGGER:
        return
    if os.environ.get("WANDB_MODE") == "disabled":
        logger.class_path = CSV_LOGGER
        logger.init_args = Namespace(save_dir=init.save_dir, name=init.get("name") or "csv")
    elif not init.get("offline") and not wandb_has_api_key():
        os.environ.setdefault("WANDB_MODE", "offline")


def finish_wandb(loggers: Sequence[Logger]) -> None:
    """Finish the W&B run of ``loggers`` (if any): its files are complete, a next run is new."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()

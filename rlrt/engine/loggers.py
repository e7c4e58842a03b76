"""Loggers: Lightning's WandbLogger, offline unless the user has configured a W&B account."""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

OFFLINE_MODES = ("offline", "dryrun", "disabled")


def wandb_account_configured() -> bool:
    """True when runs can sync: `WANDB_MODE` says online, or an API key is set (`WANDB_API_KEY`
    or a `wandb login` entry in ~/.netrc for the `WANDB_BASE_URL` host)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode not in OFFLINE_MODES
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(_LightningWandbLogger):
    """`lightning.pytorch.loggers.WandbLogger` whose `offline` defaults to "no account here".

    Without a configured account runs are written under `save_dir/wandb` and can be uploaded
    later with `wandb sync`; `offline: false` forces online.

    Args:
        offline: None decides by `wandb_account_configured()`.
        **kwargs: the Lightning WandbLogger's arguments (project, name, save_dir, ...).
    """

    def __init__(self, *, offline: bool | None = None, **kwargs: Any) -> None:
        if offline is None:
            offline = not wandb_account_configured()
        super().__init__(offline=offline, **kwargs)

"""Experiment trackers (kind ``logger``, recipe key ``loggers``): ``jsonl`` (``RUN/metrics.jsonl``, the default),
``tensorboard`` and ``wandb``. The last two import their packages only when a run opens them, so this area loads
(and ``rcm validate`` names the extra to install) without them."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.loggers import jsonl_logger, tensorboard_logger, wandb_logger

    return [jsonl_logger.COMPONENT, tensorboard_logger.COMPONENT, wandb_logger.COMPONENT]

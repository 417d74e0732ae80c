"""``wandb``: Weights & Biases, offline by default (extra ``wandb``).

``mode: offline`` (the default) writes the run to ``RUN/wandb/offline-run-*`` and needs no network or account;
``wandb sync RUN/wandb/offline-run-*`` uploads it later. ``mode: online`` logs live (it needs ``wandb login``).
The resolved recipe is the run's config; scalars by their metric names and sample pictures as images, at the
training iteration as wandb's step. A resumed run is a new wandb run that starts at the resumed iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
from rcm_plugins.loggers._common import require_package, scalars

import rcm_registry as rr

#: The folder in the run directory (wandb names it itself, under the ``dir`` it is given).
WANDB_DIR = "wandb"


@attrs.define
class WandbLoggerConfig:
    """``{use: wandb, mode: offline, project: rcm, name: null}``"""

    mode: Literal["offline", "online", "disabled"] = attrs.field(
        default="offline", validator=attrs.validators.in_(("offline", "online", "disabled"))
    )
    project: str = "rcm-registry"
    #: The run's display name (default: the run directory's name).
    name: str | None = None
    entity: str | None = None

    def __attrs_post_init__(self) -> None:
        require_package("wandb", "wandb", "wandb")


class WandbLogger:
    """Weights & Biases (offline by default, into RUN/wandb): scalars, the recipe, sample pictures."""

    def __init__(self, config: WandbLoggerConfig) -> None:
        self.config = config
        self._run: Any = None

    def open(self, run_dir: Path, recipe: Mapping[str, Any], start: int) -> None:
        import wandb

        c = self.config
        self._run = wandb.init(
            mode=c.mode,
            dir=str(run_dir),
            project=c.project,
            entity=c.entity,
            name=c.name or run_dir.resolve().name,
            config={"recipe": dict(recipe), "start_iteration": start},
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, iteration: int, record: Mapping[str, float | str]) -> None:
        assert self._run is not None, "open() first"
        self._run.log(scalars(record), step=iteration)

    def log_image(self, iteration: int, tag: str, image: np.ndarray) -> None:
        import wandb

        assert self._run is not None, "open() first"
        self._run.log({tag: wandb.Image(image)}, step=iteration)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


COMPONENT = rr.Component(kind="logger", name="wandb", factory=WandbLogger, config=WandbLoggerConfig)

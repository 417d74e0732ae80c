"""``tensorboard``: TensorBoard event files in ``RUN/tensorboard`` (extra ``tensorboard``).

Scalars by their metric names (``loss/scm``, ``lr/student``, ...), and the sample pictures of
``run.sample_every``. A resumed run purges the events past the iteration it resumes from, so the curves
have no doubled stretch. ``tensorboard --logdir RUN/tensorboard`` shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from rcm_plugins.loggers._common import require_package, scalars

import rcm_registry as rr
from rcm_registry import schema

#: The folder in the run directory.
TENSORBOARD_DIR = "tensorboard"


@attrs.define
class TensorboardLoggerConfig:
    """``{use: tensorboard, flush_secs: 30}``"""

    #: Write pending events to disk at least this often (seconds).
    flush_secs: int = attrs.field(default=30, validator=schema.positive)

    def __attrs_post_init__(self) -> None:
        require_package("tensorboard", "tensorboard", "tensorboard")


class TensorboardLogger:
    """TensorBoard event files in RUN/tensorboard: scalars and sample pictures."""

    def __init__(self, config: TensorboardLoggerConfig) -> None:
        self.config = config
        self._writer: Any = None

    def open(self, run_dir: Path, recipe: Mapping[str, Any], start: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(
            str(run_dir / TENSORBOARD_DIR), purge_step=start if start > 0 else None, flush_secs=self.config.flush_secs
        )

    def log(self, iteration: int, record: Mapping[str, float | str]) -> None:
        assert self._writer is not None, "open() first"
        for key, value in scalars(record).items():
            self._writer.add_scalar(key, value, iteration)

    def log_image(self, iteration: int, tag: str, image: np.ndarray) -> None:
        assert self._writer is not None, "open() first"
        self._writer.add_image(tag, image, iteration, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


COMPONENT = rr.Component(kind="logger", name="tensorboard", factory=TensorboardLogger, config=TensorboardLoggerConfig)

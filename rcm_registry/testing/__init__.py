"""Helpers for testing rcm-registry and its plugins (used by this project's tests; public for plugin authors).

* Contract test bases, one per component kind: the checks every component of that kind must pass.
  Subclass one per component and pytest runs them all::

      from rcm_registry.testing import TimeSamplerContract

      class TestLogitNormal(TimeSamplerContract):
          name = "logit_normal"  # a registered component; or override make(self, **overrides)

  :class:`ScheduleContract`, :class:`TimeSamplerContract`, :class:`LossContract`,
  :class:`RolloutContract`, :class:`SamplerContract`, :class:`MetricContract`,
  :class:`DatasetContract`, :class:`AttentionContract` (see :mod:`rcm_registry.testing.contract` for
  how they are collected).
* :mod:`rcm_registry.testing.fixtures`: tiny networks, step and sample contexts the contracts run on.
* :func:`run_cli` / :func:`run_cli_subprocess`: the ``rcm`` command in this process or a child.
  :func:`rcm_registry.testing.cli_cases.assert_user_error`: a command refused as a user error, nothing created.
* :mod:`rcm_registry.testing.runs`: a run that trains in about a second (the quickstart teacher shrunk by
  ``--set`` overrides), for tests of run directories.
* :mod:`rcm_registry.testing.rcm_release_tars`: tiny datasets in the rCM release's tar-shard layout, and
  one damage function per kind of bad input.

Needs pytest (the ``test`` extra).
"""

import pytest

# Before the contract modules are imported: their plain asserts then report like a test's own.
pytest.register_assert_rewrite(
    *(
        f"rcm_registry.testing.{kind}_contract"
        for kind in ("attention", "dataset", "loss", "metric", "rollout", "sampler", "schedule", "time_sampler")
    )
)

from rcm_registry.testing.attention_contract import AttentionContract  # noqa: E402
from rcm_registry.testing.cli import CliResult, run_cli, run_cli_subprocess  # noqa: E402
from rcm_registry.testing.contract import ComponentContract  # noqa: E402
from rcm_registry.testing.dataset_contract import DatasetContract  # noqa: E402
from rcm_registry.testing.fixtures import FixedTimes, TinyNet, step_context, tiny_sample_context, tiny_step_context  # noqa: E402
from rcm_registry.testing.loss_contract import LossContract  # noqa: E402
from rcm_registry.testing.metric_contract import MetricContract  # noqa: E402
from rcm_registry.testing.rollout_contract import RolloutContract  # noqa: E402
from rcm_registry.testing.sampler_contract import SamplerContract  # noqa: E402
from rcm_registry.testing.schedule_contract import ScheduleContract  # noqa: E402
from rcm_registry.testing.time_sampler_contract import TimeSamplerContract  # noqa: E402

__all__ = [
    "AttentionContract",
    "CliResult",
    "ComponentContract",
    "DatasetContract",
    "FixedTimes",
    "LossContract",
    "MetricContract",
    "RolloutContract",
    "SamplerContract",
    "ScheduleContract",
    "TimeSamplerContract",
    "TinyNet",
    "run_cli",
    "run_cli_subprocess",
    "step_context",
    "tiny_sample_context",
    "tiny_step_context",
]

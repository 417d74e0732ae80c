"""Class-conditional 8×8 digits: the dataset, a label-conditioned Wan2.1 network and classifier-based metrics."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.digits import (
        accuracy_metric,
        digits_dataset,
        diversity_metric,
        frechet_metric,
        precision_recall_metric,
        wan_labels_network,
    )

    modules = (
        digits_dataset,
        wan_labels_network,
        frechet_metric,
        accuracy_metric,
        precision_recall_metric,
        diversity_metric,
    )
    return [m.COMPONENT for m in modules]

"""Class-conditional 8×8 digits and moving-digit clips: the datasets, a label-conditioned Wan2.1 network and
classifier-based metrics (digit features for images and frames, 3-D video features for clips)."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.digits import (
        accuracy_metric,
        digits_dataset,
        diversity_metric,
        frame_fd_metric,
        frechet_metric,
        motion_metric,
        moving_digits_dataset,
        precision_recall_metric,
        temporal_consistency_metric,
        video_accuracy_metric,
        video_diversity_metric,
        video_fd_metric,
        video_precision_recall_metric,
        wan_labels_network,
    )

    modules = (
        digits_dataset,
        wan_labels_network,
        frechet_metric,
        accuracy_metric,
        precision_recall_metric,
        diversity_metric,
        moving_digits_dataset,
        frame_fd_metric,
        video_fd_metric,
        video_accuracy_metric,
        temporal_consistency_metric,
        motion_metric,
        video_precision_recall_metric,
        video_diversity_metric,
    )
    return [m.COMPONENT for m in modules]

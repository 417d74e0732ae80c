"""The tiny Wan rCM recipe the multi-process tests train (imported by the worker and the tests)."""

from __future__ import annotations

from typing import Any

#: Latents (C, T, H, W) with patch (1, 2, 2): 2·2·2 = 8 tokens, so context parallel 2 and 4 divide it.
SHAPE = [16, 2, 4, 4]

RECIPE: dict[str, Any] = {
    "networks": {
        "teacher": {"use": "wan2.1-t2v", "size": "tiny", "attention": {"use": "math"}},
        "student": {"init_from": "teacher"},
        "fake_score": {"init_from": "teacher"},
    },
    "teacher_wrapper": {"use": "rectified_flow", "t_scale": 1000.0, "guidance": 3.0},
    "time": {
        "student": {"use": "lognormal", "mean": 0.7, "std": 1.6},
        "critic": {"use": "uniform_shift", "shift": 5.0},
    },
    "rollout": {"use": "stochastic_backward", "max_steps": 2},
    "phases": {
        "student": {
            "every": 2,
            "losses": [
                {"use": "scm", "weight": 1.0, "tangent_warmup": 4},
                # a batch sum, so both reductions are checked
                {"use": "dmd", "weight": 0.5, "reduction": "sum"},
            ],
            "optimizer": {"use": "adamw", "lr": 1.0e-3, "betas": [0.0, 0.999]},
            "ema": {"use": "power", "rate": 0.1},
            "grad_clip": 5.0,
        },
        "critic": {
            "trains": "fake_score",
            "losses": [{"use": "fake_score_dsm"}],
            "optimizer": {"use": "adamw", "lr": 1.0e-3, "betas": [0.0, 0.999]},
        },
    },
    "data": {"use": "random_latents", "shape": SHAPE, "text_length": 4, "text_dim": 32},
    "output_network": "student",
    "run": {"iterations": 4, "batch_size": 4, "seed": 3, "device": "cpu", "cpu_threads": 1, "log_every": 1},
}

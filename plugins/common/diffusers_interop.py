"""Loading diffusers models strictly, whether or not ``accelerate`` is installed."""

from __future__ import annotations

import os
from typing import Any


def from_pretrained_strict(cls: Any, directory: str | os.PathLike[str]) -> Any:
    """``cls.from_pretrained(directory)`` in eval mode, raising unless every key was used exactly.

    Without ``accelerate`` diffusers refuses to load any model that declares ``_keep_in_fp32_modules``
    (it wants ``low_cpu_mem_usage``); those modules only matter for half-precision loads, so for a
    full-precision load they are switched off while accelerate is absent.
    """
    try:
        import accelerate  # noqa: F401

        model, info = cls.from_pretrained(directory, output_loading_info=True)
    except ImportError:
        keep = cls._keep_in_fp32_modules
        cls._keep_in_fp32_modules = None
        try:
            model, info = cls.from_pretrained(directory, output_loading_info=True)
        finally:
            cls._keep_in_fp32_modules = keep
    problems = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs") if info[k]}
    if problems:
        raise ValueError(f"{directory}: {cls.__name__} did not load cleanly: {problems}")
    return model.eval()

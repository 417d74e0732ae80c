"""Parallel strategies (single, ddp, fsdp2 with Ulysses context parallel) and activation checkpointing."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.parallel import ddp, fsdp2, single

    return [single.COMPONENT, ddp.COMPONENT, fsdp2.COMPONENT]

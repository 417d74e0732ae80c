"""Loading a state dict into a network strictly: every missing, unexpected or mis-shaped key in one error.

The one strict loader of the project: the engine uses it for ``init_from``, run weights, resume and
``open_checkpoint``; network families use it for their native and diffusers checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from rcm_registry.errors import CheckpointError


def _shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_state_dict(
    expected: Mapping[str, Sequence[int]],
    found: Mapping[str, Tensor],
    *,
    source: str,
    ignore_unexpected: Sequence[str] = (),
) -> None:
    """Raise one :class:`CheckpointError` listing every missing, unexpected and mis-shaped key.

    Args:
        expected: key → shape the network needs (in the checkpoint's own key layout, so that the
            error names keys as they are in the file).
        found: the checkpoint's tensors.
        source: names the checkpoint in the message.
        ignore_unexpected: regular expressions; unexpected keys matching one are tolerated.
    """
    patterns = [re.compile(p) for p in ignore_unexpected]
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and not any(p.search(k) for p in patterns))
    mismatched = sorted(
        (k, tuple(found[k].shape), tuple(s))
        for k, s in expected.items()
        if k in found and tuple(found[k].shape) != tuple(s)
    )
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source}: checkpoint does not fit the network"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}):")
        lines += [f"    {k}" for k in missing]
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}):")
        lines += [f"    {k}" for k in unexpected]
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}):")
        lines += [f"    {k}: checkpoint {_shape(got)}, network {_shape(want)}" for k, got, want in mismatched]
    if len(missing) > len(expected) // 2:
        lines.append("  (most keys are missing: is the checkpoint in another key layout, or for another network?)")
    raise CheckpointError("\n".join(lines))


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    assign: bool = False,
    ignore_unexpected: Sequence[str] = (),
) -> None:
    """Check ``state_dict`` against ``module`` (see :func:`check_state_dict`) and load it.

    With ``assign=True`` (for a module built on the meta device) the tensors become the parameters,
    converted to the dtype each parameter was created with; otherwise they are copied in.
    """
    own = module.state_dict()
    check_state_dict(
        {k: v.shape for k, v in own.items()}, state_dict, source=source, ignore_unexpected=ignore_unexpected
    )
    wanted = {k: v for k, v in state_dict.items() if k in own}
    if assign:
        wanted = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in wanted.items()}
    module.load_state_dict(wanted, strict=True, assign=assign)

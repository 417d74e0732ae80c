"""The helpers the network families share: key maps both ways, and the recipe-config rules."""

from __future__ import annotations

import attrs
import pytest
from rcm_plugins.common.keys import KeyMap
from rcm_plugins.common.network_config import (
    CheckpointWeights,
    arch_fields,
    check_architecture_source,
    check_weights_kind,
    reads_weights_config,
)

from rcm_registry.errors import CheckpointError


def test_key_map_renames_both_ways_and_passes_unknown_names() -> None:
    keys = KeyMap({"head.linear": "proj_out"}, {"attn.q": "attn1.to_q"}, diffusers_blocks="transformer_blocks")
    native = {"head.linear.weight": 1, "blocks.3.attn.q.bias": 2, "blocks.3.other.weight": 3, "extra": 4}
    diffusers = keys.to_diffusers(native)
    assert diffusers == {
        "proj_out.weight": 1,
        "transformer_blocks.3.attn1.to_q.bias": 2,
        "transformer_blocks.3.other.weight": 3,
        "extra": 4,
    }
    assert keys.from_diffusers(diffusers) == native


def test_key_map_refuses_a_table_that_is_not_one_to_one() -> None:
    with pytest.raises(ValueError, match=r"block key table is not one-to-one: norm2"):
        KeyMap({}, {"norm2": "norm2", "norm3": "norm2"})


@attrs.frozen
class _Arch:
    width: int
    depth: int
    flag: bool = False


@attrs.define(kw_only=True)
class _Config:
    size: str | None = None
    weights: CheckpointWeights | None = None
    width: int | None = None
    depth: int | None = None


def test_architecture_comes_from_size_or_weights_and_fields_override() -> None:
    def fields(config: _Config) -> dict[str, object]:
        return arch_fields(
            config,
            _Arch,
            ("width", "depth"),
            defaults={"flag": True},
            preset=lambda size: {"width": 8, "depth": 2} if size == "small" else {},
            from_weights=lambda weights: _Arch(width=16, depth=4),
        )

    assert fields(_Config(size="small", depth=3)) == {"flag": True, "width": 8, "depth": 3}
    assert fields(_Config(weights=CheckpointWeights("ckpt"), width=5)) == {"flag": False, "width": 5, "depth": 4}
    # Every required field given: the weights' config.json is not read.
    full = _Config(weights=CheckpointWeights("ckpt"), width=5, depth=6)
    assert not reads_weights_config(full, ("width", "depth"))
    assert fields(full) == {"flag": True, "width": 5, "depth": 6}


def test_config_and_kind_errors_say_what_to_give() -> None:
    with pytest.raises(ValueError, match=r"give `size` \(a, b\).*all of width, depth \(missing: depth\)"):
        check_architecture_source(_Config(width=4), ("width", "depth"), ("a", "b"))
    check_architecture_source(_Config(size="a"), ("width", "depth"), ("a", "b"))
    names = ("net-t2v", "net-i2v")
    from_file = _Config(weights=CheckpointWeights("ckpt"), width=4)
    with pytest.raises(CheckpointError, match="ckpt: this is a checkpoint for net-t2v, not net-i2v"):
        check_weights_kind(from_file, ("width", "depth"), wanted=True, found=lambda w: False, names=names)
    check_weights_kind(from_file, ("width", "depth"), wanted=False, found=lambda w: False, names=names)
    # Architecture from the size: the weights' config.json is not read.
    sized = _Config(size="a", weights=CheckpointWeights("ckpt"))
    check_weights_kind(sized, ("width", "depth"), wanted=True, found=lambda w: False, names=names)

"""Exporting our Cosmos network: diffusers and native directories, loadable and complete or absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from network_testkit import ExportChecks
from rcm_plugins.common.diffusers_interop import from_pretrained_strict
from rcm_plugins.cosmos import checkpoint


class TestCosmosExport(ExportChecks):
    checkpoint = checkpoint
    kinds = ("cosmos-predict2-t2i", "cosmos-predict2-v2w")
    # No padding-mask channel (diffusers would need torchvision to run it); diffusers' q/k eps, which its
    # config cannot carry, so that both sides compute the same function.
    diffusers_overrides: ClassVar[dict[str, Any]] = {
        "concat_padding_mask": False,
        "learnable_pos_embed": True,
        "qk_norm_eps": 1e-5,
    }
    native_class = "MiniTrainDIT"
    native_config: ClassVar[dict[str, Any]] = {"_class_name": "MinimalV1LVGDiT"}
    width_key = "model_channels"
    native_key = "blocks.0.adaln_modulation_mlp.2.weight"
    cast_key = "x_embedder.proj.1.weight"
    head_prefix = "final_layer."
    missing_key = r"final_layer\.linear\.weight"

    def inputs(self, net: Any, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        out = {"x": torch.randn(2, 16, 3, 4, 6, generator=g), "t": torch.rand(2, generator=g)}
        out["text"] = torch.randn(2, 5, net.arch.text_dim, generator=g)
        if net.arch.v2w:
            mask = torch.zeros(2, 1, 3, 4, 6)
            mask[:, :, :1] = 1.0
            out["condition_mask"] = mask
        return out

    def ours(self, net: Any, i: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return net(i["x"], i["t"], i["text"], condition_mask=i.get("condition_mask"))

    def diffusers_output(self, directory: Path, net: Any, i: dict[str, torch.Tensor]) -> torch.Tensor:
        # Imported here: the native-export checks need no diffusers.
        import diffusers

        ref = from_pretrained_strict(diffusers.CosmosTransformer3DModel, directory)
        assert ref.config.in_channels == (17 if net.arch.v2w else 16)
        with torch.no_grad():
            return ref(
                i["x"],
                i["t"],
                i["text"],
                fps=net.default_fps,
                condition_mask=i.get("condition_mask"),
                return_dict=False,
            )[0]

"""Exporting our Wan network: diffusers and native directories, loadable and complete or absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from network_testkit import ExportChecks
from rcm_plugins.wan import checkpoint


class TestWanExport(ExportChecks):
    checkpoint = checkpoint
    kinds = ("wan2.1-t2v", "wan2.1-i2v")
    native_class = "WanModel"
    native_config: ClassVar[dict[str, Any]] = {"_class_name": "WanModel", "model_type": "i2v"}
    width_key = "dim"
    native_key = "blocks.0.cross_attn.k_img.weight"
    cast_key = "head.modulation"
    head_prefix = "head."
    missing_key = r"head\.modulation"

    def inputs(self, net: Any, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        arch = net.arch
        out = {"x": torch.randn(2, 16, 3, 4, 6, generator=g), "t": torch.rand(2, generator=g) * 1000}
        out["text"] = torch.randn(2, 512 if arch.i2v else 6, arch.text_dim, generator=g)
        if arch.i2v:
            out["image"] = torch.randn(2, 3, arch.image_dim, generator=g)
            out["latent"] = torch.randn(2, 20, 3, 4, 6, generator=g)
        return out

    def ours(self, net: Any, i: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            if "image" in i:
                return net(i["x"], i["t"], i["text"], image=i["image"], image_latent=i["latent"])
            return net(i["x"], i["t"], i["text"])

    def diffusers_output(self, directory: Path, net: Any, i: dict[str, torch.Tensor]) -> torch.Tensor:
        # Imported here: the native-export checks need no diffusers (the helpers skip without it).
        from _wan_helpers import from_pretrained

        ref = from_pretrained(directory)
        with torch.no_grad():
            inputs = torch.cat((i["x"], i["latent"]), 1) if "latent" in i else i["x"]
            return ref(inputs, i["t"], i["text"], encoder_hidden_states_image=i.get("image"), return_dict=False)[0]

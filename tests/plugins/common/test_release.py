"""The rCM release's checkpoints, written here in its layout (tiny random Wan2.1): ``.pt`` files, the trainer's
single-file checkpoint and its DCP directories read into the same tensors; the role picks the prefix; what
does not fit, is damaged or would run code is refused by name."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from rcm_plugins.common import release, weights
from rcm_plugins.wan import checkpoint

from rcm_registry import registry
from rcm_registry.errors import CheckpointError, RecipeError, UnsafeCheckpointError, UserError


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})


@pytest.fixture(scope="module")
def nets() -> dict[str, torch.nn.Module]:
    """Three different networks: what the release stores as net., net_ema. and net_fake_score."""
    return {"net.": tiny(1), "net_ema.": tiny(2), "net_fake_score.": tiny(3)}


def release_state(nets: dict[str, torch.nn.Module], prefixes: tuple[str, ...] = weights.RELEASE_PREFIXES) -> dict:
    """The release trainer's model state dict: each network's native keys under its prefix, patch_embedding
    as the release's Linear (dim, C·kt·kh·kw)."""
    out: dict[str, torch.Tensor] = {}
    for prefix in prefixes:
        for key, value in nets[prefix].state_dict().items():
            out[prefix + key] = value.reshape(value.shape[0], -1) if key == "patch_embedding.weight" else value
    return out


def load(path: Path, **weights_section: Any) -> torch.nn.Module:
    return registry().build(
        "network", "wan2.1-t2v", size="tiny", attention={"use": "math"}, weights={"path": str(path), **weights_section}
    )


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].shape == sb[key].shape and torch.equal(sa[key], sb[key]), key
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 1, 4, 6, generator=g)
    text = torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        assert torch.equal(a(x, torch.tensor([500.0]), text), b(x, torch.tensor([500.0]), text))


def test_a_release_pt_loads_each_role(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    file = tmp_path / "ckpt.pt"
    torch.save(release_state(nets), file)
    assert weights.is_rcm_release(file)
    assert_same(load(file), nets["net_ema."])  # default: the student's EMA, when there is one
    assert_same(load(file, role="teacher"), nets["net_ema."])
    assert_same(load(file, ema=False), nets["net."])
    assert_same(load(file, role="student", ema=False, format="rcm-release"), nets["net."])
    assert_same(load(file, role="fake_score"), nets["net_fake_score."])


def test_a_published_pt_holds_the_ema_as_net(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    # scripts/dcp_to_pth.py: net_ema.* renamed net.*, bf16.
    state = {k: v.to(torch.bfloat16) for k, v in release_state(nets, ("net.",)).items()}
    torch.save(state, tmp_path / "rCM.pt")
    loaded = load(tmp_path / "rCM.pt")
    for key, value in nets["net."].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(torch.bfloat16).float()), key


def test_the_trainer_dcp_directory_gives_the_same_tensors(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    state: dict[str, Any] = dict(release_state(nets))
    # TransformerEngine's per-module state: DCP stores it as pickled bytes, never read here.
    state["net.blocks.0.self_attn.attn_op._extra_state"] = io.BytesIO(b"te")
    step = tmp_path / "checkpoints" / "iter_000000010"
    dcp.save(state, checkpoint_id=str(step / "model"), no_dist=True)
    dcp.save({"iteration": torch.tensor(10)}, checkpoint_id=str(step / "trainer"), no_dist=True)
    for path in (step, step / "model"):  # the trainer's checkpoint folder, or its model/ directory
        assert weights.is_rcm_release(path)
        assert_same(load(path), nets["net_ema."])
        assert_same(load(path, ema=False), nets["net."])
        assert_same(load(path, role="fake_score"), nets["net_fake_score."])


def test_a_single_file_trainer_checkpoint_reads_its_model_only(
    tmp_path: Path, nets: dict[str, torch.nn.Module]
) -> None:
    net = nets["net."]
    optimizer = torch.optim.AdamW(net.parameters())
    trainer = {
        "model": release_state(nets, ("net.", "net_ema.")),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": 3},
        "grad_scaler": {},
        "iteration": 3,
    }
    torch.save(trainer, tmp_path / "iter_000000003.pt")
    assert_same(load(tmp_path / "iter_000000003.pt"), nets["net_ema."])
    torch.save({**trainer, "extra": 1}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt: a trainer checkpoint with entries .*: extra"):
        release.open_release(tmp_path / "odd.pt")


def test_a_missing_network_lists_the_prefixes_found(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    file = tmp_path / "critic.pt"
    torch.save(release_state(nets, ("net_fake_score.",)), file)
    n = len(nets["net."].state_dict())
    with pytest.raises(UserError) as info:
        load(file)
    text = str(info.value)
    assert str(file) in text and "looked for net_ema. or net." in text and f"net_fake_score. ({n} keys)" in text
    student = tmp_path / "student.pt"
    torch.save(release_state(nets, ("net.",)), student)
    with pytest.raises(UserError, match=r"looked for net_fake_score\.\); it holds net\. "):
        load(student, role="fake_score")


def test_unknown_keys_are_refused(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    state = release_state(nets, ("net.",))
    torch.save({**state, "net.blocks.0.extra.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(UserError, match=r"unexpected keys \(1\):\n    blocks\.0\.extra\.weight"):
        load(tmp_path / "extra.pt")
    torch.save({**state, "optimizer.lr": torch.zeros(1)}, tmp_path / "stray.pt")
    with pytest.raises(UserError, match=r"keys outside the rCM release's network prefixes .*: optimizer\.lr"):
        load(tmp_path / "stray.pt", format="rcm-release")
    assert not weights.is_rcm_release(tmp_path / "stray.pt")  # auto: not every key is a network's


class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"net.head.head.weight": torch.zeros(2), "payload": _Shell(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refused: its pickle calls (posix|os)\.system"):
        weights.is_rcm_release(tmp_path / "evil.pt")
    with pytest.raises(RecipeError, match=r"networks\.student\.weights: .*evil\.pt: refused"):
        _validate(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_dcp_metadata_with_code_is_refused(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    dcp.save(release_state(nets, ("net.",)), checkpoint_id=str(tmp_path / "model"), no_dist=True)
    marker = tmp_path / "ran"
    (tmp_path / "model" / ".metadata").write_bytes(pickle.dumps(_Shell(marker)))
    with pytest.raises(UserError, match=r"\.metadata: refused: its pickle calls (posix|os)\.system"):
        load(tmp_path / "model")
    assert not marker.exists()


def test_damaged_files_are_named(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    file = tmp_path / "whole.pt"
    torch.save(release_state(nets, ("net.",)), file)
    data = file.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.pt: not a complete torch\.save file \(truncated or damaged"):
        load(tmp_path / "cut.pt")
    dcp.save(release_state(nets, ("net.",)), checkpoint_id=str(tmp_path / "model"), no_dist=True)
    for shard in (tmp_path / "model").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match=r"model: cannot read the DCP checkpoint's tensors"):
        load(tmp_path / "model")


def test_role_and_ema_mean_nothing_for_a_one_network_layout(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    native = checkpoint.export(nets["net."], tmp_path / "native", format="native")
    with pytest.raises(UserError, match=r"weights\.role chooses a network"):
        load(native, role="student")
    with pytest.raises(CheckpointError, match="the rCM release keeps no EMA of the fake score"):
        release.candidate_prefixes("fake_score", True)


def test_export_round_trips_through_the_release_layout(tmp_path: Path, nets: dict[str, torch.nn.Module]) -> None:
    net = nets["net_ema."]
    out = net.export(tmp_path / "student.pt", format="rcm-release", dtype=torch.float32)
    stored = torch.load(out, weights_only=True)
    assert all(k.startswith("net.") for k in stored)
    # What the release's inference script does: drop net. and load into its WanModel (Linear patch embedding).
    assert stored["net.patch_embedding.weight"].shape == (64, 16 * 1 * 2 * 2)
    assert_same(load(out), net)
    default = net.export(tmp_path / "bf16.pt", format="rcm-release", dtype=torch.bfloat16)
    assert {v.dtype for v in torch.load(default, weights_only=True).values()} == {torch.bfloat16}
    with pytest.raises(CheckpointError, match="already exists"):
        net.export(out, format="rcm-release")
    with pytest.raises(ValueError, match=r"name it FILE\.pt"):
        net.export(tmp_path / "folder", format="rcm-release")


def _validate(path: Path) -> None:
    from rcm_registry.recipe.validate import validate_recipe

    data = {
        "networks": {"student": {"use": "wan2.1-t2v", "size": "tiny", "weights": {"path": str(path)}}},
        "phases": {"student": {"losses": [{"use": "flow_matching"}], "optimizer": {"use": "adamw", "lr": 1.0e-3}}},
        "data": {"use": "gaussian_mixture_2d"},
        "schedule": {"use": "rectified_flow"},
        "run": {"iterations": 1},
    }
    validate_recipe(data, registry(), "release-test")


def test_a_release_expert_file_loads_into_a_one_expert_wan22_network(tmp_path: Path) -> None:
    # The release's Wan2.2 I2V A14B checkpoints are one .pt per expert (net.-prefixed, Linear patch embedding).
    torch.manual_seed(4)
    build = registry().build
    both = build("network", "wan2.2-i2v-a14b", size="tiny", attention={"use": "math"})
    expert = both.expert("high_noise")
    torch.save(checkpoint.to_release(expert.state_dict()), tmp_path / "high.pt")
    one = build(
        "network", "wan2.2-i2v-a14b", size="tiny", expert="high_noise", attention={"use": "math"},
        weights={"path": str(tmp_path / "high.pt")},
    )  # fmt: skip
    for key, value in expert.state_dict().items():
        assert torch.equal(one.expert("high_noise").state_dict()[key], value), key
    with pytest.raises(UserError, match="an rCM release checkpoint holds one expert"):
        build("network", "wan2.2-i2v-a14b", size="tiny", weights={"path": str(tmp_path / "high.pt")})

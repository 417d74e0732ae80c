"""Broken rCM release tar shards: `rcm validate` and `rcm run` exit 2 naming the shard and the member, with
no traceback and no run directory, one case per kind of bad input and all of them together."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error
from rcm_registry.testing.rcm_release_tars import RELEASE_DAMAGE, torch_bytes, write_release_dataset

ROOT = Path(__file__).resolve().parents[3]
RECIPE = str(ROOT / "recipes/wan2.1/t2v_tiny_rcm_release_data.yaml")
LATENT, EMBED = (16, 3, 4, 6), (5, 32)  # what the tiny Wan network takes


def tiny_data(root: Path) -> Path:
    write_release_dataset(root, (3, 4, 2, 5), latent_shape=LATENT, embed_shape=EMBED)
    return root


def refused_by_validate_and_run(tmp_path: Path, data: Path, *named: str, extra: tuple[str, ...] = ()) -> None:
    run_dir = tmp_path / "run"
    sets = ("--set", f"data.path={data}", *extra)
    assert_user_error(run_cli("validate", RECIPE, *sets), named)
    assert_user_error(run_cli("run", RECIPE, *sets, "--out", str(run_dir), "--no-progress"), named, absent=[run_dir])


def test_the_tiny_recipe_trains_on_intact_shards(tmp_path: Path) -> None:
    data = tiny_data(tmp_path / "data")
    (data / "shard_000004.tar.tmp").write_bytes(b"half")  # still being written: skipped with a note
    result = run_cli("validate", RECIPE, "--set", f"data.path={data}")
    assert result.code == 0, result.err
    assert "note: data (rcm_tar_shards)" in result.err and "skipped 1 shard(s) still being written" in result.err
    result = run_cli("run", RECIPE, "--set", f"data.path={data}", "--out", str(tmp_path / "run"), "--no-progress")
    assert result.code == 0, result.err
    assert (tmp_path / "run" / "checkpoints").is_dir()


@pytest.mark.parametrize(
    ("damage", "named"), [(d, n) for _, d, n in RELEASE_DAMAGE], ids=[n for n, _, _ in RELEASE_DAMAGE]
)
def test_each_bad_input(tmp_path: Path, damage, named: list[str]) -> None:
    data = tmp_path / "data"
    write_release_dataset(data)  # the table's shapes: a validation error comes before any network is built
    damage(data)
    refused_by_validate_and_run(tmp_path, data, *named)


def test_every_bad_input_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_release_dataset(data)
    for _, damage, _ in RELEASE_DAMAGE:
        damage(data)
    (tmp_path / "neg.pt").write_bytes(torch_bytes([1, 2]))
    named = [part for _, _, parts in RELEASE_DAMAGE for part in parts]
    refused_by_validate_and_run(
        tmp_path,
        data,
        *named,
        "neg.pt: holds a list, not a tensor",
        "problems in recipe",
        extra=("--set", f"data.negative={tmp_path / 'neg.pt'}"),
    )
    assert not (tmp_path / "RAN").exists()


def test_no_shards_and_a_missing_negative_file(tmp_path: Path) -> None:
    refused_by_validate_and_run(tmp_path, tmp_path / "nowhere", "nowhere: no such directory, tar file or glob")
    data = tiny_data(tmp_path / "data")
    refused_by_validate_and_run(
        tmp_path,
        data,
        "missing.pt: no such negative-prompt embedding file",
        extra=("--set", f"data.negative={tmp_path / 'missing.pt'}"),
    )
    refused_by_validate_and_run(
        tmp_path, data, "frames: 4, but the latents have 3 frames", extra=("--set", "data.frames=4")
    )


@pytest.mark.parametrize(
    ("latent", "embed", "named"),
    [
        ((8, 3, 4, 6), EMBED, "in_channels = 16"),  # latent channels against the network's
        (LATENT, (5, 16), "text_dim"),  # the umT5 width against the network's text width
        ((16, 3, 5, 6), EMBED, "multiple of 2"),  # height against the patch size
    ],
    ids=["channels", "text width", "patch"],
)
def test_shards_the_network_cannot_take(tmp_path: Path, latent, embed, named: str) -> None:
    """The shards' shapes (from their index) are checked against the network before any run directory."""
    data = tmp_path / "data"
    write_release_dataset(data, (2, 2), latent_shape=latent, embed_shape=embed)
    refused_by_validate_and_run(tmp_path, data, named, "networks.teacher")

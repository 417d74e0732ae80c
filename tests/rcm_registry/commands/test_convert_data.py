"""`rcm convert-data`: the release's samples come out of `latent_shards` as they went in; an interrupted
conversion continues to the output an uninterrupted one writes; bad input or settings exit 2, creating nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rcm_plugins.data.latent_shards_dataset import open_dataset
from rcm_plugins.data.latent_shards_format import ShardIndex
from rcm_plugins.data.latent_shards_writer import LatentShardsWriter
from safetensors.torch import load_file

from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error
from rcm_registry.testing.rcm_release_tars import (
    ReleaseSample,
    drop_embedding,
    torch_bytes,
    write_release_dataset,
)

COUNTS = (3, 4, 2, 5)


@pytest.fixture
def written(tmp_path: Path) -> list[ReleaseSample]:
    return write_release_dataset(tmp_path / "src", COUNTS)


def convert(tmp_path: Path, out: str, *options: str) -> str:
    result = run_cli("convert-data", str(tmp_path / "src"), "--out", str(tmp_path / out), *options)
    assert result.code == 0, result.err
    return result.out


def shard_tensors(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(root.glob("shard-*.safetensors"))}


def test_latent_shards_reads_back_the_release_samples(tmp_path: Path, written: list[ReleaseSample]) -> None:
    negative = torch.full((6, 8), -1.0, dtype=torch.bfloat16)
    (tmp_path / "neg.pt").write_bytes(torch_bytes(negative))
    out = convert(tmp_path, "out", "--shard-size", "4", "--negative", str(tmp_path / "neg.pt"))
    assert "shard 1/4: 4 samples written" in out and "shard 4/4: 2 samples written" in out
    assert out.endswith(f"wrote 4 shard(s), 0 already done, 0 left: 14 samples in 4 shards under {tmp_path / 'out'}\n")
    ds = open_dataset(tmp_path / "out", prefetch=0, shuffle=False, mask_key="text_mask")
    batch = ds.next_batch(len(written), torch.Generator())
    for i, sample in enumerate(written):
        assert torch.equal(batch.x0[i], sample.latent.float())
        assert torch.equal(batch.condition["text"][i], sample.embed.float())
        assert torch.equal(batch.condition["text_mask"][i], sample.embed.abs().amax(-1) > 0)
    assert batch.null_condition is not None and torch.all(batch.null_condition["text"] == -1.0)
    assert ds.captions(torch.arange(14)) == [s.prompt for s in written]
    stored = shard_tensors(tmp_path / "out")["shard-000001.safetensors"]
    assert stored["latents"].dtype == torch.bfloat16 and stored["prompt_index"].tolist() == [4, 5, 6, 7]


def test_frames_are_cut_as_the_dataset_cuts_them(tmp_path: Path, written: list[ReleaseSample]) -> None:
    convert(tmp_path, "out", "--frames", "1")
    assert ShardIndex.read(tmp_path / "out").sample_shape == (4, 1, 2, 2)
    x0 = open_dataset(tmp_path / "out", prefetch=0, shuffle=False).next_batch(2, torch.Generator()).x0
    assert torch.equal(x0[1], written[1].latent[:, :1].float())


def test_an_interrupted_conversion_continues_to_the_same_output(
    tmp_path: Path, written: list[ReleaseSample], monkeypatch: pytest.MonkeyPatch
) -> None:
    convert(tmp_path, "whole", "--shard-size", "3")
    real = LatentShardsWriter.write_shard
    calls = []

    def killed_on_the_third(self, k, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(k)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, k, *args, **kwargs)

    monkeypatch.setattr(LatentShardsWriter, "write_shard", killed_on_the_third)
    result = run_cli("convert-data", str(tmp_path / "src"), "--out", str(tmp_path / "cut"), "--shard-size", "3")
    assert result.code == 130
    assert sorted(shard_tensors(tmp_path / "cut")) == ["shard-000000.safetensors", "shard-000001.safetensors"]
    monkeypatch.setattr(LatentShardsWriter, "write_shard", real)
    out = convert(tmp_path, "cut", "--shard-size", "3")
    assert "shard 1/5: 3 samples, already written" in out and "wrote 3 shard(s), 2 already done, 0 left" in out
    whole, cut = shard_tensors(tmp_path / "whole"), shard_tensors(tmp_path / "cut")
    assert whole.keys() == cut.keys()
    for name, tensors in whole.items():
        assert tensors.keys() == cut[name].keys() and all(torch.equal(v, cut[name][k]) for k, v in tensors.items())
    # safetensors orders a file's metadata entries as it likes, so equal shards may differ in bytes and sha256
    entries = [(e.file, e.count) for e in ShardIndex.read(tmp_path / "cut").shards]
    assert entries == [(e.file, e.count) for e in ShardIndex.read(tmp_path / "whole").shards]
    assert sorted(p.name for p in (tmp_path / "cut").iterdir() if p.name.startswith(".")) == []


def test_max_shards_stops_and_a_rerun_finishes(tmp_path: Path, written: list[ReleaseSample]) -> None:
    assert "wrote 1 shard(s), 0 already done, 3 left" in convert(
        tmp_path, "out", "--shard-size", "4", "--max-shards", "1"
    )
    assert ShardIndex.read(tmp_path / "out").total == 4  # a partial output is already a dataset
    assert "wrote 3 shard(s), 1 already done, 0 left" in convert(tmp_path, "out", "--shard-size", "4")
    assert open_dataset(tmp_path / "out", prefetch=0).total == 14


def test_a_rerun_with_other_settings_or_input_is_refused(tmp_path: Path, written: list[ReleaseSample]) -> None:
    convert(tmp_path, "out", "--shard-size", "4")
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    assert_user_error(run_cli("convert-data", src, "--out", out, "--shard-size", "5"), "shard_size: 4 then, 5 now")
    write_release_dataset(tmp_path / "src", (3, 4, 2, 5, 1))
    assert_user_error(run_cli("convert-data", src, "--out", out, "--shard-size", "4"), "source_shards: 4 then, 5 now")


def test_bad_input_creates_no_output(tmp_path: Path, written: list[ReleaseSample]) -> None:
    out = tmp_path / "out"
    drop_embedding(tmp_path / "src")
    result = run_cli("convert-data", str(tmp_path / "src"), "--out", str(out))
    assert_user_error(result, "shard_000003.tar [000000009.embed.pt]: missing", absent=[out])
    src = str(tmp_path / "src")
    assert_user_error(run_cli("convert-data", str(tmp_path / "nowhere"), "--out", str(out)), "nowhere", absent=[out])
    assert_user_error(
        run_cli("convert-data", src, "--out", str(out), "--from", "latent_shard"), "latent_shard", absent=[out]
    )
    assert_user_error(
        run_cli("convert-data", src, "--out", str(out), "--from", "latent_shards"),
        "--from latent_shards: this dataset cannot be converted",
        absent=[out],
    )
    assert_user_error(run_cli("convert-data", src, "--out", str(out), "--frames", "0"), "frames", absent=[out])


def test_an_output_of_other_shards_is_refused(tmp_path: Path, written: list[ReleaseSample]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-000000.safetensors").write_bytes(b"")
    result = run_cli("convert-data", str(tmp_path / "src"), "--out", str(out))
    assert_user_error(result, "holds shards not written by `rcm synth` or `rcm convert-data`")

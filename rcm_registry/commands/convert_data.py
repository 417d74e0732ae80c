"""``rcm convert-data SRC --out DIR``: another layout's training data rewritten as latent shards.

The input is read by a registered dataset (``--from``, default ``rcm_tar_shards``: the rCM release's tar
shards) whose config converts (:class:`rcm_registry.protocols.ConvertsData`); the output is what the
``latent_shards`` dataset reads. Resumable: a rerun continues an existing output directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rcm_registry.commands._shared import add_command
from rcm_registry.errors import UnknownComponentError, UserError

NAME = "convert-data"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        NAME,
        cmd_convert_data,
        summary="Rewrite training data of another layout (the rCM release's tar shards) as latent shards "
        "(resumable: rerun to continue).",
        example="rcm convert-data /data/rcm-wan-14b-480p --negative umT5_wan_negative_emb.pt --frames 20 "
        "--out /data/wan-480p",
    )
    p.add_argument("src", help="the input: a directory of shard_*.tar files or a glob of them (rcm_tar_shards)")
    p.add_argument("--out", required=True, help="latent-shard directory (created; an existing one is continued)")
    p.add_argument(
        "--from",
        dest="source",
        default="rcm_tar_shards",
        help="the dataset that reads SRC (default rcm_tar_shards)",
    )
    p.add_argument("--negative", help="the negative prompt's embedding file, stored as negative.safetensors")
    p.add_argument("--frames", type=int, help="keep the first N latent frames of each sample (default: all)")
    p.add_argument("--shard-size", type=int, default=64, help="samples per output shard (default 64)")
    p.add_argument("--max-shards", type=int, default=None, help="stop after writing this many shards")
    return p


def cmd_convert_data(args: argparse.Namespace) -> int:
    from rcm_registry.plugin_loading import registry
    from rcm_registry.protocols import data_check, data_conversion

    reg = registry()
    reg.check_builtins()
    if reg.find("dataset", args.source) is None:
        raise UnknownComponentError(f"--from: unknown dataset {args.source!r} (rcm list dataset)")
    options: dict[str, Any] = {"path": args.src}
    for key in ("negative", "frames"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    config = reg.config("dataset", args.source, **options)
    convert = data_conversion(config)
    if convert is None:
        raise UserError(f"--from {args.source}: this dataset cannot be converted (its config has no convert_data)")
    for note in data_check(config).notes:
        print(f"note: {note}", file=sys.stderr)
    result = convert(Path(args.out), shard_size=args.shard_size, max_shards=args.max_shards, progress=print)
    print(
        f"wrote {result.written} shard(s), {result.kept} already done, {result.remaining} left: "
        f"{result.samples} samples in {result.shards} shards under {args.out}"
    )
    return 0

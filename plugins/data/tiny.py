"""Tiny random codec checkpoints, built offline, for tests, CI recipes and trying the commands out.

:func:`write_tiny_codecs` writes, under one folder, the layout of a diffusers Wan2.1 repository's codec
folders: ``text_encoder/`` (a 1-layer umT5 with ``d_model = text_dim``), ``tokenizer/`` (a word-level
tokenizer trained on the words given) and ``vae/`` (a 2-level ``AutoencoderKLWan`` with ``z_dim`` latent
channels, 16 as in Wan2.1, ×2 in time and space). The weights are random: only the shapes and the code
paths mean anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from rcm_registry.errors import UserError

#: Words every tiny tokenizer knows, besides those of the prompts it is built for.
BASE_WORDS = "a an the of in on at with and red blue green cat dog fox car sea sky snow night day".split()


def write_tiny_codecs(
    root: str | Path, *, words: Iterable[str] = (), text_dim: int = 32, z_dim: int = 16, seed: int = 0
) -> dict[str, Path]:
    """Write ``text_encoder/``, ``tokenizer/`` and ``vae/`` under ``root``; returns their paths by name."""
    try:
        from diffusers import AutoencoderKLWan
        from transformers import UMT5Config, UMT5EncoderModel
    except ImportError as exc:
        raise UserError(
            f"tiny codecs need diffusers and transformers ({exc}): pip install 'rcm-registry[wan]'"
        ) from None
    root = Path(root)
    paths = {name: root / name for name in ("text_encoder", "tokenizer", "vae")}
    torch.manual_seed(seed)

    tokenizer = word_tokenizer(words)
    tokenizer.save_pretrained(str(paths["tokenizer"]))

    config = UMT5Config(
        vocab_size=tokenizer.vocab_size,
        d_model=text_dim,
        d_kv=8,
        d_ff=2 * text_dim,
        num_layers=1,
        num_heads=max(1, text_dim // 8),
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    UMT5EncoderModel(config).save_pretrained(str(paths["text_encoder"]))

    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[True],
        latents_mean=[0.1 * (i % 3 - 1) for i in range(z_dim)],
        latents_std=[1.0 + 0.25 * (i % 4) for i in range(z_dim)],
    )
    vae.save_pretrained(str(paths["vae"]))
    return paths


def word_tokenizer(words: Iterable[str] = ()) -> Any:
    """A T5-style word-level tokenizer (pad 0, eos 1, unk 2; every sequence ends with ``</s>``) knowing
    :data:`BASE_WORDS` and ``words``: stands in for a T5 sentencepiece model that cannot be downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    vocabulary = sorted(set(BASE_WORDS) | {w.lower() for w in words})
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [" ".join(vocabulary)], trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def main(argv: list[str] | None = None) -> int:
    """``python -m rcm_plugins.data.tiny CODECS [--teacher DIR]``: the tiny codecs (and a tiny random Wan2.1
    teacher in the native layout) for trying the commands out; a user error is one line and exit code 2, and
    a folder is written whole or not at all."""
    import argparse
    import sys

    from rcm_registry.atomic import atomic_directory

    parser = argparse.ArgumentParser(prog="python -m rcm_plugins.data.tiny", description=main.__doc__)
    parser.add_argument("codecs", help="the folder to write text_encoder/, tokenizer/ and vae/ into (a new one)")
    parser.add_argument("--teacher", help="also write a tiny random wan2.1-t2v network here (native layout)")
    parser.add_argument("--words", nargs="*", default=[], help="more words the tokenizer knows")
    args = parser.parse_args(argv)
    try:
        with atomic_directory(args.codecs) as tmp:
            write_tiny_codecs(tmp, words=args.words)
        print(f"wrote {args.codecs}: text_encoder/, tokenizer/, vae/")
        if args.teacher:
            import rcm_registry as rr

            torch.manual_seed(0)
            net = rr.registry().build("network", "wan2.1-t2v", size="tiny", attention={"use": "math"})
            print(f"wrote {net.export(args.teacher, format='native')}: a tiny random wan2.1-t2v (native layout)")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

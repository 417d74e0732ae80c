"""Train the 3-D video classifier whose features the moving-digits video metrics use; report its accuracy.

    python benchmarks/train_video_classifier.py [--out runs/moving_digits/video_classifier.safetensors]
        [--frames 9 --canvas 32 --digit-size 16 --directions 8 --speed 1 3] [--steps 2000] [--device cuda]

Trains on fresh clips of the train digits (80 % of the digits, split seed 0, as `digits` splits them) every
step, to read each clip's class and its digit's initial direction; the held-out accuracies are measured on
1000 clips of the other 20 % of the digits. The clip geometry must be the one of the recipes' data
(`recipes/moving_digits/teacher_tiny.yaml` and friends: `--frames 5 --canvas 16 --digit-size 8 --speed 0.5 2`, see
their headers). Deterministic on the CPU for a given seed and thread count. About 4 minutes on one CPU
core at the default size, 2 at the tiny one.
"""

from __future__ import annotations

import argparse
import time

import torch
from rcm_plugins.digits.moving_digits_dataset import MovingDigitsConfig
from rcm_plugins.digits.video_classifier import DEFAULT_VIDEO_PATH, save_video_classifier, train_video_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_VIDEO_PATH)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--canvas", type=int, default=32)
    parser.add_argument("--digit-size", type=int, default=16)
    parser.add_argument("--directions", type=int, default=8)
    parser.add_argument("--speed", type=float, nargs=2, default=[1.0, 3.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = MovingDigitsConfig(
        frames=args.frames,
        canvas=args.canvas,
        digit_size=args.digit_size,
        directions=args.directions,
        speed=tuple(args.speed),
    )
    start = time.perf_counter()
    model, accuracy = train_video_classifier(
        data, seed=args.seed, steps=args.steps, batch_size=args.batch_size, device=args.device
    )
    save_video_classifier(model, args.out, accuracy)
    seconds = time.perf_counter() - start
    print(
        f"held-out class accuracy {accuracy['class_accuracy']:.4f}, direction accuracy "
        f"{accuracy['direction_accuracy']:.4f} ({seconds:.0f} s); weights: {args.out}"
    )


if __name__ == "__main__":
    main()

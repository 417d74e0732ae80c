"""Train the digit classifier whose features the digits metrics use, and report its test accuracy.

    python benchmarks/train_digit_classifier.py [--out runs/digits/classifier.safetensors] [--seed 0]

Trains on the train part of the seeded digits split (80 %, split seed 0) and evaluates on the other
20 %; deterministic on the CPU for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import time

import torch
from rcm_plugins.digits.classifier import DEFAULT_PATH, save_classifier, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_PATH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, accuracy = train_classifier(seed=args.seed, epochs=args.epochs)
    save_classifier(model, args.out, accuracy)
    seconds = time.perf_counter() - start
    print(f"test accuracy {accuracy:.4f} ({seconds:.0f} s); weights: {args.out}")


if __name__ == "__main__":
    main()

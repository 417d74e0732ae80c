"""Wall-clock start-up time of `rcm list`, `rcm plugins` and `rcm validate RECIPE` against a bare `import torch`.

Each command runs ``--repeats`` times in a fresh interpreter (stdout discarded) and the best time counts, as
hyperfine's minimum does: on a shared machine the minimum is the least disturbed run. The commands take
turns (one round runs each once), so a slow spell of the machine hits all of them alike. The overhead
column is a command's best time minus the best time of ``python -c "import torch"``.

    python benchmarks/cli_startup.py [--repeats 5] [--recipe recipes/quickstart/teacher.yaml]

Where the time goes: ``python -X importtime -m rcm_registry.cli validate RECIPE 2> importtime.txt``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def wall_time(command: list[str]) -> float:
    """The wall time of one run of ``command``; a failing run is an error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", default="recipes/quickstart/teacher.yaml")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "rcm_registry.cli"]
    commands = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "rcm list": [*cli, "list"],
        "rcm plugins": [*cli, "plugins"],
        f"rcm validate {args.recipe}": [*cli, "validate", args.recipe],
    }
    best = dict.fromkeys(commands, float("inf"))
    for _ in range(args.repeats):
        for name, command in commands.items():
            best[name] = min(best[name], wall_time(command))
    base = best['python -c "import torch"']
    print(f"| command | best of {args.repeats}: s | over `import torch`: s |")
    print("|---|---:|---:|")
    for name, seconds in best.items():
        print(f"| `{name}` | {seconds:.2f} | {seconds - base:+.2f} |")


if __name__ == "__main__":
    main()

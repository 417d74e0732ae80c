"""Where things are in a run directory (what ``rcm run`` writes), without reading any of it.

``RUN/checkpoints/iter_NNNNNNNN/`` are the checkpoints (complete once ``meta.json`` is there) and
``RUN/checkpoints/latest`` names the newest complete one; :mod:`rcm_registry.engine.checkpoint` reads and
writes them.
"""

from __future__ import annotations

from pathlib import Path

#: The metrics of a run, one JSON object per logged iteration (written by the ``jsonl`` logger).
METRICS_FILE = "metrics.jsonl"
LATEST = "latest"
PREFIX = "iter_"
META = "meta.json"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def is_complete(path: Path) -> bool:
    return path.is_dir() and (path / META).is_file() and path.name.startswith(PREFIX)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when there is none."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return None
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if is_complete(candidate):
            return candidate
    done = sorted(p for p in root.iterdir() if is_complete(p))
    return done[-1] if done else None


def checkpoint_name(iteration: int) -> str:
    """The folder name of checkpoint ``iteration`` under ``checkpoints/``."""
    return f"{PREFIX}{iteration:08d}"


def checkpoint_at(run_dir: Path, iteration: int) -> Path:
    """The complete checkpoint of iteration ``iteration`` of a run; a FileNotFoundError naming the
    iterations there are otherwise (a run keeps only its newest ``run.keep_checkpoints``)."""
    path = checkpoint_root(run_dir) / checkpoint_name(iteration)
    if is_complete(path):
        return path
    root = checkpoint_root(run_dir)
    have = sorted(int(p.name[len(PREFIX) :]) for p in root.iterdir() if is_complete(p)) if root.is_dir() else []
    listed = ", ".join(map(str, have)) or "none"
    raise FileNotFoundError(f"{run_dir}: no complete checkpoint of iteration {iteration} (complete ones: {listed})")


def names_a_run(path: Path) -> bool:
    """Whether ``path`` is a run directory (it has ``checkpoints/``) or one of its checkpoint folders."""
    return checkpoint_root(path).is_dir() or (path / META).is_file()

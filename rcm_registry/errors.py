"""Exceptions the CLI reports as one readable line without a traceback.

:class:`UserError` and its subclasses mean "the user asked for something wrong" (exit code 2);
:class:`TrainingDiverged` means a run stopped because its numbers went non-finite (exit code 1: the input
was valid, the optimisation failed).
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input: a recipe, a file, a command-line argument.

    The CLI prints the message and exits with code 2, without a traceback.
    """


class RecipeError(UserError):
    """One or more problems in a recipe, each on its own line with its YAML path."""

    def __init__(self, problems: Iterable[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        count = len(self.problems)
        lines = [f"{head}{count} problem{'s' if count != 1 else ''} in recipe:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class UnknownComponentError(UserError, KeyError):
    """A component name that no loaded plugin registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginConflictError(UserError):
    """Two plugins register a component of the same kind and name."""


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete or does not fit the recipe."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle would call code when read (a ``.pt`` beyond ``torch.load(weights_only=True)``,
    a DCP ``.metadata`` naming classes other than DCP's own): refused, never unpickled."""


class TrainingDiverged(RuntimeError):
    """Training stopped: a loss became NaN or infinite, gradients stayed non-finite for too many steps in a
    row, or weights about to be checkpointed hold non-finite values. The message names what and the
    iteration."""


class NonFiniteCheckpoint(TrainingDiverged):
    """A checkpoint was about to be written with NaN or infinite values in it; nothing was written."""

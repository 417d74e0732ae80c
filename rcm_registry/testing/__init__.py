"""Helpers for testing rcm-registry and its plugins (used by this project's tests; public for plugin authors)."""

from rcm_registry.testing.cli import CliResult, run_cli, run_cli_subprocess

__all__ = ["CliResult", "run_cli", "run_cli_subprocess"]

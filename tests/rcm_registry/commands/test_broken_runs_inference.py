"""Broken command lines and recipes of the inference options (``--attention``, ``--fp8-linear``,
``inference:``): exit 2, the option or YAML path named in stderr, no traceback, nothing written."""

# ruff: noqa: E501  (the case table reads best one case a line)

from __future__ import annotations

from pathlib import Path

import pytest

from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error, tree

ROOT = Path(__file__).resolve().parents[3]
QUICK = str(ROOT / "recipes/quickstart/teacher.yaml")
SMALL = ["--set", "networks.teacher.width=8", "--set", "run.iterations=2", "--set", "run.batch_size=8"]

CASES = [
    ("sample-unknown-attention", ["sample", "{RUN}", "--attention", "int8_sag", "--out", "s.png"], "--attention int8_sag: unknown attention 'int8_sag'; did you mean 'int8_sage'?"),
    ("sample-network-without-attention", ["sample", "{RUN}", "--attention", "int8_sage", "--out", "s.png"], "network 'teacher' (mlp) has no `attention` setting"),
    ("sample-fp8-without-blocks", ["sample", "{RUN}", "--fp8-linear", "--out", "s.png"], "--fp8-linear / inference.fp8_linear: network Mlp has no transformer blocks"),
    ("run-unknown-inference-attention", ["run", QUICK, "--out", "r", *SMALL, "--set", "inference.attention.use=int8_sag"], "inference.attention.use: unknown attention 'int8_sag'"),
    ("run-inference-fp8-not-bool", ["run", QUICK, "--out", "r", *SMALL, "--set", "inference.fp8_linear=maybe"], "inference.fp8_linear: expected a boolean"),
    ("run-inference-unknown-key", ["run", QUICK, "--out", "r", *SMALL, "--set", "inference.fp16_linear=true"], "inference.fp16_linear"),
]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("inference")
    run = tmp / "quick_run"
    done = run_cli("run", QUICK, "--out", str(run), "--no-progress", *SMALL)
    assert done.code == 0, done.err
    return {"TMP": tmp, "RUN": run}


@pytest.mark.parametrize(("args", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_the_option_named_and_nothing_written(
    args: list[str], named: str, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    filled = [a.replace("{RUN}", str(files["RUN"])) for a in args]
    before_tmp, before_files = tree(tmp_path), tree(files["TMP"])
    result = run_cli(*filled)
    assert_user_error(result, named, tmp_path, before_tmp)
    assert_user_error(result, named, files["TMP"], before_files)


def test_an_inference_only_backend_on_a_trained_network_is_a_validation_error(tmp_path: Path) -> None:
    """int8_sage has no backward: on the critic's network (which no JVP check looks at) validation refuses it,
    naming the YAML path; on the teacher, which no phase trains, it is allowed."""
    recipe = str(ROOT / "recipes/wan2.1/t2v_tiny_rcm.yaml")
    out = tmp_path / "run"
    bad = ("--set", "networks.fake_score.attention={use: int8_sage}")
    for command in (["validate", recipe, *bad], ["run", recipe, *bad, "--out", str(out), "--no-progress"]):
        assert_user_error(run_cli(*command), "networks.fake_score.attention: int8_sage cannot train", absent=[out])
    # The fake score is initialised from the teacher and would inherit its backend: it names its own here.
    teacher_only = (
        "--set",
        "networks.teacher.attention={use: int8_sage}",
        "--set",
        "networks.fake_score.attention={use: math}",
    )
    result = run_cli("validate", recipe, *teacher_only)
    assert result.code == 0, result.err

# ruff: noqa: E501  (the table of cases reads best one case per line)
"""Broken recipes, YAML and values: duplicate keys, tags, non-string role keys, wrong shapes and numbers out of
range. Each case is refused by both ``rcm validate`` and ``rcm run`` with exit code 2, names the file:line or the
YAML path, prints no traceback and creates no run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcm_registry.testing import run_cli
from rcm_registry.testing.cli_cases import assert_user_error

#: The recipe every case edits: a small rCM setup (no weights to read), valid as it is.
GOOD = """\
description: a small rCM recipe the broken cases start from
networks:
  teacher:
    use: mlp
    dim: 2
    width: 16
    depth: 1
    num_classes: 5
  student: {init_from: teacher}
  fake_score: {init_from: teacher}
teacher_wrapper:
  use: rectified_flow
  t_scale: 1.0
  guidance: 2.0
time:
  student: {use: lognormal, mean: 0.0, std: 1.6}
  critic: {use: uniform, low: 0.05, high: 1.5707}
rollout: {use: stochastic_backward, max_steps: 2}
phases:
  student:
    every: 2
    losses:
      - {use: scm, weight: 1.0, tangent_warmup: 2}
      - use: dmd
        weight: 0.3
        start: 2
    optimizer: {use: adamw, lr: 2.0e-4, betas: [0.0, 0.99]}
  critic:
    trains: fake_score
    start: 2
    losses: [{use: fake_score_dsm}]
    optimizer: {use: adamw, lr: 2.0e-4}
data: {use: gaussian_mixture_2d, layout: grid, grid_size: 5, std: 0.1, labels: true, classes: 5}
sample: {use: trigflow_multistep, steps: 2, sigma_max: 80.0, mid_times: [1.1, 0.8]}
run:
  iterations: 4
  batch_size: 8
  seed: 0
  cpu_threads: 1
"""

STUDENT_LR = "    optimizer: {use: adamw, lr: 2.0e-4, betas: [0.0, 0.99]}\n"
TEACHER = "  teacher:\n    use: mlp\n"
SEED = "  seed: 0\n"
GUIDANCE = "  guidance: 2.0\n"
SCM = "      - {use: scm, weight: 1.0, tangent_warmup: 2}\n"
SAMPLE = "sample: {use: trigflow_multistep, steps: 2, sigma_max: 80.0, mid_times: [1.1, 0.8]}\n"
ROLLOUT = "rollout: {use: stochastic_backward, max_steps: 2}\n"
TIME = "time:\n  student: {use: lognormal, mean: 0.0, std: 1.6}\n"
STUDENT_NET = "  student: {init_from: teacher}\n"


def edit(old: str, new: str) -> tuple[str, str]:
    assert old in GOOD, old
    return old, new


# (id, text edits (old -> new) of GOOD, --set overrides, texts expected in stderr)
CASES: list[tuple[str, list[tuple[str, str]], list[str], list[str]]] = [
    # -- duplicate keys: both lines named --------------------------------------------------------------------
    ("dup-top-level", [edit("run:\n", "run: {iterations: 2}\nrun:\n")], [], ["recipe.yaml:36:1: duplicate key 'run' (first at line 35, again at line 36)"]),
    ("dup-nested-block", [edit(SEED, SEED + "  seed: 1\n")], [], ["recipe.yaml:39:3: duplicate key 'seed' (first at line 38, again at line 39)"]),
    ("dup-in-flow-mapping", [edit(STUDENT_LR, "    optimizer: {use: adamw, lr: 2.0e-4, lr: 1.0e-3}\n")], [], ["recipe.yaml:27:41: duplicate key 'lr' (first at line 27, again at line 27)"]),
    ("dup-in-list-item", [edit("        start: 2\n", "        start: 2\n        weight: 1.0\n")], [], ["recipe.yaml:27:9: duplicate key 'weight' (first at line 25, again at line 27)"]),
    ("dup-role", [edit(STUDENT_NET, STUDENT_NET + "  student: {init_from: teacher}\n")], [], ["recipe.yaml:10:3: duplicate key 'student' (first at line 9, again at line 10)"]),
    ("dup-phase", [edit("  critic:\n    trains:", "  student: {}\n  critic:\n    trains:")], [], ["duplicate key 'student' (first at line 20, again at line 28)"]),
    ("dup-use", [edit(TEACHER, TEACHER + "    use: mlp\n")], [], ["recipe.yaml:5:5: duplicate key 'use' (first at line 4, again at line 5)"]),
    ("dup-in-base", [("<base>", "run: {seed: 1, seed: 2}\n"), edit("description:", "base: base.yaml\ndescription:")], [], ["base.yaml:1:16: duplicate key 'seed' (first at line 1, again at line 1)"]),
    ("dup-in-set-value", [], ["--set", "sample={use: trigflow_multistep, steps: 2, steps: 3}"], ["--set sample={use: trigflow_multistep, steps: 2, steps: 3}: duplicate key 'steps'"]),
    # -- tags: named as not allowed, at file:line ----------------------------------------------------------------
    ("tag-python-name", [edit(SEED, "  seed: !!python/name:os.system\n")], [], ["recipe.yaml:38:9: tag !!python/name:os.system is not allowed"]),
    ("tag-python-apply", [edit(GUIDANCE, "  guidance: !!python/object/apply:os.system ['true']\n")], [], ["recipe.yaml:14:13: tag !!python/object/apply:os.system is not allowed"]),
    ("tag-binary", [edit("description: a small", "description: !!binary aGk= #")], [], ["recipe.yaml:1:14: tag !!binary is not allowed"]),
    ("tag-set", [edit("  student: {use: lognormal,", "  student: !!set {lognormal} #")], [], ["recipe.yaml:16:12: tag !!set is not allowed"]),
    ("tag-omap", [edit(ROLLOUT, "rollout: !!omap [use: stochastic_backward]\n")], [], ["recipe.yaml:18:10: tag !!omap is not allowed"]),
    ("tag-timestamp", [edit(SEED, "  seed: !!timestamp 2024-01-01\n")], [], ["recipe.yaml:38:9: tag !!timestamp is not allowed"]),
    ("tag-local", [edit(TEACHER, "  teacher: !include teacher.yaml\n  unused:\n    use: mlp\n")], [], ["recipe.yaml:3:12: tag !include is not allowed"]),
    ("tag-in-set-value", [], ["--set", "run.seed=!!python/name:os.getpid"], ["--set run.seed=!!python/name:os.getpid: tag !!python/name:os.getpid is not allowed"]),
    ("unhashable-key", [edit(SEED, "  ? [1, 2]\n  : 3\n")], [], ["recipe.yaml:", "invalid YAML: found unhashable key"]),
    # -- keys that are not names where roles are expected -----------------------------------------------------
    ("role-int", [edit(STUDENT_NET, "  1: {init_from: teacher}\n")], [], ["networks.1: a name is expected here, got the int 1"]),
    ("role-bool", [edit(STUDENT_NET, "  yes: {init_from: teacher}\n")], [], ["networks.True: a name is expected here, got the boolean True (YAML reads yes/no/on/off/true/false as booleans)"]),
    ("role-null", [edit(STUDENT_NET, "  ~: {init_from: teacher}\n")], [], ["networks.None: a name is expected here, got null"]),
    ("phase-int", [edit("  critic:\n    trains:", "  2:\n    trains:")], [], ["phases.2: a name is expected here, got the int 2"]),
    ("time-role-float", [edit("  critic: {use: uniform,", "  0.5: {use: uniform,")], [], ["time.0.5: a name is expected here, got the float 0.5"]),
    ("codec-role-int", [edit("run:\n", "codecs: {1: {use: umt5, path: x}}\nrun:\n")], [], ["codecs.1: a name is expected here, got the int 1"]),
    ("init-from-list", [edit(STUDENT_NET, "  student: {init_from: [teacher]}\n")], [], ["networks.student.init_from: expected the name of another network role, got a list"]),
    ("init-from-int", [edit(STUDENT_NET, "  student: {init_from: 1}\n")], [], ["networks.student.init_from: expected the name of another network role, got 1"]),
    ("init-from-mapping", [edit(STUDENT_NET, "  student: {init_from: {role: teacher}}\n")], [], ["networks.student.init_from: expected the name of another network role, got a mapping"]),
    # -- wrong shapes --------------------------------------------------------------------------------------------
    ("phases-list", [edit("phases:\n  student:\n", "phases_unused:\n  student:\n"), edit("run:\n", "phases: [student, critic]\nrun:\n")], [], ["phases: expected a mapping, got a list"]),
    ("time-list", [edit(TIME, "time: [1, 2]\nunused:\n  student: {use: lognormal, mean: 0.0, std: 1.6}\n")], [], ["time: expected a mapping, got a list"]),
    ("run-scalar", [edit("run:\n  iterations: 4\n  batch_size: 8\n  seed: 0\n  cpu_threads: 1\n", "run: 5\n")], [], ["run: expected a mapping, got 5"]),
    ("time-role-scalar", [edit("  student: {use: lognormal, mean: 0.0, std: 1.6}\n", "  student: 3\n")], [], ["time.student: expected a time_sampler component ({use: NAME, ...}), got 3"]),
    ("weights-list", [edit(TEACHER, TEACHER + "    weights: []\n")], [], ["networks.teacher.weights: expected a mapping, got a list"]),
    ("use-list", [edit(ROLLOUT, "rollout: {use: [stochastic_backward]}\n")], [], ["rollout.use: required: the name of a registered rollout"]),
    # -- numbers out of range ------------------------------------------------------------------------------------
    ("batch-1e23", [edit("  batch_size: 8\n", "  batch_size: 1e23\n")], [], ["run.batch_size: 1e+23 is out of range for an integer"]),
    ("iterations-above-int64", [edit("  iterations: 4\n", "  iterations: 9223372036854775808\n")], [], ["run.iterations: 9223372036854775808 is out of range for an integer (at most 9223372036854775807, 64-bit)"]),
    ("seed-huge-int", [edit(SEED, "  seed: 1180591620717411303424\n")], [], ["run.seed: 1180591620717411303424 is out of range for an integer"]),
    ("lr-1e39", [edit(STUDENT_LR, "    optimizer: {use: adamw, lr: 1e39, betas: [0.0, 0.99]}\n")], [], ["phases.student.optimizer.lr: 1e+39 is out of range for a float"]),
    ("lr-inf", [edit(STUDENT_LR, "    optimizer: {use: adamw, lr: .inf, betas: [0.0, 0.99]}\n")], [], ["phases.student.optimizer.lr: inf is out of range for a float"]),
    ("lr-nan", [edit(STUDENT_LR, "    optimizer: {use: adamw, lr: .nan, betas: [0.0, 0.99]}\n")], [], ["phases.student.optimizer.lr: nan is out of range for a float"]),
    ("std-huge-int", [edit("mean: 0.0, std: 1.6}", "mean: 0.0, std: 1000000000000000000000000000000000000000000}")], [], ["time.student.std: 1000000000000000000000000000000000000000000 is out of range for a float"]),
    ("batch-above-int32", [edit("  batch_size: 8\n", "  batch_size: 1e12\n")], [], ["run.batch_size: must be <= 2147483647 (torch indexes a batch with 32-bit ints in places), got 1000000000000"]),
    ("cpu-threads-huge", [edit("  cpu_threads: 1\n", "  cpu_threads: 100000\n")], [], ["run.cpu_threads: must be <= 4096, got 100000"]),
    ("set-lr-1e39", [], ["--set", "phases.critic.optimizer.lr=1e39"], ["phases.critic.optimizer.lr: 1e+39 is out of range for a float"]),
    ("set-batch-1e23", [], ["--set", "run.batch_size=1e23"], ["run.batch_size: 1e+23 is out of range for an integer"]),
    # -- guidance and sampler times ------------------------------------------------------------------------------
    ("guidance-negative", [edit(GUIDANCE, "  guidance: -1.0\n")], [], ["teacher_wrapper.guidance: must be a finite CFG scale >= 0", "1 is the conditional model alone, no guidance"]),
    ("scm-guidance-negative", [edit(SCM, "      - {use: scm, weight: 1.0, tangent_warmup: 2, guidance: -0.5}\n")], [], ["phases.student.losses[0].guidance: must be a finite CFG scale >= 0"]),
    ("dmd-guidance-negative", [edit("        weight: 0.3\n", "        weight: 0.3\n        guidance: -2\n")], [], ["phases.student.losses[1].guidance: must be a finite CFG scale >= 0"]),
    ("guidance-applies-unknown", [edit(GUIDANCE, GUIDANCE + "  guidance_applies: above_1\n")], [], ["teacher_wrapper.guidance_applies: expected one of 'not_one', 'above_one', got 'above_1'"]),
    ("mid-times-increasing", [edit(SAMPLE, SAMPLE.replace("[1.1, 0.8]", "[0.8, 1.1]"))], [], ["sample.mid_times: mid_times[1] = 1.1 must be below mid_times[0] = 0.8"]),
    ("mid-times-above-half-pi", [edit(SAMPLE, SAMPLE.replace("[1.1, 0.8]", "[1.6, 0.8]"))], [], ["sample.mid_times: mid_times[0] = 1.6 must lie in (0, π/2)"]),
    ("mid-times-zero", [edit(SAMPLE, SAMPLE.replace("[1.1, 0.8]", "[1.1, 0.0]"))], [], ["sample.mid_times: mid_times[1] = 0.0 must lie in (0, π/2)"]),
    ("mid-times-unused-bad", [edit(SAMPLE, SAMPLE.replace("[1.1, 0.8]", "[1.1, 1.3]"))], [], ["sample.mid_times: mid_times[1] = 1.3 must be below mid_times[0] = 1.1"]),
    ("rollout-mid-times", [edit(ROLLOUT, "rollout: {use: fixed_timesteps, mid_times: [1.0, 1.2]}\n")], [], ["rollout.mid_times: mid_times[1] = 1.2 must be below mid_times[0] = 1.0"]),
    ("rollout-steps-unknown", [edit(ROLLOUT, "rollout: {use: stochastic_backward, max_steps: 2, steps: cyclic}\n")], [], ["rollout.steps: expected one of 'random', 'cycle', got 'cyclic'"]),
    ("scm-warmup-scales-unknown", [edit(SCM, "      - {use: scm, weight: 1.0, tangent_warmup: 2, warmup_scales: tangents}\n")], [], ["phases.student.losses[0].warmup_scales: expected one of 'tangent', 'x_t_term', got 'tangents'"]),
]  # fmt: skip


def write_case(tmp_path: Path, edits: list[tuple[str, str]]) -> Path:
    text = GOOD
    for old, new in edits:
        if old == "<base>":
            (tmp_path / "base.yaml").write_text(new)
            continue
        text = text.replace(old, new, 1)
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_the_good_recipe_validates_and_exponent_floats_are_floats(tmp_path: Path) -> None:
    path = write_case(tmp_path, [])
    assert run_cli("validate", str(path)).code == 0
    for value in ("1e-3", "1E-3", "2.5e-4"):
        result = run_cli("validate", str(path), "--set", f"phases.student.optimizer.lr={value}")
        assert result.code == 0, result.err


def test_resume_takes_an_exponent_float_equal_to_the_recipes_value(tmp_path: Path) -> None:
    path, out = write_case(tmp_path, []), str(tmp_path / "out")
    common = ("--out", out, "--no-progress", "--set", "run.iterations=2")
    assert run_cli("run", str(path), *common).code == 0
    same = run_cli("run", str(path), *common, "--set", "phases.student.optimizer.lr=2e-4", "--resume")
    assert same.code == 0, same.err  # 2e-4 is the recipe's 2.0e-4: the same recipe
    other = run_cli("run", str(path), *common, "--set", "phases.student.optimizer.lr=3e-4", "--resume")
    assert other.code == 2 and "phases.student.optimizer.lr: 0.0002 then, 0.0003 now" in other.err


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("edits", "overrides", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_recipe_is_refused(tmp_path: Path, edits: list, overrides: list[str], expected: list[str]) -> None:
    path = write_case(tmp_path, edits)
    before = sorted(tmp_path.iterdir())
    assert_user_error(run_cli("validate", str(path), *overrides), expected)
    out = tmp_path / "out"
    assert_user_error(run_cli("run", str(path), *overrides, "--out", str(out), "--no-progress"), expected, absent=[out])
    assert sorted(tmp_path.iterdir()) == before, "a refused run must write nothing"

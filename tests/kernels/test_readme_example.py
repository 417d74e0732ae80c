"""The README's kernel example runs as written (on the GPU, or in Triton's interpreter on a CPU)."""

from __future__ import annotations

from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_attention_jvp_example_runs() -> None:
    code = README.split("## Kernels", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md (## Kernels)", "exec"), namespace)
    o, to = namespace["o"], namespace["to"]
    o_fast, to_fast = namespace["o_fast"], namespace["to_fast"]
    # The fast path is the general one with zero key/value tangents, so the two tangents differ.
    assert not bool((to - to_fast).abs().max() == 0)  # type: ignore[operator]
    assert bool((o.detach() - o_fast.detach()).abs().max() < 1e-2)  # type: ignore[union-attr,operator]

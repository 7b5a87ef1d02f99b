"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

BLOCKS = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(),
                    re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    namespace: dict = {}
    prelude = "\n".join(b for b in BLOCKS[:index] if "PassManager" not in b)
    exec(compile(prelude + "\n" + BLOCKS[index], f"README block {index}", "exec"), namespace)

"""The README's Python examples run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

BLOCKS = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(),
                    re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


def test_readme_examples_run_in_order():
    """One namespace, block after block, as a reader pastes them (linear time: each block
    runs once); a failure names its block."""
    namespace: dict = {}
    for index, block in enumerate(BLOCKS):
        exec(compile(block, f"README block {index}", "exec"), namespace)


DEPLOY = (Path(__file__).parents[1] / "README.md").read_text().split("## Deploy")[1] \
    .split("\n## ")[0]
SHELL = re.findall(r"```bash\n(.*?)```", DEPLOY, re.S)


def test_deploy_commands_run_as_written(tmp_path):
    """The Deploy section's shell block, with this interpreter's scripts on PATH."""
    assert SHELL
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}")
    for block in SHELL:
        res = subprocess.run(["bash", "-euc", block], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
    assert "prunable groups" in res.stdout
    for name in ("model.onnx", "model.pt2", "report.md", "kept_channels.png"):
        assert (tmp_path / "pruned" / name).exists()

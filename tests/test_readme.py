"""Every ```python block of the README runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i):
    namespace: dict = {}
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), namespace)
    if "res" in namespace:
        assert namespace["res"].success

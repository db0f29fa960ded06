"""Every ```python block of every docs/*.md page runs (the blocks of a page in order, in one
namespace, like a notebook), and the generated pages are up to date."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_pages_exist_and_have_examples():
    names = {p.name for p in PAGES}
    assert {
        "index.md",
        "quickstart.md",
        "interop.md",
        "when-to-use.md",
        "meta-training.md",
        "logging.md",
        "model-cards.md",
        "api.md",
    } <= names
    for page in ("quickstart.md", "interop.md", "meta-training.md", "api.md"):
        assert BLOCK.findall((DOCS / page).read_text()), page


def test_index_links_every_page():
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"({page.name})" in index, page.name


@pytest.mark.parametrize("page", [p.name for p in PAGES if BLOCK.search(p.read_text())])
def test_docs_page_runs(page, capsys):
    namespace: dict = {"__name__": f"docs_{page}"}
    for i, code in enumerate(BLOCK.findall((DOCS / page).read_text())):
        exec(compile(code, f"docs/{page} block {i}", "exec"), namespace)


def test_generated_docs_are_up_to_date():
    gen = _gen_docs()
    stale = [
        str(path.relative_to(ROOT))
        for path, text in gen.outputs().items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"out of date: {stale}; run .venv/bin/python scripts/gen_docs.py"


def test_when_to_use_quotes_the_committed_results():
    text = (DOCS / "when-to-use.md").read_text()
    gen = _gen_docs()
    # the generated table holds the same mean log10 as the benchmark CSV, cell by cell
    data = gen._mean_log10(ROOT / "bench_results" / "targets" / "results.csv", "transformed")
    row = data[("quadratic", 100)]
    assert f"| quadratic | 100 | {row['optimus']:.2f} | {row['lbfgs']:.2f} |" in text

"""The documentation site builds in strict mode, offline, and documents every public name.

One strict build (a few seconds) is shared by the tests of this file. Strict mode already fails on a
broken link, a missing anchor, a docstring griffe cannot read or an include that finds nothing; the
tests below check what strict mode cannot: that nothing public is left out, that nothing is fetched
from the network when a page is opened, and that included tables are really there.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "labelsmooth"

for _tool in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
    try:
        _found = importlib.util.find_spec(_tool) is not None
    except ModuleNotFoundError:
        _found = False
    if not _found:
        pytest.skip(
            f"{_tool} is not installed: pip install 'labelsmooth[docs]' (or -r requirements-dev.txt) "
            "to build the documentation",
            allow_module_level=True,
        )

# Documented module by module (the flat API's names are documented one by one): dotted names under
# labelsmooth. A module whose source file does not exist yet is skipped.
MODULE_PAGES = ["calibration", "evaluation", "noise", "plots", "distributed", "integrations.huggingface"]
BUILD_TIMEOUT_S = 120  # the build takes a few seconds; a hang should fail, not stall the suite


def _module_all(dotted: str) -> list[str] | None:
    path = SRC.joinpath(*dotted.split(".")).with_suffix(".py")
    if not path.is_file():
        path = SRC.joinpath(*dotted.split("."), "__init__.py")  # a package
    if not path.is_file():
        return None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"labelsmooth.{dotted} documents itself by its __all__, and it has none")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=path)
    # Paths in mkdocs.yml (snippets' base, hooks, the source) are relative to the repository root.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _html(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text(encoding="utf-8")


def _api_ids(site: Path) -> set[str]:
    ids: set[str] = set()
    for page in (site / "api").glob("*/index.html"):
        ids.update(re.findall(r'id="(labelsmooth[\w.]*)"', page.read_text(encoding="utf-8")))
    return ids


def test_every_flat_public_name_has_an_entry(site):
    import labelsmooth

    ids = _api_ids(site)
    flat = [n for n in labelsmooth.__all__ if not isinstance(getattr(labelsmooth, n), type(labelsmooth))]
    assert flat, "labelsmooth.__all__ lists no functions or classes"
    missing = [n for n in flat if f"labelsmooth.{n}" not in ids]
    assert not missing, f"public names without an API entry (add a ::: line to a docs/api page): {missing}"


@pytest.mark.parametrize("module", MODULE_PAGES)
def test_every_name_of_a_public_module_has_an_entry(site, module):
    names = _module_all(module)
    if names is None:
        pytest.skip(f"labelsmooth.{module} does not exist in this tree")
    ids = _api_ids(site)
    assert f"labelsmooth.{module}" in ids, f"labelsmooth.{module} has no API page (see mkdocs.yml's nav)"
    missing = [n for n in names if f"labelsmooth.{module}.{n}" not in ids]
    assert not missing, f"labelsmooth.{module}: names in __all__ without an API entry: {missing}"


def test_submodules_of_the_flat_api_are_documented(site):
    import labelsmooth

    modules = [n for n in labelsmooth.__all__ if isinstance(getattr(labelsmooth, n), type(labelsmooth))]
    assert set(modules) <= set(MODULE_PAGES), f"modules in labelsmooth.__all__ without a page: {modules}"


def test_docstrings_render_as_their_authors_meant(site):
    for page in (site / "api").glob("*/index.html"):
        text = page.read_text(encoding="utf-8")
        # ">>>" read as Markdown prose becomes nested block quotes; as an example it is a code block.
        assert "<blockquote>" not in text, f"{page}: an example rendered as prose"
        assert not re.search(r":(func|class|meth|mod|data|attr):", text), f"{page}: a Sphinx role shown verbatim"
    # Every example's prompt is highlighted as one (Pygments' "gp" class) inside a code block.
    examples = re.findall(r'<code><span class="gp">&gt;&gt;&gt; </span>', _html(site, "api/losses"))
    assert len(examples) >= 4, "cross_entropy, CrossEntropyLoss and the BCE pair each have an example"


def test_nothing_is_fetched_when_a_page_opens(site):
    # Script, style, image and font references must all point into the site itself.
    external = re.compile(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//', re.I)
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert not external.search(text), f"{page.relative_to(site)} loads {external.search(text).group(0)!r}"
    for css in site.rglob("*.css"):
        assert not re.search(r"@import\s+url\(\s*['\"]?(https?:)?//", css.read_text(encoding="utf-8")), css


def _markdown_tables(text: str) -> int:
    return len(re.findall(r"^\|[-:| ]+\|\s*$", text, flags=re.M))


def test_included_tables_are_there(site):
    study = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    block = study[study.index("<!-- study-findings:start -->") : study.index("<!-- study-findings:end -->")]
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    # choosing-eps.md and performance.md hold no tables of their own: every table is an included one.
    assert _html(site, "choosing-eps").count("<table") == _markdown_tables(block) > 0
    assert _html(site, "performance").count("<table") == _markdown_tables(results) > 0
    # And the numbers are the sources' own: the first data row of each source appears on the page.
    for page, source in (("choosing-eps", block), ("performance", results)):
        row = re.search(r"^\|[-:| ]+\|\s*$\n(\|.*\|)$", source, flags=re.M).group(1)
        cells = [c.strip() for c in row.strip("|").split("|")]
        rendered = re.sub(r"<[^>]+>", "|", _html(site, page))
        assert all(f"|{c}|" in rendered.replace("&lt;", "<").replace("&gt;", ">") for c in cells if c), (page, cells)


def test_formulas_are_typeset_without_a_script(site):
    pytest.importorskip("latex2mathml", reason="latex2mathml (the docs extra) typesets TeX as MathML")
    for page in ("evidence", "api", "choosing-eps", ""):
        text = _html(site, page) if page else (site / "index.html").read_text(encoding="utf-8")
        assert "<math" in text, f"{page or 'home'}: no MathML"
        assert 'class="arithmatex"' not in text, f"{page or 'home'}: TeX left untypeset"


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "_tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_include_block_fails_loudly(tmp_path):
    from mkdocs.exceptions import PluginError

    hook = _load_hook("include_block")
    (tmp_path / "mkdocs.yml").write_text("")
    (tmp_path / "src.md").write_text("before\n<!-- b:start -->\n| a |\n<!-- b:end -->\nafter\n")

    class Config:
        config_file_path = str(tmp_path / "mkdocs.yml")

    class Page:
        class file:
            src_uri = "page.md"

    out = hook.on_page_markdown("x\n<!-- include-block: src.md b -->\ny", Page, Config)
    assert out == "x\n| a |\ny"
    with pytest.raises(PluginError, match="no block"):
        hook.on_page_markdown("<!-- include-block: src.md c -->", Page, Config)
    with pytest.raises(PluginError, match="does not exist"):
        hook.on_page_markdown("<!-- include-block: nope.md b -->", Page, Config)


def test_home_page_code_runs_as_written():
    text = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/index.md", "exec"), {})

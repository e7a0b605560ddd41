"""The documentation agrees with the code: README.md's size and links, docs/math.md's sections, and the
docstrings' citations of them. Reads files only (no training)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MATH = ROOT / "docs" / "math.md"
README_MAX_LINES = 200
# the numbering the code's docstrings cite as "docs/math.md §N.M"
MATH_SECTIONS = [
    "1", "1.1", "1.2", "1.3",
    "2", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7",
    "3", "3.1", "3.2", "3.3",
    "4", "4.1", "4.2", "4.3", "4.4",
    "5", "6",
]  # fmt: skip
HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
CITATION = re.compile(r"§\s?(\d+(?:\.\d+)?)")
LINK = re.compile(r"\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def math_headings() -> list[str]:
    """The section numbers of docs/math.md's headings, in order."""
    return [number for _, number in HEADING.findall(MATH.read_text(encoding="utf-8"))]


def math_section(number: str) -> str:
    """The text of top-level section ``number`` of docs/math.md, from its heading to the next top-level one."""
    text = MATH.read_text(encoding="utf-8")
    start = re.search(rf"^## {re.escape(number)}\. ", text, re.MULTILINE)
    assert start is not None, f"docs/math.md has no heading '## {number}. '"
    end = re.search(r"^## \d", text[start.end() :], re.MULTILINE)
    return text[start.start() : start.end() + end.start()] if end else text[start.start() :]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, more than {README_MAX_LINES}"


def test_readme_links_to_docs_exist() -> None:
    targets = [a or b for a, b in LINK.findall(README.read_text(encoding="utf-8"))]
    docs = [t.split("#", 1)[0] for t in targets if t.startswith("docs/")]
    assert {"docs/math.md", "docs/running.md", "docs/performance.md"} <= set(docs), "README.md must link every page"
    missing = [t for t in docs if not (ROOT / t).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_math_sections_are_numbered_as_cited() -> None:
    assert math_headings() == MATH_SECTIONS


def test_cited_math_sections_exist() -> None:
    headings = set(math_headings())
    cited: dict[str, set[str]] = {}
    for path in sorted((ROOT / "bcd_cli").rglob("*.py")):
        for number in CITATION.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    assert cited, "no docstring of bcd_cli cites docs/math.md"
    missing = {number: sorted(files) for number, files in cited.items() if number not in headings}
    assert not missing, f"sections cited but not in docs/math.md: {missing}"


@pytest.mark.parametrize("group", ["loss", "act", "reg"])
def test_catalogue_entries_are_documented(group: str) -> None:
    catalogue = math_section("3")
    files = sorted((ROOT / "conf" / group).glob("*.yaml"))
    assert files
    undocumented = []
    for path in files:
        target = yaml.safe_load(path.read_text(encoding="utf-8"))["_target_"]
        class_name = target.rsplit(".", 1)[-1]
        if f"`{class_name}`" not in catalogue and f"`{path.stem}`" not in catalogue:
            undocumented.append(f"{path.name} ({class_name})")
    assert not undocumented, f"catalogue entries missing from docs/math.md §3: {undocumented}"


def test_block_updates_are_documented() -> None:
    tree = ast.parse((ROOT / "bcd_cli" / "engine" / "blocks.py").read_text(encoding="utf-8"))
    updates = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("update_")
        and not node.name.endswith("_workspace")  # the memory an update declares, beside it
    ]
    assert updates
    block_updates = math_section("2")
    missing = [name for name in updates if f"`{name}`" not in block_updates]
    assert not missing, f"block updates missing from docs/math.md §2: {missing}"


def test_metric_columns_are_documented() -> None:
    tree = ast.parse((ROOT / "bcd_cli" / "run" / "records.py").read_text(encoding="utf-8"))
    columns = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "METRIC_COLUMNS" for t in node.targets)
    )
    assert columns
    diagnostics = math_section("5")
    missing = [column for column in columns if f"`{column}`" not in diagnostics]
    assert not missing, f"metrics.csv columns missing from docs/math.md §5: {missing}"


def test_readme_lists_every_config_group() -> None:
    """Every config group has its row in README.md's option table; the options of a group are listed by
    ``bcd-train --help`` (read from conf/), so a new option needs no edit of the README."""
    readme = README.read_text(encoding="utf-8")
    groups = [path for path in sorted((ROOT / "conf").iterdir()) if path.is_dir() and path.name != "hydra"]
    assert groups
    missing = [group.name for group in groups if f"`{group.name}" not in readme]
    assert not missing, f"config groups missing from README.md's option table: {missing}"
    assert "bcd-train --help" in readme


def test_the_architecture_page_maps_every_package_and_run_module():
    """docs/architecture.md names every package of bcd_cli and every module of a run, so the map stays whole."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = [p.name for p in (ROOT / "bcd_cli").iterdir() if (p / "__init__.py").is_file() and p.name != "plugins"]
    missing = [f"bcd_cli/{name}/" for name in packages if f"`bcd_cli/{name}/`" not in text]
    missing += [f"run/{p.name}" for p in (ROOT / "bcd_cli" / "run").glob("*.py") if p.stem != "__init__"
                and f"`{p.name}`" not in text]  # fmt: skip
    assert not missing, f"docs/architecture.md does not name: {missing}"

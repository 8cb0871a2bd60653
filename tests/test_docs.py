"""Method citations land: every "docs/methods.md §N.M" in the repository names a heading of docs/methods.md.

Docstrings, tests, scripts and docs cite the project's methods reference by section number
("docs/methods.md §10.2"); a renumbered or missing section would leave a reader at a dead end. The
old citations of a file outside the repository ("METHODS §...", "METHODS.md") must not come back.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "methods.md"
SCANNED = ("minitx", "tests", "scripts", "docs", "weights")
SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".json", ".html", ".js"}
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.?\s", re.M)
# "docs/methods.md §4.1, §4.3 and §13", "docs/methods.md §9.2-9.3", "docs/methods.md §2.6 item 4"
CITATION = re.compile(r"docs/methods\.md\s*((?:§\d+(?:\.\d+)?(?:\s*[-–]\s*\d+(?:\.\d+)?)?(?:\s*(?:,|and|/)\s*)?)+)")
SECTION = re.compile(r"(?:§|[-–]\s*)(\d+(?:\.\d+)?)")
OLD = re.compile(r"\bMETHODS\b")


def text_files():
    seen = set()
    files = [ROOT / "README.md"]
    for top in SCANNED:
        files += sorted(p for p in (ROOT / top).rglob("*") if p.suffix in SUFFIXES)
    for path in files:
        real = path.resolve()
        if real in seen or not path.is_file() or "__pycache__" in path.parts or real == Path(__file__).resolve():
            continue
        seen.add(real)
        yield path, path.read_text(encoding="utf-8", errors="replace")


def sections() -> set[str]:
    return set(HEADING.findall(METHODS.read_text(encoding="utf-8")))


def cited(text: str) -> list[str]:
    return [n for m in CITATION.finditer(text) for n in SECTION.findall(m.group(1))]


def test_parsers_on_known_strings():
    assert cited("see docs/methods.md §4.1, §4.3 and §13; later §99") == ["4.1", "4.3", "13"]
    assert cited("(docs/methods.md §9.2-9.3)") == ["9.2", "9.3"]
    assert cited("docs/methods.md §2.6 item 4") == ["2.6"]
    heads = set(HEADING.findall("## 5. Heads\n### 5.1 Offset\n#### 5.1.1 deep\n## Contents\n"))
    assert heads == {"5", "5.1"}


def test_methods_reference_keeps_the_shared_numbering():
    found = sections()
    assert {str(n) for n in range(16)} <= found, sorted(found)
    for sub in ("0.1", "0.3", "1.6", "2.3", "2.6", "3.4", "4.4", "5.5", "5.6", "6.3", "9.2", "9.3", "10.2",
                "10.5", "12.2", "12.4", "13.3", "14.3"):
        assert sub in found, sub


def test_every_citation_names_an_existing_section():
    found = sections()
    missing = []
    for path, text in text_files():
        for number in cited(text):
            if number not in found:
                missing.append(f"{path.relative_to(ROOT)}: docs/methods.md §{number}")
    assert not missing, "citations of sections docs/methods.md does not have:\n" + "\n".join(missing)


def test_cross_references_inside_the_methods_reference_exist():
    found = sections()
    text = METHODS.read_text(encoding="utf-8")
    refs = set(re.findall(r"§(\d+(?:\.\d+)?)", text))
    assert refs, "no cross-references found: the parser is broken"
    assert not refs - found, sorted(refs - found)


def test_no_citation_of_the_old_reference_remains():
    left = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
            for path, text in text_files() for i, line in enumerate(text.splitlines(), 1) if OLD.search(line)]
    assert not left, "cite docs/methods.md §N.M instead of:\n" + "\n".join(left)


def defined_tests(tests_dir: Path = ROOT / "tests") -> dict[str, set[str]]:
    """{file name: names of the test functions it defines}."""
    return {f.name: set(re.findall(r"^def (test_\w+)", f.read_text(encoding="utf-8"), re.M))
            for f in tests_dir.glob("test_*.py")}


def test_tests_named_in_the_docs_exist():
    """"tests/test_x.py::test_y" (or "test_x.py::test_y", or "::test_y" after a named file) must name a test."""
    defined = defined_tests()
    everywhere = set().union(*defined.values())
    documents = [METHODS, ROOT / "README.md", ROOT / "docs" / "analysis-conventions.md",
                 *sorted((ROOT / "weights").glob("*/MODEL_CARD.md"))]
    missing, checked = [], 0
    for doc in documents:
        text = doc.read_text(encoding="utf-8")
        for file, name in re.findall(r"(?:tests/)?(test_\w+\.py)::(test_\w+)", text):
            checked += 1
            if name not in defined.get(file, ()):
                missing.append(f"{doc.name}: {file}::{name}")
        for name in re.findall(r"(?<![\w.])::(test_\w+)", text):
            checked += 1
            if name not in everywhere:
                missing.append(f"{doc.name}: ::{name}")
        for file in re.findall(r"tests/(test_\w+\.py)", text):
            if file not in defined:
                missing.append(f"{doc.name}: tests/{file}")
    assert checked > 50, "the reference lost its test pointers, or the parser is broken"
    assert not missing, "tests named in the docs that do not exist:\n" + "\n".join(missing)


def lives_in_paragraphs() -> list[str]:
    text = METHODS.read_text(encoding="utf-8")
    return [p for p in re.split(r"\n\s*\n", text) if p.startswith("Lives in:")]


def has_name(module, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_where_each_method_lives_names_real_functions():
    """A "Lives in:" paragraph names modules (`minitx/x.py`) and their public names (`name`): every name
    must exist in one of the paragraph's modules, and a module that does not exist yet must be "planned"."""
    import importlib

    paragraphs = lives_in_paragraphs()
    assert len(paragraphs) >= 11, "a method section lost its 'Lives in:' line"
    wrong = []
    for paragraph in paragraphs:
        modules = []
        for path in re.findall(r"`(minitx/\w+\.py)`", paragraph):
            if (ROOT / path).is_file():
                modules.append(importlib.import_module(path[:-3].replace("/", ".")))
            elif "planned" not in paragraph:
                wrong.append(f"{path} does not exist and the paragraph does not say 'planned'")
        for name in re.findall(r"`([A-Za-z_]\w*|[A-Z]\w*\.\w+)`", paragraph):  # a name, or Class.method
            if modules and not any(has_name(m, name) for m in modules):
                wrong.append(f"`{name}` is in none of {[m.__name__ for m in modules]}")
    assert not wrong, "docs/methods.md 'Lives in:' lines out of date:\n" + "\n".join(wrong)


@pytest.mark.parametrize("anchor", re.findall(r"\]\(#([^)]+)\)", METHODS.read_text(encoding="utf-8")))
def test_table_of_contents_links_reach_a_heading(anchor):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
             for h in re.findall(r"^#{1,4} (.+)$", METHODS.read_text(encoding="utf-8"), re.M)}
    assert anchor in slugs

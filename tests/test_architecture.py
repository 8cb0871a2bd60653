"""The layering of minitx/: every import points down, nothing imports in a circle,
no module takes another's private (`_x`) names, and nothing outside model.py reads a private attribute of
the model. Read from the source (`ast`), lazy imports inside functions included, so the test holds the
structure, not one import order.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minitx"
MODULES = {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}


def parse(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))


def imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(minitx module imported, names taken from it, line) for every import anywhere in the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[1] if a.name.count(".") else "__init__", [], node.lineno)
                      for a in node.names if a.name.split(".")[0] == "minitx"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "minitx":
            if node.module == "minitx":  # `from minitx import model, checks` names modules (or __init__'s names)
                for a in node.names:
                    found.append((a.name, [], node.lineno) if a.name in MODULES else ("__init__", [a.name], node.lineno))
            else:
                found.append((node.module.split(".")[1], [a.name for a in node.names], node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in imports(parse(name)) if m != name and m in MODULES} for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_cycle_finder_finds_cycles():  # the checker itself, on graphs with a known answer
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycle():
    edges = graph()
    # __init__ imports the model eagerly and the rest lazily; a module importing `minitx` itself would
    # close a circle through it, so it stays in the graph.
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle in minitx/: " + " -> ".join(cycle)


def test_model_and_checkpoint_layering():
    edges = graph()
    assert "model" not in edges["checkpoint"] and "hub" not in edges["checkpoint"]
    assert edges["config"] <= {"activations", "checks"}  # config is a floor-1 room
    assert edges["checks"] == set()  # the floor: any module may use the argument checks without a cycle
    assert "checkpoint" in edges["hub"] and "hub" not in edges["checkpoint"]  # hub -> checkpoint, never back
    assert "checkpoint" in edges["model"] and "loading" not in edges["model"]  # save_pretrained on the model


def test_no_private_names_across_modules():
    offences = []
    for name in MODULES:
        for module, names, line in imports(parse(name)):
            if module != name:
                offences += [f"minitx/{name}.py:{line} imports {n} from minitx.{module}"
                             for n in names if n.startswith("_") and not n.startswith("__")]
    assert not offences, "\n".join(offences)


def private_model_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """Reads of `model._x`, `self.model._x`, `tiny_model._x` ...: a private attribute of something named *model."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = ast.unparse(node.value)
            if owner.split(".")[-1].endswith("model"):
                found.append((node.lineno, f"{owner}.{node.attr}"))
    return found


def test_private_model_reader_sees_reads():
    tree = ast.parse("a = model._context_hooks\nb = self.model._run()\nc = model.cfg\nd = model.__class__\n")
    assert [text for _, text in private_model_reads(tree)] == ["model._context_hooks", "self.model._run"]


@pytest.mark.parametrize("name", [n for n in MODULES if n != "model"])
def test_no_private_model_attribute_outside_model_py(name):
    reads = private_model_reads(parse(name))
    assert not reads, "\n".join(f"minitx/{name}.py:{line} reads {text}" for line, text in reads)


TESTS = PACKAGE.parent / "tests"


@pytest.mark.parametrize("path", [p for p in sorted(TESTS.glob("*.py"))
                                  if p.name not in ("test_model.py", "test_architecture.py")], ids=lambda p: p.name)
def test_tests_read_the_public_hook_state(path):
    """Outside model.py's own tests, "no hook left" is `model.has_context_hooks`, not the private _context_hooks."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    reads = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "_context_hooks"]
    assert not reads, f"{path.name} reads _context_hooks at lines {reads}; use model.has_context_hooks"


LONGEST_FUNCTION = 60  # the brief: no function over about 60 lines unless it is a table (tables live at module level)


@pytest.mark.parametrize("name", MODULES)
def test_no_function_over_60_lines(name):
    long = [(node.name, node.lineno, node.end_lineno - node.lineno + 1) for node in ast.walk(parse(name))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION]
    assert not long, "\n".join(f"minitx/{name}.py:{line} {fn} has {n} lines" for fn, line, n in long)

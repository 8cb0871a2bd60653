"""Every test of an optional peer (TransformerLens, tuned-lens) carries the `peers` marker.

Without TransformerLens such a test skips in the main suite; `.ci/run` runs the peer tests again in
`.venv-peers` with `pytest -m peers`, which deselects an unmarked module: it would then run nowhere.
"""

import ast
from pathlib import Path

PEERS = ("transformer_lens", "tuned_lens")


def names_peer(node) -> bool:
    """An import of a peer, or a call such as pytest.importorskip("transformer_lens...")."""
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] in PEERS for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] in PEERS
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip" and node.args:
        first = node.args[0]
        return isinstance(first, ast.Constant) and str(first.value).split(".")[0] in PEERS
    return False


def marked_peers(tree) -> bool:
    return any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
               and "peers" in ast.unparse(node.value) for node in tree.body)


def test_every_peer_test_module_is_marked():
    unmarked = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        uses_peer = any(names_peer(node) for node in ast.walk(tree))
        if uses_peer and not marked_peers(tree):
            unmarked.append(path.name)
    assert not unmarked, f"test modules of a peer without 'pytestmark = pytest.mark.peers': {unmarked}"

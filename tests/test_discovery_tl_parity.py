"""EAP against TransformerLens 4.3's edge attribution patching on the same weights (docs/methods.md §12.4 item 5).

TransformerLens is an optional peer: this skips unless it imports (run it in .venv-peers, `pytest -m peers`).
TL scores edges per position in the DENOISING form: (a_clean[u] - a_corrupt[u]) . d metric / d in_v on the
corrupted run, averaged over prompt pairs. minitx's `eap` is the noising form, (a_u(x') - a_u(x)) . dm/d in_v
at x; with x the corrupted prompts and x' the clean ones it is the same quantity, summed over positions.
"""

from collections import defaultdict

import pytest
import torch
from torch.testing import assert_close

import minitx
from minitx import discovery, metrics
from tests.conftest import random_model
from tests.peers import tl_bridge

tl_attribution = pytest.importorskip("transformer_lens.tools.analysis.attribution_patching")
pytestmark = pytest.mark.peers

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "When Mary and John went to the park, John gave a ball to"]
CORRUPTED = ["When Mary and John went to the store, Mary gave a drink to",
             "When Mary and John went to the park, Mary gave a ball to"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ours = random_model(vocab_size=50257, n_layer=2, n_head=4, n_embd=64, n_positions=64)
    return ours, tl_bridge(ours, tmp_path_factory.mktemp("checkpoint"))


def our_label(node) -> str:
    """A TL Node -> minitx's EdgeGraph label of that writer or reader."""
    kind = node.kind
    if kind == "embed":
        return "input"
    if kind == "attn_head_out":
        return f"{node.layer}.{node.head}"
    if kind in ("mlp_out", "mlp_in"):
        return f"mlp{node.layer}"
    if kind == "logits":
        return "logits"
    return f"{node.layer}.{node.head}.{kind[0]}"  # q_input -> L.H.q


def test_eap_equals_transformer_lens_edge_attribution(models):
    ours, theirs = models
    tok = minitx.Tokenizer.default()
    clean, corrupted = tok.to_tokens(PROMPTS, prepend_bos=True), tok.to_tokens(CORRUPTED, prepend_bos=True)
    metric = metrics.logit_diff_metric(tok.to_single_token(" Mary"), tok.to_single_token(" John"))
    config = tl_attribution.EdgeAttributionConfig(granularity="edge")
    result = tl_attribution.attribution_patch(theirs, clean, corrupted, lambda logits: metric(logits).sum(), config)
    expected = defaultdict(float)  # summed over positions
    for (writer, reader), score in result.edge_scores.items():
        expected[f"{our_label(writer)} -> {our_label(reader)}"] += score
    scores = discovery.eap(ours, corrupted, clean, metric)  # x = corrupted, x' = clean: TL's denoising form
    graph = scores.graph
    assert set(expected) == {graph.label(e) for e in range(graph.n_edges)}  # the same 46 + ... edges
    got = torch.tensor([expected[graph.label(e)] for e in range(graph.n_edges)])
    assert_close(scores.scores, got, atol=1e-5, rtol=1e-4)
    assert float(got.abs().max()) > 1e-3

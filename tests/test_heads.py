"""Head-role scores: closed forms on hand-made patterns (docs/methods.md §5.6), TL detector semantics, role swap."""

import contextlib

import pytest
import torch
from torch.testing import assert_close

from tests.conftest import random_model, unchanged
from minitx import heads


@contextlib.contextmanager
def patterns_replaced(model, pattern):
    """Every head of every layer attends as `pattern` says: [q, k], [batch, q, k] or [batch, head, q, k]."""
    p = pattern if pattern.dim() == 4 else pattern.unsqueeze(-3)

    def hook(x, _):
        return p.to(x.dtype).expand_as(x).contiguous()

    with model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), hook)]):
        yield


def previous_token_pattern(S):
    A = torch.zeros(S, S)
    A[0, 0] = 1
    A[torch.arange(1, S), torch.arange(S - 1)] = 1
    return A


def induction_pattern(n, bos):
    """Query n+i (+1 with BOS) attends to i (+1): the token after the first occurrence; others to 0."""
    o = int(bos)
    A = torch.zeros(2 * n + o, 2 * n + o)
    A[:, 0] = 1
    i = torch.arange(1, n + 1)
    A[n + i - 1 + o, 0] = 0
    A[n + i - 1 + o, i + o] = 1
    return A


def uniform_pattern(S):
    A = torch.ones(S, S).tril()
    return A / A.sum(-1, keepdim=True)


@pytest.fixture
def model():
    return random_model()


def test_perfect_previous_token_head(model):
    S = 11
    tokens = torch.randint(0, 256, (3, S))
    with unchanged(model), patterns_replaced(model, previous_token_pattern(S)):
        off = heads.offset_scores(model, tokens, max_offset=3)
        assert_close(heads.previous_token_scores(model, tokens), torch.ones(2, 4))
        assert_close(heads.previous_token_scores(model, tokens, exclude_bos=True), torch.ones(2, 4))
        mul = heads.detect_head(model, tokens, "previous_token_head")
        abs_ = heads.detect_head(model, tokens, "previous_token_head", error_measure="abs")
    assert_close(off[..., 0], torch.full((2, 4), 1 / S))  # only row 0 attends to itself
    assert_close(off[..., 1], torch.ones(2, 4))
    assert_close(off[..., 2:], torch.zeros(2, 4, 2))
    assert (heads.argmax_offset(off) == 1).all() and (heads.argmax_offset(off, threshold=1.5) == -1).all()
    assert_close(mul, torch.full((2, 4), (S - 1) / S), atol=1e-6, rtol=0)
    assert_close(abs_, torch.full((2, 4), 1 - round(1 / S, 3)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bos", [True, False])
def test_perfect_induction_head(model, bos):
    n = 8
    tokens = heads.repeated_tokens(model.cfg.d_vocab, n, 3, seed=1, prepend_bos=bos)
    assert tokens.shape == (3, 2 * n + bos) and torch.equal(tokens[:, bos:n + bos], tokens[:, n + bos:])
    assert all(len(set(row[bos:n + bos].tolist())) == n for row in tokens)  # no repeats within a half
    with patterns_replaced(model, induction_pattern(n, bos)):
        ind = heads.induction_scores(model, n=n, batch=3, seed=1, prepend_bos=bos)
        tl = heads.detect_head(model, tokens, "induction_head")
        dup = heads.duplicate_token_scores(model, tokens)
    assert_close(ind, torch.ones(2, 4))
    assert_close(tl, torch.full((2, 4), n / (2 * n + bos)), atol=1e-6, rtol=0)
    assert_close(dup, torch.zeros(2, 4))


@pytest.mark.parametrize("bos", [True, False])
def test_uniform_attention_closed_forms(model, bos):
    n = 7
    S = 2 * n + bos
    tokens = heads.repeated_tokens(model.cfg.d_vocab, n, 2, seed=0, prepend_bos=bos)
    i = torch.arange(1, n + 1, dtype=torch.float)
    q = torch.arange(S, dtype=torch.float)
    with patterns_replaced(model, uniform_pattern(S)):
        ind = heads.induction_scores(model, n=n, batch=2, seed=0, prepend_bos=bos)
        dup = heads.duplicate_token_scores(model, tokens)
        off = heads.offset_scores(model, tokens, max_offset=4)
        off_nobos = heads.offset_scores(model, tokens, max_offset=4, exclude_bos=True)
        sink = heads.bos_attention_scores(model, tokens)
    expected = (1 / (n + i + bos)).mean()  # mean_i 1/(n+i+1) with BOS, 1/(n+i) without
    assert_close(ind, expected.expand(2, 4))
    assert_close(dup, expected.expand(2, 4))
    for d in range(5):
        assert_close(off[..., d], (1 / (q[d:] + 1)).mean().expand(2, 4))
        assert_close(off_nobos[..., d], (1 / q[d + 1:]).mean().expand(2, 4))  # renormalised over keys >= 1
    assert_close(sink, (1 / (q[1:] + 1)).mean().expand(2, 4))


def test_offset_profile_rows_sum_to_one(model):
    tokens = torch.randint(0, 256, (2, 9))
    with unchanged(model):
        patterns = heads.attention_patterns(model, tokens)  # [layer, batch, head, q, k]
    profile = heads.offset_profile(patterns, 8)
    assert_close(profile.sum(-1), torch.ones(profile.shape[:-1]))
    assert_close(profile[..., 3, 1], patterns[..., 3, 2])  # entry (q, d) is A[q, q - d]
    assert (profile[..., 2, 5] == 0).all()  # no key 5 back from query 2


def test_offset_errors(model):
    tokens = torch.randint(0, 256, (1, 6))
    with pytest.raises(ValueError, match="causal head"):
        heads.offset_scores(model, tokens, max_offset=-1)
    with pytest.raises(ValueError, match="allowed offsets are 0..5"):
        heads.offset_scores(model, tokens, max_offset=6)
    scores = torch.rand(2, 4, 3)
    with pytest.raises(TypeError, match="min_offset must be an int offset, got list"):
        heads.argmax_offset(scores, min_offset=[1])
    with pytest.raises(TypeError, match="threshold must be a number"):
        heads.argmax_offset(scores, threshold="0.5")


def _tl_reference(A, D, exclude_bos, exclude_current_token, error_measure):
    """TransformerLens's compute_head_attention_similarity_score, transcribed, for one [q, k] pattern."""
    A = A.clone()
    if error_measure == "mul":
        if exclude_bos:
            A[:, 0] = 0
        if exclude_current_token:
            A.fill_diagonal_(0)
        return ((A * D).sum() / A.sum()).item()
    abs_diff = (A - D).abs()
    if exclude_bos:
        abs_diff[:, 0] = 0
    if exclude_current_token:
        abs_diff.fill_diagonal_(0)
    return 1 - round((abs_diff.mean() * len(abs_diff)).item(), 3)


@pytest.mark.parametrize("measure", ["mul", "abs"])
def test_detect_head_matches_transformerlens_semantics(model, measure):
    tokens = heads.repeated_tokens(model.cfg.d_vocab, 6, 2, seed=3, prepend_bos=True)
    tokens[1, 3] = tokens[1, 2]  # an extra repeat inside a half
    patterns = heads.attention_patterns(model, tokens)
    for name in heads.HEAD_PATTERNS:
        for bos, cur in [(False, False), (True, False), (False, True), (True, True)]:
            got = heads.detect_head(model, tokens, name, exclude_bos=bos, exclude_current_token=cur,
                                    error_measure=measure)
            want = torch.tensor([[sum(_tl_reference(patterns[l, b, h], heads.detection_pattern(tokens[b], name),
                                                    bos, cur, measure) for b in range(2)) / 2
                                  for h in range(4)] for l in range(2)])
            assert_close(got, want, atol=1e-6, rtol=0)


def test_detect_head_options_and_errors(model):
    tokens = torch.randint(0, 256, (1, 7))
    D = heads.detection_pattern(tokens[0], "previous_token_head")
    full = heads.detect_head(model, tokens, D)
    assert_close(full, heads.detect_head(model, tokens, "previous_token_head"))
    picked = heads.detect_head(model, tokens, D, heads=[(0, 1), (1, 3)])
    assert picked[0, 1] == full[0, 1] and picked[1, 3] == full[1, 3] and (picked[0, 0] == -1)
    assert_close(heads.detect_head(model, tokens, D, heads={1: [0, 2]})[1, [0, 2]], full[1, [0, 2]])
    with pytest.warns(UserWarning, match="other than 0 or 1"):
        heads.detect_head(model, tokens, D * 0.5)
    with pytest.raises(ValueError, match="lower-triangular"):
        heads.detect_head(model, tokens, D.T)
    with pytest.raises(ValueError, match="unknown detection pattern"):
        heads.detect_head(model, tokens, "copy_head")


def test_role_swap_identity_and_errors(model):
    a, b = 1, 4
    tokens = torch.tensor([[5, 10, 7, 8, 20, 9, 11]])
    swapped = tokens[:, [0, 4, 2, 3, 1, 5, 6]]
    with unchanged(model):
        same = heads.role_swap(model, tokens, tokens, swap_positions=(a, a))
        real = heads.role_swap(model, tokens, swapped, swap_positions=(a, b))
    assert_close(same.tv_pos, torch.zeros(2, 4))
    assert_close(same.tv_tok, torch.zeros(2, 4))
    assert real.query_positions == [4, 5, 6] and real.tv_pos.shape == (2, 4)
    assert (real.role_index <= 1).all() and (real.role_index >= -1).all()
    twin = tokens.clone()
    twin[0, 4] = 10  # equal tokens at a and b: swapping them changes nothing, so TV_pos = 0
    assert_close(heads.role_swap(model, twin, twin, (a, b)).tv_pos, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(1, 7\) but tokens_b has \(1, 6\)"):
        heads.role_swap(model, tokens, swapped[:, :6], (a, b))
    bad = swapped.clone()
    bad[0, 6] = 3
    with pytest.raises(ValueError, match="prompt 0 position 6"):
        heads.role_swap(model, tokens, bad, (a, b))


def test_role_swap_role_and_lexical_heads(model):
    """Head 0 attends to slot a in both prompts (role); head 1 follows the token that moved (lexical)."""
    a, b, S = 1, 3, 6
    tokens = torch.tensor([[5, 10, 7, 20, 9, 11]])
    swapped = tokens[:, [0, 3, 2, 1, 4, 5]]
    P = uniform_pattern(S).expand(2, 4, S, S).clone()  # [batch (a then b), head, q, k]
    P[:, :2, b:] = 0
    P[:, 0, b:, a] = 1
    P[0, 1, b:, a] = 1  # token 10 sits at a in prompt A ...
    P[1, 1, b:, b] = 1  # ... and at b in prompt B
    with patterns_replaced(model, P):
        result = heads.role_swap(model, tokens, swapped, (a, b))
    assert_close(result.tv_pos[:, :2], torch.tensor([[0.0, 1.0]]).expand(2, 2))
    assert_close(result.tv_tok[:, :2], torch.tensor([[1.0, 0.0]]).expand(2, 2))
    assert_close(result.role_index[:, 2:], torch.zeros(2, 2))  # uniform over k <= q: both TVs 0
    assert {(l, h) for l, h, _ in result.most_changed[:2]} == {(0, 1), (1, 1)}


def test_undefined_scores_warn_and_patterns_as_lists(model):
    """All attention on BOS: with exclude_bos the offset and detector scores are undefined (NaN), and say so."""
    S = 6
    tokens = torch.randint(0, 256, (2, S))
    on_bos = torch.zeros(S, S)
    on_bos[:, 0] = 1
    with patterns_replaced(model, on_bos):
        with pytest.warns(RuntimeWarning, match=r"offset_scores: the score of heads 0\.0, 0\.1.* is undefined"):
            off = heads.offset_scores(model, tokens, max_offset=2, exclude_bos=True)
        assert off.isnan().all()
        with pytest.warns(RuntimeWarning, match="detect_head: .* undefined .* excluded entries"):
            det = heads.detect_head(model, tokens, "previous_token_head", exclude_bos=True)
        assert det.isnan().all()
    pattern = previous_token_pattern(S).tril(-1)
    expected = heads.detect_head(model, tokens, pattern)
    assert_close(heads.detect_head(model, tokens, pattern.tolist()), expected)
    assert_close(heads.detect_head(model, tokens, pattern.numpy()), expected)


def test_detect_head_cache_must_hold_these_tokens(model):
    tokens = torch.randint(0, 256, (2, 6))
    _, cache = model.run_with_cache(tokens)
    assert_close(heads.detect_head(model, tokens, "previous_token_head", cache=cache),
                 heads.detect_head(model, tokens, "previous_token_head"))
    _, other = model.run_with_cache(torch.randint(0, 256, (2, 6)))
    with pytest.raises(ValueError, match="not computed from these tokens"):
        heads.detect_head(model, tokens, "previous_token_head", cache=other)


def test_memory_estimate_refuses_before_allocating(model, monkeypatch):
    need = heads.memory_estimate(model.cfg, 100, 41)
    assert need == 100 * heads.memory_estimate(model.cfg, 1, 41)  # linear in the batch
    monkeypatch.setenv("MINITX_MAX_BYTES", str(need - 1))
    with pytest.raises(MemoryError, match=r"100 prompts of 41 tokens needs about .* GiB, more than"):
        heads.induction_scores(model, n=20, batch=100)
    monkeypatch.setenv("MINITX_MAX_BYTES", str(need))
    assert heads.induction_scores(model, n=20, batch=100).shape == (2, 4)
    monkeypatch.setenv("MINITX_MAX_BYTES", "4 GB")
    with pytest.raises(ValueError, match=r"MINITX_MAX_BYTES='4 GB' is not a number of bytes"):
        heads.induction_scores(model, n=20, batch=100)

"""Weight circuits (docs/methods.md §10): identities against dense computations, the score-decomposition
identity, known answers on the hand-built induction model and the trained fixture, and invariance of
every score under a change of basis of each head's d_head space (§10.5)."""

import copy

import pytest
import torch
from torch.testing import assert_close

import minitx
from minitx import circuits, heads
from minitx.factored import FactoredMatrix
from tests import handbuilt
from tests.conftest import random_model

TOL = dict(atol=1e-5, rtol=1e-5)
EXACT = dict(atol=1e-10, rtol=1e-10)


@pytest.fixture(scope="module")
def model():
    return random_model(n_layer=3, n_head=4, n_embd=32, vocab_size=50, n_positions=24).double()


def dense_score(X, Y):
    return torch.linalg.matrix_norm(X @ Y) / (torch.linalg.matrix_norm(X) * torch.linalg.matrix_norm(Y))


def test_QK_and_OV_are_the_per_head_products(model):
    qk, ov = circuits.QK(model), circuits.OV(model)
    assert isinstance(qk, FactoredMatrix) and qk.shape == (3, 4, 32, 32)
    assert_close(qk.AB, model.W_Q @ model.W_K.transpose(-2, -1), **EXACT)
    assert_close(ov.AB, model.W_V @ model.W_O, **EXACT)


@pytest.mark.parametrize("embedding", ["raw", "normalised"])
def test_circuits_through_the_embeddings(model, embedding):
    layer, head = 1, 2
    E, P, W_U = model.W_E, model.W_pos, model.W_U
    if embedding == "normalised":  # by hand: each row through ln1 of the reading layer, without its bias
        def normalised(x):
            centred = x - x.mean(-1, keepdim=True)
            return centred / centred.pow(2).mean(-1, keepdim=True).sqrt() * model.blocks[layer].ln1.w
        E, P, W_U = normalised(E), normalised(P), model.ln_final.w[:, None] * W_U
    W_QK = model.W_Q[layer, head] @ model.W_K[layer, head].T
    W_OV = model.W_V[layer, head] @ model.W_O[layer, head]
    full = circuits.full_OV_circuit(model, layer, head, embedding=embedding)
    assert full.shape == (50, 50) and full.mdim == model.cfg.d_head
    assert_close(full.AB, E @ W_OV @ W_U, **EXACT)
    assert_close(circuits.token_QK_circuit(model, layer, head, embedding=embedding).AB, E @ W_QK @ E.T, **EXACT)
    assert_close(circuits.positional_QK_circuit(model, layer, head, embedding=embedding).AB, P @ W_QK @ P.T, **EXACT)
    every_head = circuits.full_OV_circuit(model, layer, embedding=embedding)
    assert_close(every_head[head].AB, full.AB, **EXACT)


def test_the_convention_must_be_named(model):
    with pytest.raises(TypeError):
        circuits.full_OV_circuit(model, 0, 0)
    with pytest.raises(ValueError, match="allowed: 'raw', 'normalised', 'processed'"):
        circuits.full_OV_circuit(model, 0, 0, embedding="effective")
    with pytest.raises(ValueError, match="this model has layers 0..2"):
        circuits.token_QK_circuit(model, 3, 0, embedding="raw")


def test_bad_arguments_get_one_clear_error(model):
    tokens = torch.randint(0, 50, (2, 6))
    cases = [(lambda: circuits.full_OV_circuit(model, 0, 4, embedding="raw"), ValueError, "this model has heads 0..3"),
             (lambda: circuits.all_composition_scores(model, "QK"), ValueError, "allowed: 'Q', 'K', 'V'"),
             (lambda: circuits.all_composition_scores(model, "K", n_samples=1), ValueError, "at least 2"),
             (lambda: circuits.all_composition_scores(model, "K", seed=-1), ValueError, "seed"),
             (lambda: circuits.copying_scores(model, embedding="raw", tokens=[1.5]), TypeError, "token"),
             (lambda: circuits.score_decomposition(model, tokens.float(), 0, 0), TypeError, "integer ids"),
             (lambda: circuits.score_decomposition(model, tokens, -1, 0), ValueError, "layers 0..2"),
             (lambda: circuits.positional_token_split(model, tokens[:, :1]), ValueError, "at least 2 tokens")]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_composition_scores_equal_the_dense_definition(model, mode):
    result = circuits.all_composition_scores(model, mode, n_samples=100)
    W_OV = model.W_V @ model.W_O
    W_QK = model.W_Q @ model.W_K.transpose(-2, -1)
    right = {"Q": W_QK, "K": W_QK.transpose(-2, -1), "V": W_OV}[mode]
    for l1, h1, l2, h2 in [(0, 0, 1, 3), (0, 2, 2, 1), (1, 3, 2, 0)]:
        assert_close(result.scores[l1, h1, l2, h2], dense_score(W_OV[l1, h1], right[l2, h2]), **EXACT)
        assert_close(result.raw[l1, h1, l2, h2], torch.linalg.matrix_norm(W_OV[l1, h1] @ right[l2, h2]), **EXACT)
    earlier, later = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    not_after = (later <= earlier)[:, None, :, None].expand_as(result.scores)
    assert (result.scores[not_after] == 0).all() and not result.above_baseline[not_after].any()
    threshold = result.baseline_mean + 3 * result.baseline_std
    assert torch.equal(result.above_baseline, (result.scores > threshold) & ~not_after)
    assert result.axes == ("earlier_layer", "earlier_head", "later_layer", "later_head") and result.n_samples == 100


def test_random_baseline_is_the_score_of_random_factors():
    mean, std = circuits.random_composition_baseline(24, 6, n_samples=300, seed=1)
    g = torch.Generator().manual_seed(7)
    factor = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    samples = torch.stack([dense_score(factor(24, 6) @ factor(6, 24), factor(24, 6) @ factor(6, 24)) for _ in range(300)])
    # Two independent estimates of the same distribution: means within 5 standard errors.
    assert abs(mean - float(samples.mean())) < 5 * (std ** 2 / 300 + float(samples.var()) / 300) ** 0.5
    assert 0.5 < std / float(samples.std()) < 1.5
    assert circuits.random_composition_baseline(24, 6, n_samples=300, seed=1) == (mean, std)
    with pytest.raises(ValueError, match="at least 2"):
        circuits.random_composition_baseline(24, 6, n_samples=1)


def test_a_randomly_initialised_model_scores_like_the_baseline():
    """The baseline is the null of weights without structure: a freshly initialised GPT-2's 384 head pairs have
    the baseline's mean and spread, and (about 0.13% expected) none above mean + 3 std."""
    m = minitx.Transformer(minitx.Config(n_layer=4, n_head=8, n_embd=128, vocab_size=100, n_positions=16))
    m.init_weights(3)
    for mode in ("Q", "K", "V"):
        result = circuits.all_composition_scores(m, mode)
        scores = result.scores[result.scores > 0]
        assert scores.numel() == 384
        # pairs share heads, so not independent: twice the 3 standard errors of 384 independent scores
        assert abs(float(scores.mean()) - result.baseline_mean) < 6 * result.baseline_std / 384 ** 0.5
        assert 0.8 < float(scores.std()) / result.baseline_std < 1.2
        assert int(result.above_baseline.sum()) <= 2


def test_copying_scores_equal_the_dense_eigenvalues_and_argmax(model):
    tokens = torch.tensor([3, 7, 7, 11, 20, 42])
    result = circuits.copying_scores(model, embedding="raw", tokens=tokens)
    assert torch.equal(result.tokens, torch.tensor([3, 7, 11, 20, 42]))
    for layer, head in [(0, 1), (2, 3)]:
        M = circuits.full_OV_circuit(model, layer, head, embedding="raw").AB  # [50, 50]
        eigenvalues = torch.linalg.eigvals(M)
        assert_close(result.scores[layer, head].double(), eigenvalues.sum().real / eigenvalues.abs().sum(), **TOL)
        sub = M[result.tokens][:, result.tokens]
        assert abs(float(result.argmax_fraction[layer, head]) - float((sub.argmax(-1) == torch.arange(5)).double().mean())) < 1e-6
        Q = circuits.token_QK_circuit(model, layer, head, embedding="raw").AB
        eigenvalues = torch.linalg.eigvals(Q)
        assert_close(result.qk_scores[layer, head].double(), eigenvalues.sum().real / eigenvalues.abs().sum(), **TOL)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        circuits.copying_scores(model, embedding="raw", tokens=[50])


def test_score_decomposition_sums_to_the_attention_scores(model):
    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    allowed = torch.ones(12, 12, dtype=torch.bool).tril()
    for layer in range(3):
        for head in (0, 3):
            result = circuits.score_decomposition(model, tokens, layer, head)
            n_components = 2 + 5 * layer + 3  # embed, pos, earlier heads and MLPs, b_O, ln1 bias, q/k bias
            assert result.scores.shape == (n_components, n_components, 3, 12, 12)
            assert_close(result.scores.sum((0, 1))[:, allowed], result.attn_scores[:, allowed], **EXACT)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: True)
    names, kinds, parts = circuits.residual_components(model, cache, 2)
    assert_close(parts.sum(0), cache["resid_pre", 2], **EXACT)
    assert names[:4] == ["embed", "pos", "L0.0", "L0.1"] and kinds[:3] == ["token", "position", "token"]


def test_positional_token_split_shares_sum_to_one(model):
    tokens = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    for exclude_bos in (False, True):
        result = circuits.positional_token_split(model, tokens, exclude_bos=exclude_bos)
        assert result.scores.shape == (3, 4, 3) and result.per_prompt.shape == (3, 4, 3, 4)
        assert_close(result.per_prompt.sum(2), torch.ones(3, 4, 4), **TOL)
        assert result.kind == [["too few prompts (n = 4; at least 8 needed to decide)"] * 4] * 3  # 4 < MIN_PROMPTS
    with pytest.raises(ValueError, match="at least 3 tokens with exclude_bos"):
        circuits.positional_token_split(model, tokens[:, :2], exclude_bos=True)
    # By hand for one head and one prompt: Cov(position x position term, score) / Var(score), pooled over queries.
    d = circuits.score_decomposition(model, tokens[:1], 1, 2)
    pos = d.components.index("pos")
    total, position = d.scores.sum((0, 1))[0], d.scores[pos, pos, 0]
    num = den = 0.0
    for q in range(1, 16):
        s, p = total[q, :q + 1], position[q, :q + 1]
        num += float(((s - s.mean()) * (p - p.mean())).sum())
        den += float(((s - s.mean()) ** 2).sum())
    result = circuits.positional_token_split(model, tokens[:1])
    assert abs(result.per_prompt[1, 2, 0, 0] - num / den) < 1e-5
    assert result.same_in_every_prompt.isnan().all()  # one prompt: nothing to compare with ...
    assert {k for row in result.kind for k in row} == {"too few prompts (n = 1; at least 8 needed to decide)"}
    # The share the other prompts' mean scores explain, by hand for prompt 0.
    scores = circuits.score_decomposition(model, tokens, 1, 2).scores.sum((0, 1))  # [batch, q, k]
    num = den = 0.0
    for q in range(1, 16):
        rows = scores[:, q, :q + 1] - scores[:, q, :q + 1].mean(-1, keepdim=True)  # [batch, keys]
        others = rows[1:].mean(0)
        num += float((others * rows[0]).sum())
        den += float((rows[0] ** 2).sum())
    result = circuits.positional_token_split(model, tokens)
    assert abs(result.same_per_prompt[1, 2, 0] - num / den) < 1e-5


# ---------------------------------------------------------------------------------------------
# Known answers, docs/methods.md §10.5.


def test_handbuilt_known_answers():
    m = handbuilt.model()
    K = circuits.all_composition_scores(m, "K")
    score = K.scores[0, 0, 1, 0]
    assert score == K.scores.max() and K.above_baseline[0, 0, 1, 0]
    for mode in ("Q", "V"):  # L0.0 writes PREV, which neither L1.0's queries nor its values read
        other = circuits.all_composition_scores(m, mode)
        assert other.scores[0, 0, 1, 0] < 1e-6 and not other.above_baseline.any()
    for embedding in ("raw", "normalised"):
        copying = circuits.copying_scores(m, embedding=embedding)
        assert abs(copying.scores[1, 0] - 1) < 1e-5
        assert copying.argmax_fraction[1, 0] == 1  # every token of the alphabet, BOS included
        assert copying.argmax_fraction[0, 0] == 0  # L0.0's full OV circuit is 0: no strict argmax anywhere
    clean, _ = handbuilt.prompts(8)
    split = circuits.positional_token_split(m, clean)
    assert split.scores[0, 0, 0] > 0.999 and split.kind[0][0] == "positional"
    assert split.scores[1, 0, 1] > 0.999 and split.kind[1][0] == "indirect"  # through L0.0's output
    assert split.same_in_every_prompt[0, 0] > 0.999  # set by positions alone ...
    assert split.same_in_every_prompt[1, 0] > 0.999  # ... and so is L1.0's on [BOS] + A + A: its period is fixed
    few = circuits.positional_token_split(m, clean[:7])  # shares as clear, but too few prompts for a kind
    assert few.scores[0, 0, 0] > 0.999 and few.kind[0][0] == "too few prompts (n = 7; at least 8 needed to decide)"
    random = torch.randint(0, handbuilt.BOS, (8, handbuilt.T), generator=torch.Generator().manual_seed(1))
    random[:, 0] = handbuilt.BOS
    split = circuits.positional_token_split(m, random)  # tokens at every position differ between prompts
    assert split.same_in_every_prompt[0, 0] > 0.999 and split.same_in_every_prompt[1, 0] < 0.1


def test_trained_fixture_known_answers():
    m = minitx.load("weights/induction-2l")
    tokens = heads.repeated_tokens(m.cfg.d_vocab - 1, 12, 16, seed=0, prepend_bos=True, bos_token_id=m.cfg.bos_token_id)
    previous_token = heads.previous_token_scores(m, tokens)[0].argmax()  # the layer-0 previous-token head
    induction = heads.induction_scores(m, n=12, batch=16)[1] >= 0.8  # the layer-1 induction heads
    assert induction.any()
    K = circuits.all_composition_scores(m, "K")
    for receiver in induction.nonzero()[:, 0]:
        assert K.scores[0, :, 1, receiver].argmax() == previous_token
        assert K.above_baseline[0, previous_token, 1, receiver]
    copying = circuits.copying_scores(m, embedding="normalised")
    assert (copying.scores[1][induction] > 0.5).all()


# ---------------------------------------------------------------------------------------------
# Invariance: W_Q -> W_Q M, W_K -> W_K M^-T, W_V -> W_V N, W_O -> N^-1 W_O (and the biases alike)
# changes no circuit, no score and no forward pass.


def change_head_bases(model, seed=0):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    d_head = model.cfg.d_head
    with torch.no_grad():
        for block in out.blocks:
            attn = block.attn
            W, b = attn.heads(attn.W_QKV), attn.heads(attn.b_QKV)  # views [3, head, d_model, d_head], [3, head, d_head]
            W_O = attn.W_O.view(attn.n_head, d_head, -1)
            for h in range(attn.n_head):
                M = torch.eye(d_head, dtype=W.dtype) + 0.3 * torch.randn(d_head, d_head, generator=g, dtype=W.dtype)
                N = torch.eye(d_head, dtype=W.dtype) + 0.3 * torch.randn(d_head, d_head, generator=g, dtype=W.dtype)
                M_inv_T, N_inv = torch.linalg.inv(M).T, torch.linalg.inv(N)
                for i, X in enumerate((M, M_inv_T, N)):
                    W[i, h] = W[i, h] @ X
                    b[i, h] = b[i, h] @ X
                W_O[h] = N_inv @ W_O[h]
    return out


def test_every_score_is_unchanged_under_a_change_of_head_basis(model):
    other = change_head_bases(model)
    assert not torch.allclose(other.W_Q, model.W_Q)
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    assert_close(other(tokens), model(tokens), **EXACT)
    assert_close(circuits.QK(other).AB, circuits.QK(model).AB, **EXACT)
    assert_close(circuits.OV(other).AB, circuits.OV(model).AB, **EXACT)
    for mode in ("Q", "K", "V"):
        a, b = circuits.all_composition_scores(model, mode), circuits.all_composition_scores(other, mode)
        assert_close(a.scores, b.scores, **EXACT)
        assert torch.equal(a.above_baseline, b.above_baseline)
    a, b = circuits.copying_scores(model, embedding="normalised"), circuits.copying_scores(other, embedding="normalised")
    for name in ("scores", "argmax_fraction", "qk_scores"):
        assert_close(getattr(a, name), getattr(b, name), **TOL)
    assert_close(circuits.positional_token_split(model, tokens).per_prompt,
                 circuits.positional_token_split(other, tokens).per_prompt, **TOL)
    a, b = circuits.score_decomposition(model, tokens, 2, 1), circuits.score_decomposition(other, tokens, 2, 1)
    assert_close(a.scores, b.scores, **EXACT)  # each term, not only their sum


# ---------------------------------------------------------------------------------------------
# The figure and the command line.


def test_composition_heatmap_and_the_circuits_command(tmp_path, capsys):
    from minitx import cli, plots
    m = handbuilt.model()
    fig = plots.plot_result(circuits.all_composition_scores(m, "K", n_samples=20))
    assert fig.axes[0].get_xlabel() == "later head (reads)"
    assert len(plots.plot_result(circuits.copying_scores(m, embedding="raw")).axes) == 6  # 3 panels, 3 colour bars
    assert len(plots.plot_result(circuits.positional_token_split(m, handbuilt.prompts(2)[0])).axes) == 8
    assert cli.main(["circuits", "--model", "weights/induction-2l", "--out", str(tmp_path), "--samples", "20",
                     "--batch", "3", "--n-pos", "10", "--mode", "all"]) == 0
    out = capsys.readouterr().out
    assert "K-composition on the raw weights: random baseline" in out and "0.1 -> 1.0" in out
    assert "pos x pos" in out and "positional" in out and "too few prompts (n = 3;" in out  # --batch 3
    for name in ("composition-Q.png", "composition-K.png", "composition-V.png", "copying.png", "split.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert cli.main(["circuits", "--model", "weights/induction-2l", "--n-pos", "100"]) == 2
    assert "allowed --n-pos 2..47" in capsys.readouterr().err

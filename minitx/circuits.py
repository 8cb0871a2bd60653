"""Circuits read from the weights: QK and OV per head, full OV and QK circuits through the embeddings,
composition scores against a random baseline, copying scores, and the exact split of one head's
attention scores on a prompt into query-source x key-source terms (positional vs token-pair heads).

    QK(model), OV(model)                          FactoredMatrix [layer, head, d_model, d_model]
    full_OV_circuit(model, l, h, embedding=...)   E W_V W_O W_U       [d_vocab, d_vocab], factored
    token_QK_circuit / positional_QK_circuit      E W_Q W_Kᵀ Eᵀ, P W_Q W_Kᵀ Pᵀ, factored
    all_composition_scores(model, "K")            CompositionScores [layer, head, layer, head] + baseline
    copying_scores(model, embedding=...)          CopyingScores [layer, head]
    score_decomposition(model, tokens, l, h)      ScoreDecomposition: terms sum to hook_attn_scores
    positional_token_split(model, tokens)         PositionalTokenSplit [layer, head, group]

Every weight circuit reads the model as given: pass `minitx.processing.process(model)` to get the
numbers TransformerLens reports on its processed weights. Circuits through the embeddings say how
the head sees the embedding (docs/methods.md §10.1), and the caller must choose:
    "raw"         W_E, W_pos and W_U as stored; the layer norms are left out.
    "normalised"  each embedding row as the head's ln1 makes it when the row is the whole stream:
                  centred, divided by its own RMS, times ln1's gain; W_U times ln_final's gain.
                  (Layer norm's division is one positive number per row, so it changes no sign or
                  argmax within a row; its biases are constant terms and are left out.)
    "processed"   the weights after all four transforms of minitx.processing (fold_ln,
                  center_writing_weights, center_unembed, fold_value_biases), as TransformerLens uses.

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits" (QK/OV circuits,
composition, copying via eigenvalues); Olsson et al. 2022 (induction heads); TransformerLens
`all_composition_scores`. Definitions: docs/methods.md §10.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from minitx.checks import check_choice, check_index, check_seed, check_token_ids, check_tokens, is_int
from minitx.factored import FactoredMatrix, composition_scores
from minitx.hooks import get_act_name
from minitx.model import Transformer
from minitx.results import Result
from minitx.stats import too_few

EMBEDDINGS = ("raw", "normalised", "processed")
MODES = ("Q", "K", "V")


def QK(model: Transformer) -> FactoredMatrix:
    """W_Q W_Kᵀ [layer, head, d_model, d_model]: score(q, k) = x_q W_QK x_kᵀ (+ biases) times the attention scale."""
    return FactoredMatrix(model.W_Q, model.W_K.transpose(-2, -1))


def OV(model: Transformer) -> FactoredMatrix:
    """W_V W_O [layer, head, d_model, d_model]: a head attending to x_k writes x_k W_OV (+ biases)."""
    return FactoredMatrix(model.W_V, model.W_O)


# ---------------------------------------------------------------------------------------------
# Circuits through the embeddings, docs/methods.md §10.1.


def _check_head(model: Transformer, layer, head) -> None:  # head None: every head of the layer
    check_index(layer, model.cfg.n_layer, "layer", "layers")
    if head is not None:
        check_index(head, model.cfg.n_head, "head", "heads")


def _normalised_rows(x: Tensor) -> Tensor:  # [n, d_model] -> rows centred, each divided by its own RMS
    centred = x - x.mean(-1, keepdim=True)
    return centred / centred.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(torch.finfo(x.dtype).tiny)


def _in_convention(model: Transformer, embedding: str) -> Transformer:
    """The model whose weights the convention reads: for "processed", a copy with the transforms it lacks."""
    check_choice(embedding, "embedding", EMBEDDINGS)  # a convention of docs/methods.md §10.1
    if embedding == "processed":
        from minitx.processing import TRANSFORMS, process
        return process(model, [step for step in TRANSFORMS if step not in model.cfg.processing])
    return model


def reading_weights(model: Transformer, layer: int, embedding: str) -> dict[str, Tensor]:
    """The matrices a head in `layer` reads, in one convention: E [d_vocab, d_model], P [n_ctx, d_model],
    W_Q, W_K, W_V [head, d_model, d_head], W_O [head, d_head, d_model], W_U [d_model, d_vocab]."""
    _check_head(model, layer, None)
    model = _in_convention(model, embedding)
    out = dict(E=model.W_E, P=model.W_pos, W_Q=model.W_Q[layer], W_K=model.W_K[layer], W_V=model.W_V[layer],
               W_O=model.W_O[layer], W_U=model.W_U)
    if embedding == "normalised":
        gain = model.blocks[layer].ln1.w
        out.update(E=_normalised_rows(model.W_E) * gain, P=_normalised_rows(model.W_pos) * gain,
                   W_U=model.ln_final.w[:, None] * model.W_U)
    return out


def full_OV_circuit(model: Transformer, layer: int, head: int | None = None, *, embedding: str) -> FactoredMatrix:
    """E W_V W_O W_U [(head,) d_vocab, d_vocab]: attending to token s raises the logit of t by M[s, t]."""
    _check_head(model, layer, head)
    w = reading_weights(model, layer, embedding)
    heads = slice(None) if head is None else head
    return FactoredMatrix(w["E"] @ w["W_V"][heads], w["W_O"][heads] @ w["W_U"])


def token_QK_circuit(model: Transformer, layer: int, head: int | None = None, *, embedding: str) -> FactoredMatrix:
    """E W_Q W_Kᵀ Eᵀ [(head,) d_vocab, d_vocab]: how much query token s prefers key token t (no scale, no biases)."""
    _check_head(model, layer, head)
    w = reading_weights(model, layer, embedding)
    heads = slice(None) if head is None else head
    return FactoredMatrix(w["E"] @ w["W_Q"][heads], (w["E"] @ w["W_K"][heads]).transpose(-2, -1))


def positional_QK_circuit(model: Transformer, layer: int, head: int | None = None, *,
                          embedding: str) -> FactoredMatrix:
    """P W_Q W_Kᵀ Pᵀ [(head,) n_ctx, n_ctx]: how much query position i prefers key position j. Exact for layer 0
    (up to the LN scale); for later layers it is the direct path only."""
    _check_head(model, layer, head)
    w = reading_weights(model, layer, embedding)
    heads = slice(None) if head is None else head
    return FactoredMatrix(w["P"] @ w["W_Q"][heads], (w["P"] @ w["W_K"][heads]).transpose(-2, -1))


# ---------------------------------------------------------------------------------------------
# Composition scores against a random baseline, docs/methods.md §10.2.


@dataclass(kw_only=True, repr=False)
class CompositionScores(Result):
    """scores [earlier_layer, earlier_head, later_layer, later_head] = C(W_OV of the earlier head, the later
    head's W_QK (Q), W_QKᵀ (K) or W_OV (V)); 0 where the later layer is not after the earlier one (as
    TransformerLens). raw: ‖X Y‖_F itself. baseline_mean / baseline_std: C over random Gaussian factors of
    the same shapes (n_samples of them); above_baseline: scores > mean + 3 std."""

    mode: str
    baseline_mean: float
    baseline_std: float
    n_samples: int
    above_baseline: Tensor
    processing: tuple = ()


@functools.lru_cache(maxsize=16)
def random_composition_baseline(d_model: int, d_head: int, n_samples: int = 200, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of C(V O, Q Kᵀ) with every factor N(0, 1) of the head's shapes ([d_model, d_head] and
    its transpose). C is scale-free and the three modes pair the same shapes, so one baseline serves all
    (and is computed once per shape, seed and sample count)."""
    if not is_int(n_samples) or n_samples < 2:
        raise ValueError(f"n_samples={n_samples!r}: a baseline needs an int of at least 2 random samples")
    check_seed(seed)
    g, scores = torch.Generator().manual_seed(seed), []
    for start in range(0, n_samples, 16):  # in chunks: 200 samples of GPT-2 small's shapes would be 300 MB
        n = min(16, n_samples - start)
        factor = lambda *shape: torch.randn(n, *shape, generator=g, dtype=torch.float64)  # noqa: E731
        left = FactoredMatrix(factor(d_model, d_head), factor(d_head, d_model))
        right = FactoredMatrix(factor(d_model, d_head), factor(d_head, d_model))
        scores.append(composition_scores(left, right, broadcast_dims=False))  # [n]
    scores = torch.cat(scores)
    return float(scores.mean()), float(scores.std())


def all_composition_scores(model: Transformer, mode: str, n_samples: int = 200, seed: int = 0) -> CompositionScores:
    """Q-, K- or V-composition of every earlier head into every later head, with the random baseline.
    Each pair of layers is one batched product of r x r cores; pairs within a layer are never computed."""
    check_choice(mode, "mode", MODES)  # into queries, keys or values
    L, H = model.cfg.n_layer, model.cfg.n_head
    with torch.no_grad():
        left = OV(model)
        right = {"Q": QK(model), "K": QK(model).T, "V": left}[mode]
        # OV = Q_l C_l and right = C_r Q_rᵀ with Q_l, Q_r orthonormal: every norm is that of a d_head-sized core.
        C_left, C_right = left.collapse_left(), right.collapse_right()  # [layer, head, d_head, d_model], transposed
        norm_left, norm_right = torch.linalg.matrix_norm(C_left), torch.linalg.matrix_norm(C_right)  # [layer, head]
        raw = torch.zeros(L, H, L, H, dtype=C_left.dtype, device=C_left.device)
        for earlier in range(L - 1):  # one matmul per earlier layer: its heads against every later head
            later = C_right[earlier + 1:]  # [later layer, head, d_model, d_head]
            products = C_left[earlier].flatten(0, 1) @ later.permute(2, 0, 1, 3).flatten(1)  # [H d_head, L' H d_head]
            blocks = products.view(H, -1, *later.shape[:2], later.shape[-1])  # [head, d_head, later layer, head, d_head]
            raw[earlier, :, earlier + 1:] = blocks.pow(2).sum((1, 4)).sqrt()
        scores = raw / (norm_left[:, :, None, None] * norm_right[None, None])
        raw, scores = raw.to(model.W_E.dtype), scores.to(model.W_E.dtype)
    mean, std = random_composition_baseline(model.cfg.d_model, model.cfg.d_head, n_samples, seed)
    layers = torch.arange(L, device=scores.device)
    later_than = layers[:, None, None, None] < layers[None, None, :, None]
    return CompositionScores(scores=scores, axes=("earlier_layer", "earlier_head", "later_layer", "later_head"),
                             raw=raw, metric=f"{mode}-composition", mode=mode, baseline_mean=mean,
                             baseline_std=std, n_samples=n_samples, above_baseline=(scores > mean + 3 * std) & later_than,
                             processing=model.cfg.processing)


# ---------------------------------------------------------------------------------------------
# Copying, docs/methods.md §10.3.


@dataclass(kw_only=True, repr=False)
class CopyingScores(Result):
    """scores [layer, head]: Σλ / Σ|λ| over the eigenvalues of the full OV circuit E W_OV W_U (+1 copies what
    it attends to, -1 suppresses it). argmax_fraction [layer, head]: the share of tokens s in `tokens` whose
    largest entry M[s, t] over t in `tokens` is t = s. qk_scores [layer, head]: the same eigenvalue score
    of the token QK circuit E W_QK Eᵀ (positive: prefers keys holding its own token)."""

    argmax_fraction: Tensor
    qk_scores: Tensor
    tokens: Tensor
    embedding: str
    processing: tuple = ()


def eigenvalue_score(M: FactoredMatrix | Tensor) -> Tensor:
    """Σλ / Σ|λ| [...] over the eigenvalues of a square matrix, factored (through BA) or dense; NaN where all are 0."""
    eigenvalues = M.eigenvalues if isinstance(M, FactoredMatrix) else torch.linalg.eigvals(M)
    return eigenvalues.sum(-1).real / eigenvalues.abs().sum(-1)


def _diagonal_argmax_fraction(left: Tensor, right: Tensor, block: int = 2 ** 25) -> Tensor:
    """left [head, n, r], right [head, r, n] -> [head]: share of rows s of left @ right whose entry s is
    strictly the largest (a tie, as in an all-zero row, is no hit); rows a block of about `block` entries
    at a time, so the n x n matrix never exists."""
    hits = torch.zeros(left.shape[0], device=left.device)
    chunk = max(1, block // (left.shape[0] * right.shape[-1]))
    for start in range(0, left.shape[1], chunk):
        rows = left[:, start:start + chunk] @ right  # [head, chunk, n]
        row = torch.arange(rows.shape[1], device=rows.device)
        diagonal = rows[:, row, start + row]  # [head, chunk]
        rows[:, row, start + row] = float("-inf")
        hits += (diagonal > rows.max(-1).values).sum(-1)
    return hits / left.shape[1]


def copying_scores(model: Transformer, *, embedding: str, tokens=None) -> CopyingScores:
    """Copying scores of every head. tokens: the token set S of the argmax test (ids; default every token).
    The eigenvalue scores use the whole vocabulary, through d_head x d_head matrices. The argmax test costs
    |S|² d_head per head, so a large vocabulary wants a subset (the words the model knows)."""
    cfg = model.cfg
    S = torch.arange(cfg.d_vocab) if tokens is None else check_token_ids(tokens, cfg.d_vocab).reshape(-1).unique()
    S = S.to(model.W_E.device)
    model = _in_convention(model, embedding)
    ov, qk, argmax = (torch.zeros(cfg.n_layer, cfg.n_head, device=model.W_E.device) for _ in range(3))
    with torch.no_grad():
        for layer in range(cfg.n_layer):
            w = reading_weights(model, layer, embedding)
            E, W_U = w["E"], w["W_U"]
            # The non-zero eigenvalues of E W_V W_O W_U are those of W_O (W_U E) W_V [head, d_head, d_head].
            ov[layer] = eigenvalue_score(w["W_O"] @ (W_U @ E) @ w["W_V"]).float()
            qk[layer] = eigenvalue_score(w["W_K"].transpose(-2, -1) @ (E.T @ E) @ w["W_Q"]).float()
            argmax[layer] = _diagonal_argmax_fraction(E[S] @ w["W_V"], w["W_O"] @ W_U[:, S])
    return CopyingScores(scores=ov, axes=("layer", "head"), metric="copying score (eigenvalues of E W_OV W_U)",
                         argmax_fraction=argmax, qk_scores=qk, tokens=S, embedding=embedding,
                         processing=model.cfg.processing)


# ---------------------------------------------------------------------------------------------
# One attention score, split by where its query and key came from, docs/methods.md §10.4.
# With the run's ln1 scales frozen, ln1 is linear in the residual stream, and the score is bilinear in
# the stream's components: S[i, j] = scale (Σ_a ĉ_a[i] W_Q + b_Q) · (Σ_b ĉ_b[j] W_K + b_K).

TOKEN, POSITION, CONSTANT = KINDS = ("token", "position", "constant")
GROUPS = ("position x position", "token-carrying", "constant and position")


def residual_components(model: Transformer, cache, layer: int) -> tuple[list[str], list[str], Tensor]:
    """(names, kinds, components [component, batch, pos, d_model]) of the stream entering block `layer`:
    embed, pos, every earlier head, every earlier MLP (with its bias), and the earlier attention biases b_O.
    They sum to blocks.{layer}.hook_resid_pre. kinds: token (carries token content), position, constant."""
    names, kinds = ["embed", "pos"], [TOKEN, POSITION]
    parts = [cache[get_act_name("embed")], cache[get_act_name("pos_embed")]]
    for earlier in range(layer):
        result = cache["result", earlier]  # [batch, pos, head, d_model]
        names += [f"L{earlier}.{h}" for h in range(model.cfg.n_head)]
        parts += list(result.unbind(2))
    for earlier in range(layer):
        names.append(f"mlp{earlier}")
        parts.append(cache["mlp_out", earlier])
    kinds += [TOKEN] * (len(names) - 2)
    names.append("attn_biases")
    kinds.append(CONSTANT)
    parts.append((model.b_O[:layer].sum(0) if layer else torch.zeros_like(parts[0][0, 0])).expand_as(parts[0]))
    return names, kinds, torch.stack(parts)


def _cache_for(model: Transformer, tokens: Tensor, layers) -> dict:
    last = max(layers)
    wanted = {get_act_name("embed"), get_act_name("pos_embed"),
              *(get_act_name(point, l) for l in range(last) for point in ("result", "mlp_out")),
              *(name for l in layers for name in (get_act_name("attn_scores", l), get_act_name("scale", l, "ln1")))}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted, stop_at_layer=last + 1)
    return cache


def _query_key_parts(model: Transformer, cache, layer: int, by_kind: bool = False):
    """(names, kinds, q [component, batch, head, pos, d_head], k [same]) with Σ over components = the run's q, k.
    Components: those of residual_components (by_kind: summed into token, position, constant; everything
    below is linear, so summing first changes nothing), then ln1's bias β, then b_Q (queries) / b_K (keys)."""
    names, kinds, parts = residual_components(model, cache, layer)
    if by_kind:
        index = torch.tensor([KINDS.index(kind) for kind in kinds], device=parts.device)
        parts = parts.new_zeros(len(KINDS), *parts.shape[1:]).index_add_(0, index, parts)
        names, kinds = list(KINDS), list(KINDS)
    ln = model.blocks[layer].ln1
    sigma = cache["scale", layer, "ln1"]  # [batch, pos, 1], frozen: ln1 is now linear
    normed = (parts - parts.mean(-1, keepdim=True)) / sigma * ln.w  # [component, batch, pos, d_model]
    normed = torch.cat([normed, ln.b.expand_as(normed[:1])])
    q = torch.einsum("cbpd,hde->cbhpe", normed, model.W_Q[layer])
    k = torch.einsum("cbpd,hde->cbhpe", normed, model.W_K[layer])
    shape = (1, *q.shape[1:])
    q = torch.cat([q, model.b_Q[layer][None, None, :, None].expand(shape)])
    k = torch.cat([k, model.b_K[layer][None, None, :, None].expand(shape)])
    return names + ["ln1_bias", "qk_bias"], kinds + [CONSTANT, CONSTANT], q, k


@dataclass(kw_only=True, repr=False)
class ScoreDecomposition(Result):
    """scores [query_component, key_component, batch, q_pos, k_pos]: the term of head (layer, head)'s
    pre-softmax score from that query component and that key component; -inf-free (keys after the query
    hold the term anyway). Summed over both component axes they equal attn_scores where a key is allowed.
    components: the names of both component axes; kinds: token, position or constant for each."""

    components: tuple
    kinds: tuple
    layer: int
    head: int
    attn_scores: Tensor  # [batch, q_pos, k_pos]: blocks.{layer}.attn.hook_attn_scores of this head


@torch.no_grad()
def score_decomposition(model: Transformer, tokens: Tensor, layer: int, head: int) -> ScoreDecomposition:
    """The exact split of head (layer, head)'s attention scores on `tokens` [batch, pos] into query-component x
    key-component terms, with the run's ln1 scales frozen. No BOS is added."""
    _check_head(model, layer, head)
    tokens = check_tokens(tokens, model.cfg.d_vocab)
    cache = _cache_for(model, tokens, [layer])
    names, kinds, q, k = _query_key_parts(model, cache, layer)
    scale = model.blocks[layer].attn.scale
    terms = torch.einsum("abpe,cbqe->acbpq", q[:, :, head], k[:, :, head]) * scale
    return ScoreDecomposition(scores=terms, axes=("query_component", "key_component", "batch", "q_pos", "k_pos"),
                              metric=f"L{layer}.{head} attention score", components=tuple(names), kinds=tuple(kinds),
                              layer=layer, head=head,
                              attn_scores=cache["attn_scores", layer][:, head])


@dataclass(kw_only=True, repr=False)
class PositionalTokenSplit(Result):
    """scores [layer, head, group]: the share of the variance of each query's scores over its keys that comes
    from each group of terms (groups: GROUPS), pooled over queries and averaged over prompts; the shares
    sum to 1 (a share is Cov(group's terms, score) / Var(score), so one may be negative or above 1).
    per_prompt [layer, head, group, prompt]. std [layer, head, group]: the std of the shares over prompts.
    kind [layer][head], from the mean minus two standard errors of a share: "positional" when that of
    position x position is above 0.5; when that of token-carrying terms is, "token-pair" in layer 0 and
    "indirect" after it (earlier heads and MLPs carry what they computed, position included: in GPT-2-like
    models MLP0 re-encodes token and position, so a later head can be positional without W_pos's own path);
    else "mixed"; over fewer than stats.MIN_PROMPTS prompts (a single one has no spread at all) no kind, only
    stats.too_few's "too few prompts (n = 3; at least 8 needed to decide)".
    same_in_every_prompt [layer, head] (per prompt: same_per_prompt [layer, head, prompt]): the share of each
    prompt's score variation over keys that the other prompts' mean scores at the same (query, key) positions
    explain, Cov / Var as above. On prompts that share no token at a position (random tokens), that is the
    part set by positions alone, by whatever path position reaches the head; on templated prompts it also
    holds the template's tokens. NaN for a single prompt."""

    groups: tuple
    std: Tensor
    kind: list
    exclude_bos: bool
    same_in_every_prompt: Tensor
    same_per_prompt: Tensor


def _group_shares(q: Tensor, k: Tensor, kinds: list[str], scale: float, exclude_bos: bool) -> tuple[Tensor, Tensor]:
    """q, k [component, batch, head, pos, d_head] -> (shares [head, group, batch] of the score variance over keys,
    shares [head, batch] of it that the other prompts' mean score explains)."""
    def by_kind(x):  # [3, batch, head, pos, d_head]: token, position, constant components summed
        index = torch.tensor([KINDS.index(kind) for kind in kinds], device=x.device)
        return x.new_zeros(len(KINDS), *x.shape[1:]).index_add_(0, index, x)

    terms = torch.einsum("abhpe,cbhqe->acbhpq", by_kind(q), by_kind(k)) * scale  # [3, 3, batch, head, q_pos, k_pos]
    T = terms.shape[-1]
    keys = torch.ones(T, T, dtype=torch.bool, device=terms.device).tril()
    if exclude_bos:
        keys[:, 0] = False
    n_keys = keys.sum(-1).clamp_min(1)  # [q_pos]
    mean = lambda x: (x * keys).sum(-1, keepdim=True) / n_keys[:, None]  # noqa: E731  over allowed keys
    centred = (terms - mean(terms)) * keys  # [3, 3, batch, head, q, k]
    total = centred.sum((0, 1))  # the whole score, centred per query row
    position = centred[1, 1]
    token = centred[0].sum(0) + centred[1:, 0].sum(0)  # any term with a token-carrying side
    groups = torch.stack([position, token, total - position - token])  # [group, batch, head, q, k]
    variance = (total * total).sum((-2, -1))  # [batch, head], pooled over queries
    shares = (groups * total).sum((-2, -1)) / variance  # Σ over groups = 1
    B = total.shape[0]
    others = (total.sum(0) - total) / (B - 1) if B > 1 else torch.full_like(total, float("nan"))  # leave one out
    same = (others * total).sum((-2, -1)) / variance  # [batch, head]
    return shares.permute(2, 0, 1), same.T  # [head, group, batch], [head, batch]


def positional_token_split(model: Transformer, tokens: Tensor, exclude_bos: bool = False) -> PositionalTokenSplit:
    """For every head: which share of its attention scores' variation over keys comes from position x position
    terms, from terms with a token-carrying side (embed, earlier heads, earlier MLPs), and from the rest
    (constants with positions, constants); on `tokens` [batch, pos], ln1 scales frozen. exclude_bos: leave
    key 0 out of the variation (its score is often an outlier, an attention sink). No BOS is added."""
    tokens = check_tokens(tokens, model.cfg.d_vocab)
    if tokens.shape[1] < 2 + exclude_bos:
        raise ValueError(f"prompts of {tokens.shape[1]} token(s) give no query more than one key to vary over; "
                         f"need at least {2 + exclude_bos} tokens{' with exclude_bos' if exclude_bos else ''}")
    layers = list(range(model.cfg.n_layer))
    cache = _cache_for(model, tokens, layers)
    shares, same = [], []
    with torch.no_grad():
        for layer in layers:
            _, kinds, q, k = _query_key_parts(model, cache, layer, by_kind=True)
            by_group, by_others = _group_shares(q, k, kinds, model.blocks[layer].attn.scale, exclude_bos)
            shares.append(by_group)
            same.append(by_others)
    per_prompt, same = torch.stack(shares).float(), torch.stack(same).float()  # [layer, head, (group,) prompt]
    mean, std = per_prompt.nanmean(-1), _nanstd(per_prompt)
    sem = std / per_prompt.shape[-1] ** 0.5
    lower = mean - 2 * sem
    carried = ["token-pair" if layer == 0 else "indirect" for layer in layers]
    kind = [["positional" if lower[l, h, 0] > 0.5 else carried[l] if lower[l, h, 1] > 0.5 else "mixed"
             for h in range(model.cfg.n_head)] for l in layers]
    if reason := too_few(per_prompt.shape[-1]):  # too little spread to judge by: say nothing rather than too much
        kind = [[reason] * model.cfg.n_head for _ in layers]
    return PositionalTokenSplit(scores=mean, axes=("layer", "head", "group"), per_prompt=per_prompt,
                                metric="share of the score variance over keys", groups=GROUPS, std=std, kind=kind,
                                exclude_bos=exclude_bos, same_in_every_prompt=same.nanmean(-1), same_per_prompt=same)


def _nanstd(x: Tensor) -> Tensor:  # std over the last axis, ignoring NaN (a prompt too short to vary)
    n = (~x.isnan()).sum(-1)
    centred = x - x.nanmean(-1, keepdim=True)
    return (centred.nan_to_num().pow(2).sum(-1) / (n - 1).clamp_min(1)).sqrt()

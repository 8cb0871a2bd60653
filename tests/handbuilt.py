"""The hand-built 2-layer induction model of docs/methods.md §9.2, written as GPT-2 weights.

Every answer an analysis method should give on it follows from the construction, so it tests the
methods without any training. The model reads orthogonal one-hot subspaces of the residual stream:

    TOK (17)   the token, written by W_E            [BOS] + A + A, |A| = n = 12, T = 25
    POS (26)   the position, written by W_pos (one spare position)
    PREV (17)  the previous token, written by L0.0 (previous-token head: scores c * 1[k = q - 1])
    OUT (17)   the predicted token, written by L1.0 (induction head: query TOK(t), key PREV(t))
    W_U reads OUT: logit t = s * OUT(t).

GPT-2 has layer norms and MLPs; §9.2 has neither. The MLPs get zero weights, so they add exactly 0
(their ln2 keeps gain 1: it feeds only them). The other layer norms are made the identity, to float
precision:
  * every component also writes -1 on a balance coordinate of its own, so each has mean 0: centring
    does nothing (DLA's split is then the LN-free model's);
  * W_pos writes +A and -A (A = 1000) on two anchor coordinates nobody reads, so the variance of every
    stream is 2A^2 / d_model plus at most 8 / d_model from the one-hot parts. A gain equal to the std
    of the stream each norm expects (ln1 of layer 0: 2 one-hot components, of layer 1: 3, ln_final: 4)
    makes it the identity there, and where attention spreads the std moves by < 1e-6 relative, so
    the norm's own gradient and its effect on logits are negligible, as in the LN-free model.
Attention is unscaled (scale_attn_weights=False): c is the whole score.
"""

import torch

import minitx

N, VOCAB, BOS = 12, 17, 16  # tokens 0..15, BOS 16
T = 2 * N + 1
N_CTX = T + 1  # one spare position: TransformerLens's head detector wants prompts shorter than n_ctx
C, S = 30.0, 10.0  # attention sharpness, unembedding scale
TOK, POS, PREV, OUT = 0, VOCAB, VOCAB + N_CTX, 2 * VOCAB + N_CTX
BALANCE = 3 * VOCAB + N_CTX  # four balance coordinates follow OUT: one per writing component
ANCHOR = BALANCE + 4  # two coordinates holding +-A at every position
A = 1000.0
D_MODEL = ANCHOR + 2
PREDICTED = torch.arange(N + 1, 2 * N)  # query positions whose next token the induction head predicts


def model() -> minitx.Transformer:
    cfg = minitx.Config(n_layer=2, n_head=1, n_embd=D_MODEL, n_positions=N_CTX, vocab_size=VOCAB, n_inner=4,
                        bos_token_id=BOS, tie_word_embeddings=False, scale_attn_weights=False)
    m = minitx.Transformer(cfg)
    tokens, positions = torch.arange(VOCAB), torch.arange(N_CTX)
    with torch.no_grad():
        m.W_E[tokens, TOK + tokens] = 1.0
        m.W_E[:, BALANCE] = -1.0
        m.W_pos[positions, POS + positions] = 1.0
        m.W_pos[:, BALANCE + 1] = -1.0
        m.W_pos[:, ANCHOR], m.W_pos[:, ANCHOR + 1] = A, -A

        def gain(n_components):  # the std of a stream holding n one-hot components and the anchor
            return ((2 * n_components + 2 * A * A) / D_MODEL + m.ln_final.eps) ** 0.5

        for block, n_components in zip(m.blocks, (2, 3)):
            block.ln1.w.fill_(gain(n_components))
        m.ln_final.w.fill_(gain(4))
        W = [block.attn.W_QKV.view(D_MODEL, 3, D_MODEL) for block in m.blocks]  # [d_model, q/k/v, d_head]
        # L0.0: query POS(p) -> c e_p, key POS(p') -> e_(p'+1), value TOK(t) -> e_t, output e_t -> PREV(t)
        W[0][POS + positions, 0, positions] = C
        W[0][POS + positions, 1, positions + 1] = 1.0
        W[0][TOK + tokens, 2, tokens] = 1.0
        m.blocks[0].attn.W_O[tokens, PREV + tokens] = 1.0
        m.blocks[0].attn.W_O[tokens, BALANCE + 2] = -1.0
        # L1.0: query TOK(t) -> c e_t, key PREV(t) -> e_t, value TOK(t) -> e_t, output e_t -> OUT(t)
        W[1][TOK + tokens, 0, tokens] = C
        W[1][PREV + tokens, 1, tokens] = 1.0
        W[1][TOK + tokens, 2, tokens] = 1.0
        m.blocks[1].attn.W_O[tokens, OUT + tokens] = 1.0
        m.blocks[1].attn.W_O[tokens, BALANCE + 3] = -1.0
        m.W_U_untied[OUT + tokens, tokens] = S
    return m.eval().requires_grad_(False)


def prompts(batch: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean [batch, T] = [BOS] + A + A, corrupted = [BOS] + A' + A), A of n distinct tokens, A' drawn
    from the 16 - n tokens not in A (so the first copy holds no token of A)."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupted = [], []
    for _ in range(batch):
        order = torch.randperm(BOS, generator=g)
        a, others = order[:N], order[N:]
        a_prime = others[torch.randint(len(others), (N,), generator=g)]
        bos = torch.tensor([BOS])
        clean.append(torch.cat([bos, a, a]))
        corrupted.append(torch.cat([bos, a_prime, a]))
    return torch.stack(clean), torch.stack(corrupted)


def correct_logit(tokens: torch.Tensor):
    """Metric: logits [batch, pos, vocab] -> [batch], the mean logit of the true next token over the
    predicted positions n+1 .. 2n-1. The true next token is the clean one, tokens[:, q + 1]."""
    def metric(logits: torch.Tensor) -> torch.Tensor:
        answers = tokens[:, PREDICTED + 1]  # [batch, n - 1]
        return logits[:, PREDICTED].gather(-1, answers[..., None])[..., 0].mean(-1)
    return metric


def correct_log_prob(tokens: torch.Tensor):
    """As correct_logit, with log-probabilities."""
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return correct_logit(tokens)(logits.log_softmax(-1))
    return metric

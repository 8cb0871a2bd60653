"""An independent GPT-2 forward in plain NumPy (picoGPT's style), used only as a test oracle.

It reads the HF checkpoint's own tensors (not minitx's), so an error in minitx's loader or model
cannot hide in both. Shapes are given on each line; float64 throughout.
"""

import numpy as np


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, g, b, eps):  # [n_seq, n_embd] -> [n_seq, n_embd]
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return g * (x - mean) / np.sqrt(var + eps) + b


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(x, w_qkv, b_qkv, w_proj, b_proj, n_head):  # [n_seq, n_embd] -> [n_seq, n_embd]
    q, k, v = np.split(x @ w_qkv + b_qkv, 3, axis=-1)  # 3 x [n_seq, n_embd]
    heads = []
    mask = np.triu(np.full((len(x), len(x)), -np.inf), 1)  # [n_seq, n_seq], future keys hidden
    for qh, kh, vh in zip(*(np.split(t, n_head, axis=-1) for t in (q, k, v))):  # each [n_seq, d_head]
        heads.append(softmax(qh @ kh.T / np.sqrt(qh.shape[-1]) + mask) @ vh)
    return np.hstack(heads) @ w_proj + b_proj


def gpt2_logits(tokens, sd, n_layer, n_head, eps=1e-5):
    """tokens: list of ids; sd: HF GPT2LMHeadModel state dict as float64 arrays -> [n_seq, n_vocab]."""
    g = lambda name: sd["transformer." + name]  # noqa: E731
    x = g("wte.weight")[tokens] + g("wpe.weight")[: len(tokens)]  # [n_seq, n_embd]
    for l in range(n_layer):
        p = f"h.{l}."
        h = layer_norm(x, g(p + "ln_1.weight"), g(p + "ln_1.bias"), eps)
        x = x + attention(h, g(p + "attn.c_attn.weight"), g(p + "attn.c_attn.bias"),
                          g(p + "attn.c_proj.weight"), g(p + "attn.c_proj.bias"), n_head)
        h = layer_norm(x, g(p + "ln_2.weight"), g(p + "ln_2.bias"), eps)
        h = gelu_tanh(h @ g(p + "mlp.c_fc.weight") + g(p + "mlp.c_fc.bias"))  # [n_seq, 4*n_embd]
        x = x + h @ g(p + "mlp.c_proj.weight") + g(p + "mlp.c_proj.bias")
    x = layer_norm(x, g("ln_f.weight"), g("ln_f.bias"), eps)
    return x @ g("wte.weight").T  # tied unembedding, no bias

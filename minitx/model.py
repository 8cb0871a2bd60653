"""GPT-2, written out once, with every activation a named point that a call can read or replace.

GPT-2 in four lines, and where each lives in this file:

    x = W_E[tokens] + W_pos[positions]         Transformer.embed
    x = x + attn(ln1(x))    for each block     Block.attention_half -> LayerNorm, Attention
    x = x + mlp(ln2(x))     for each block     Block.forward -> LayerNorm, MLP
    logits = ln_final(x) W_U                   Transformer.unembed (W_U = W_E.T: GPT-2 ties them)

attn(x): per head, softmax(causal(q k^T / sqrt(d_head))) v, with q, k, v = x W_Q, x W_K, x W_V (+ biases),
then W_O; mlp(x) = gelu(x W_in + b_in) W_out + b_out. Each intermediate passes through `run(name, x)`,
one call's hooks and cache (`Run`, in minitx/hooks.py, with the table of names); nothing is stored
on the model. Options marked "sweeps only" (past_kv, keep_last, start_at_mid) serve minitx/engine.py
and can be skipped on a first reading. Axes in shape comments: batch, pos, d_model, head, d_head,
d_mlp, d_vocab, q_pos, k_pos, layer.

References: Radford et al. 2019 (GPT-2); Elhage et al. 2021, "A Mathematical Framework for
Transformer Circuits" (per-head W_Q/W_K/W_V/W_O notation); the point names follow TransformerLens.
Config: minitx/config.py. Checkpoint names (c_attn, wte, ...): minitx/checkpoint.py only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minitx import checkpoint
from minitx.activations import ACTIVATIONS
from minitx.checks import (check_attention_mask, check_context, check_generation, check_layer_range, check_prompt_rows,
                           check_residual, check_seed, check_sweep_options, check_tokens)
from minitx.config import Config  # noqa: F401  (re-exported: minitx.model.Config)
from minitx.hooks import (ON_REQUEST, POINTS, Cache, HookPoint, NamesFilter, Run, get_act_name,  # noqa: F401
                          active_context_hooks, check_hooks_can_fire, check_keywords, context_hooks, hook_list,
                          missing_attribute, point_names)

# ---------------------------------------------------------------------------------------------
# The layers.


def affine(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """x @ W + b over the last axis, as one fused matmul ([..., d_in] -> [..., d_out])."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[-1])


class Part(nn.Module):
    """The model or a layer norm, attention, MLP or block. Analysis weights (W_Q, W_O, ...) are the model's,
    by layer; a missing TransformerLens name says where minitx keeps it."""

    def __getattr__(self, name: str):  # reached for parameters and submodules (nn.Module), and names it lacks
        try:
            return super().__getattr__(name)
        except AttributeError:
            if (hint := missing_attribute(type(self).__name__, name, _STACKED, isinstance(self, Transformer))) is None:
                raise
            raise AttributeError(hint) from None


class LayerNorm(Part):
    def __init__(self, d_model: int, eps: float, layer: int | None = None, which: str | None = None):
        """layer, which ("ln1" or "ln2"): where it sits, for its point names; no layer: ln_final."""
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.eps = eps
        self.hook_scale, self.hook_normalized = (get_act_name(n, layer, which) for n in ("scale", "normalized"))

    def forward(self, x: Tensor, run: Run) -> Tensor:  # [..., d_model] -> same
        if not (run.wants(self.hook_scale) or run.wants(self.hook_normalized)):
            return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)  # fused fast path
        # The fused kernel that F.layer_norm runs, which also returns its statistics ([..., 1] each).
        out, _, rstd = torch.native_layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)
        scale = run(self.hook_scale, rstd.reciprocal())  # sqrt(var + eps)
        if self.hook_scale in run.replaced:  # a frozen or patched scale must divide this stream
            out = (x - x.mean(-1, keepdim=True)) * scale.reciprocal() * self.w + self.b  # as the kernel: times rstd
        return run(self.hook_normalized, out)


class Attention(Part):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        d, H = cfg.d_model, cfg.n_head
        self.n_head, self.d_head, self.layer = H, cfg.d_head, layer
        # Q, K and V of all heads side by side, so one matmul computes them: columns are
        # [Q head 0 .. Q head H-1 | K heads | V heads], each head d_head wide.
        self.W_QKV = nn.Parameter(torch.zeros(d, 3 * d))  # [d_model, 3 * head * d_head]
        self.b_QKV = nn.Parameter(torch.zeros(3 * d))
        self.W_O = nn.Parameter(torch.zeros(d, d))  # [head * d_head, d_model]
        self.b_O = nn.Parameter(torch.zeros(d))
        self.scale = (cfg.d_head ** -0.5 if cfg.scale_attn_weights else 1.0)
        if cfg.scale_attn_by_inverse_layer_idx:
            self.scale /= layer + 1
        self.upcast = cfg.reorder_and_upcast_attn
        self.hook = {n: get_act_name(n, layer) for n in ("q", "k", "v", "attn_scores", "pattern", "z", "result")}

    def heads(self, fused: Tensor) -> Tensor:
        """W_QKV [d_model, 3*head*d_head] -> [3, head, d_model, d_head]; b_QKV -> [3, head, d_head]."""
        split = fused.view(*fused.shape[:-1], 3, self.n_head, self.d_head)
        return split.permute(1, 2, 0, 3) if fused.dim() == 2 else split

    def forward(self, x: Tensor, qkv_inputs, run: Run, mask: Tensor | None, past=None, keep_last: int | None = None):
        """x: ln1 output [batch, pos, d_model]; qkv_inputs: per-head normalised inputs or None.
        past (generation; sweeps): earlier keys and values. keep_last=k (sweeps only): only the last k
        positions query (every position is still a key and value)."""
        (B, T, _), H, dh, hook = x.shape, self.n_head, self.d_head, self.hook
        if qkv_inputs is None:
            # One copy lays q, k and v out head-major for attention; the points see [batch, pos, head, d_head] views.
            qkv = affine(x, self.W_QKV, self.b_QKV).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4).contiguous()
            q, k, v = qkv.transpose(2, 3).unbind(0)  # [batch, pos, head, d_head] each
        else:  # each head reads its own copy of the stream: [batch, pos, head, d_model] each
            W, b = self.heads(self.W_QKV), self.heads(self.b_QKV)  # [3, head, d_model, d_head], [3, head, d_head]
            q, k, v = (torch.einsum("bphm,hmd->bphd", inp, W[i]) + b[i] for i, inp in enumerate(qkv_inputs))
        q, k, v = run(hook["q"], q), run(hook["k"], k), run(hook["v"], v)
        if past is not None:  # generation: keys and values of earlier tokens, [batch, k_pos, head, d_head]
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        present = (k, v)
        if keep_last is not None:  # the mask holds the rows of these k queries
            q, T = q[:, -keep_last:], keep_last
        if run.wants(hook["attn_scores"]) or run.wants(hook["pattern"]):
            if mask is None:  # plain causal, no earlier positions
                mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            dtype = torch.float32 if self.upcast else q.dtype
            qh, kh, vh = q.transpose(1, 2).to(dtype), k.transpose(1, 2).to(dtype), v.transpose(1, 2)  # [batch, head, pos, d_head]
            scores = torch.matmul(qh, kh.transpose(-1, -2)).mul_(self.scale)  # [batch, head, q_pos, k_pos]
            scores = run(hook["attn_scores"], scores.masked_fill_(~mask, float("-inf")))
            pattern = run(hook["pattern"], scores.softmax(-1).to(v.dtype))  # [batch, head, q_pos, k_pos]
            z = torch.matmul(pattern, vh).transpose(1, 2)  # [batch, pos, head, d_head]
        else:  # nobody looks at the pattern: torch's fused kernel gives the same z
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, is_causal=mask is None and T > 1,
                                               scale=self.scale).transpose(1, 2)
        z = run(hook["z"], z)
        if run.wants(hook["result"]):  # each head's own write into the residual stream
            W_O = self.W_O.view(H, dh, -1)  # [head, d_head, d_model]
            result = run(hook["result"], torch.einsum("bphd,hdm->bphm", z, W_O))  # [batch, pos, head, d_model]
            return result.sum(2) + self.b_O, present
        return affine(z.reshape(B, T, H * dh), self.W_O, self.b_O), present


class MLP(Part):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        self.W_in = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = ACTIVATIONS[cfg.activation_function]
        self.hook_pre, self.hook_post = get_act_name("pre", layer), get_act_name("post", layer)

    def forward(self, x: Tensor, run: Run) -> Tensor:  # [batch, pos, d_model] -> same
        pre = run(self.hook_pre, affine(x, self.W_in, self.b_in))  # [batch, pos, d_mlp]
        post = run(self.hook_post, self.act(pre))
        return affine(post, self.W_out, self.b_out)


class Block(Part):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        self.ln1, self.attn = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, layer, "ln1"), Attention(cfg, layer)
        self.ln2, self.mlp = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, layer, "ln2"), MLP(cfg, layer)
        self.n_head, self.layer = cfg.n_head, layer
        self.hook = {n: get_act_name(n, layer) for n in ("resid_pre", "q_input", "k_input", "v_input", "attn_out",
                                                         "resid_mid", "mlp_in", "mlp_out", "resid_post")}

    def attention_half(self, resid: Tensor, run: Run, mask: Tensor | None, past, keep_last: int | None):
        """resid_pre -> (resid_pre + attention output, at the kept positions; (k, v) of every position)."""
        hook = self.hook
        resid = run(hook["resid_pre"], resid)  # [batch, pos, d_model]
        normalized = self.ln1(resid, run)
        qkv_inputs = None
        split = [hook[f"{c}_input"] for c in "qkv"]
        if any(run.wants(n) for n in split):
            # q, k and v now read per-head copies, normalised each on its own; a replaced ln1 output
            # would feed nothing, so say so rather than ignore it.
            for n in (self.ln1.hook_scale, self.ln1.hook_normalized):
                if n in run.replaced:
                    raise ValueError(f"a hook replaced {n} in a call that also uses per-head inputs of layer "
                                     f"{self.layer}; patch {split[0]} (or k/v) instead")
            copy = resid.unsqueeze(2).expand(-1, -1, self.n_head, -1)  # [batch, pos, head, d_model]
            no_hooks = Run()  # the per-head layer norms are not separate points
            qkv_inputs = [self.ln1(run(n, copy.clone()), no_hooks) for n in split]
        attn_out, present = self.attn(normalized, qkv_inputs, run, mask, past, keep_last)
        if keep_last is not None:  # sweeps only: from here on only the last k positions are computed
            resid = resid[:, -keep_last:]
        return resid + run(hook["attn_out"], attn_out), present

    def forward(self, resid: Tensor, run: Run, mask: Tensor | None, past=None, keep_last: int | None = None,
                from_mid: bool = False):
        """resid: the stream before the block [batch, pos, d_model]; from_mid: after its attention instead,
        so only the MLP half runs. Returns (resid_post, this block's keys and values or None)."""
        hook, present = self.hook, None
        if from_mid:  # sweeps only
            resid = resid if keep_last is None else resid[:, -keep_last:]
        else:
            resid, present = self.attention_half(resid, run, mask, past, keep_last)
        resid = run(hook["resid_mid"], resid)
        mlp_in = run(hook["mlp_in"], resid)
        mlp_out = run(hook["mlp_out"], self.mlp(self.ln2(mlp_in, run), run))
        return run(hook["resid_post"], resid + mlp_out), present


# ---------------------------------------------------------------------------------------------
# The model.

# The per-layer weights in analysis notation: (the block parameter, its per-head reading).
_STACKED = {
    **{f"W_{c}": ("attn.W_QKV", lambda attn, w, i=i: attn.heads(w)[i]) for i, c in enumerate("QKV")},
    **{f"b_{c}": ("attn.b_QKV", lambda attn, b, i=i: attn.heads(b)[i]) for i, c in enumerate("QKV")},
    "W_O": ("attn.W_O", lambda attn, w: w.view(attn.n_head, attn.d_head, -1)), "b_O": ("attn.b_O", lambda attn, b: b),
    **{n: (f"mlp.{n}", lambda attn, w: w) for n in ("W_in", "b_in", "W_out", "b_out")},
}


class Transformer(Part):
    """GPT-2. `model(tokens)` gives logits [batch, pos, d_vocab]; hooks and caches are per call."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.zeros(cfg.d_vocab, cfg.d_model))  # [d_vocab, d_model]
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))  # [n_ctx, d_model]
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.ln_final = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)
        # GPT-2 ties the unembedding to the embedding and has no unembedding bias.
        self.W_U_untied = None if cfg.tie_word_embeddings else nn.Parameter(torch.zeros(cfg.d_model, cfg.d_vocab))

    @torch.no_grad()
    def init_weights(self, seed: int = 0, std: float = 0.02) -> "Transformer":
        """GPT-2's initialisation: N(0, std) weights, output projections scaled by 1/sqrt(2 n_layer),
        zero biases, unit layer-norm gains. Seeded, so a test or training run is reproducible."""
        generator = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith((".w",)):
                param.fill_(1.0)
            elif param.dim() == 1:
                param.zero_()
            else:
                scale = (2 * self.cfg.n_layer) ** -0.5 if name.endswith(("W_O", "W_out")) else 1.0
                param.copy_(torch.randn(param.shape, generator=generator) * std * scale)
        return self

    def save_pretrained(self, directory) -> None:
        """Writes config.json + model.safetensors in HF's GPT-2 layout (names: minitx/checkpoint.py)."""
        checkpoint.save_pretrained(self, directory)

    # -- weights in analysis notation -------------------------------------------------------------
    # W_U is a view. The per-layer stacks (W_Q [layer, head, d_model, d_head], ...) are copies, made once
    # and kept until a weight they come from changes (an in-place edit, load_state_dict, .to(): each
    # parameter's identity, storage and version counter key the copy) or the copy itself is written to.
    # Edit weights through the parameters (model.blocks[l].attn.W_QKV), not these. Where gradients are
    # on and the weights require them, each read stacks afresh so gradients flow.
    @property
    def W_U(self) -> Tensor:  # [d_model, d_vocab]
        return self.W_E.T if self.W_U_untied is None else self.W_U_untied

    def _stacked(self, name: str) -> Tensor:  # [layer, ...]
        source, view = _STACKED[name]
        params = [block.get_parameter(source) for block in self.blocks]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params) or any(p.is_inference() for p in params):
            return torch.stack([view(block.attn, p) for block, p in zip(self.blocks, params)])  # fresh every read
        key = [(id(p), p.data_ptr(), p._version) for p in params]
        cache = self.__dict__.setdefault("_stacked_cache", {})
        if name in cache and cache[name][0] == key and cache[name][1]._version == cache[name][2]:
            return cache[name][1]
        with torch.inference_mode(False), torch.no_grad():  # a tensor with a version counter, in any mode
            value = torch.stack([view(block.attn, p) for block, p in zip(self.blocks, params)])
        cache[name] = (key, value, value._version)
        return value

    W_Q, W_K, W_V = (property(lambda self, n=n: self._stacked(n)) for n in ("W_Q", "W_K", "W_V"))
    b_Q, b_K, b_V = (property(lambda self, n=n: self._stacked(n)) for n in ("b_Q", "b_K", "b_V"))  # [layer, head, dh]
    W_O, b_O = (property(lambda self, n=n: self._stacked(n)) for n in ("W_O", "b_O"))  # [layer, head, d_head, d_model]
    W_in, b_in = (property(lambda self, n=n: self._stacked(n)) for n in ("W_in", "b_in"))  # [layer, d_model, d_mlp]
    W_out, b_out = (property(lambda self, n=n: self._stacked(n)) for n in ("W_out", "b_out"))  # [layer, d_mlp, d_model]

    # -- the forward pass -------------------------------------------------------------------------
    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None, *, start_at_layer: int | None = None,
                stop_at_layer: int | None = None,
                past_kv: list | None = None, keep_last: int | None = None, start_at_mid: bool = False,  # sweeps only
                _run: Run | None = None) -> Tensor:
        """tokens [batch, pos] (or [pos]) -> logits [batch, pos, d_vocab].

        attention_mask [batch, pos]: 1 for real tokens, 0 for padding (left or right). Positions
        count real tokens only (HF generate's rule), so a padded prompt sees what it sees alone.
        start_at_layer=l: `tokens` is instead the residual stream before block l [batch, pos, d_model].
        stop_at_layer=l: return the residual stream before block l (l = n_layer: before ln_final).

        For sweeps only (minitx/engine.py uses them; a first reading can skip them):
        past_kv (with start_at_layer): [(k, v) [batch, n_past, head, d_head]] for each block run, the keys
        and values of n_past earlier positions; the input then holds only the positions after them.
        keep_last=k: the last block this call runs computes only the last k positions (their attention
        still reads every position), and so does the output: [batch, k, ...]. A metric that reads one
        position needs no more; in that block, the points after q, k and v hold only those positions.
        start_at_mid=True (with start_at_layer=l): the input is block l's resid_mid; block l runs its MLP only.
        """
        run = _run or self._run(*self._context_hooks)
        start, stop = check_layer_range(start_at_layer, stop_at_layer, self.cfg.n_layer)
        if start_at_layer is None:  # token ids: embed them
            tokens = check_tokens(tokens, self.cfg.d_vocab)
            check_attention_mask(attention_mask, tokens.shape)
            if attention_mask is not None:
                check_prompt_rows(attention_mask)  # as generate: a row of padding only is no prompt
            positions = check_context(self.positions(tokens.shape, attention_mask, self.W_pos.device), self.cfg.n_ctx)
            resid = self.embed(tokens, positions, run)
        else:  # a residual stream
            resid = check_residual(tokens, self.cfg.d_model, self.W_E)
            check_attention_mask(attention_mask, resid.shape[:2])
        # -- sweeps only: keys and values of earlier positions, the last positions only, the MLP half only --
        n_past = check_sweep_options(resid, self.cfg, start_at_layer, stop - start, past_kv, keep_last, start_at_mid,
                                     attention_mask)
        mask = self._attention_mask(attention_mask, resid.shape[:2], resid.device, n_past)
        if keep_last is not None:
            last_mask = self._attention_mask(attention_mask, resid.shape[:2], resid.device, n_past, keep_last)
        for i, block in enumerate(self.blocks[start:stop]):
            past = None if past_kv is None else past_kv[i]
            last = keep_last is not None and start + i == stop - 1
            resid, _ = block(resid, run, last_mask if last else mask, past, keep_last if last else None,
                             from_mid=start_at_mid and i == 0)
        if stop_at_layer is not None:
            return resid  # the residual stream before block `stop` (before ln_final when stop == n_layer)
        return self.unembed(resid, run)

    def embed(self, tokens: Tensor, positions: Tensor, run: Run) -> Tensor:  # [batch, pos], [batch or 1, pos]
        embed = run(get_act_name("embed"), self.W_E[tokens])  # [batch, pos, d_model]
        pos_embed = run(get_act_name("pos_embed"), self.W_pos[positions].expand_as(embed))
        return embed + pos_embed

    def unembed(self, resid: Tensor, run: Run | None = None, fwd_hooks=(), token_ids: Tensor | None = None) -> Tensor:
        """[..., d_model] -> [..., d_vocab]: the final layer norm (on resid's own statistics) and W_U.
        ln_final hooks: those of `run`, else fwd_hooks plus any set with `model.hooks(...)`.
        token_ids [k]: only these columns of W_U, [..., k] (a logit difference reads two)."""
        x = self.ln_final(resid, run or self._run(self._context_hooks[0] + hook_list(fwd_hooks)))
        if token_ids is not None:
            return x @ self.W_U[:, token_ids]
        return F.linear(x, self.W_E) if self.W_U_untied is None else x @ self.W_U_untied

    @staticmethod
    def positions(shape, attention_mask: Tensor | None, device) -> Tensor:
        if attention_mask is None:
            return torch.arange(shape[-1], device=device).unsqueeze(0)  # [1, pos]
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [batch, pos]

    def _attention_mask(self, attention_mask, shape, device, n_past: int = 0, keep_last: int | None = None):
        """-> bool [batch or 1, 1, q_pos, k_pos], True where a query may read a key; None: plain causal.
        attention_mask (checked by the caller) covers the n_past earlier positions and the T new ones.
        keep_last=k: only the rows of the last k queries."""
        T = shape[1]
        if attention_mask is None and n_past == 0 and keep_last is None:
            return None
        causal = torch.ones(T, n_past + T, dtype=torch.bool, device=device).tril(n_past)  # [q_pos, k_pos]
        if attention_mask is None:
            mask = causal[None, None]
        else:
            keys = attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, k_pos]
            # A padding query may see only itself, so its softmax row is never empty (no NaN).
            itself = (torch.arange(T, device=device)[:, None] + n_past) == torch.arange(n_past + T, device=device)
            mask = (causal & keys) | itself
        return mask if keep_last is None else mask[..., -keep_last:, :]

    # -- hooks and caches -------------------------------------------------------------------------
    def _run(self, fwd_hooks=(), bwd_hooks=(), cache_filter: NamesFilter = False, cache: dict | None = None,
             keep_grad: bool = False) -> Run:
        """One call's hooks and cache requests, resolved against this model's point names."""
        n = self.cfg.n_layer
        return Run(point_names(n), point_names(n, include_on_request=False), fwd_hooks, bwd_hooks, cache_filter,
                   cache, keep_grad)

    def hooks(self, fwd_hooks=(), bwd_hooks=()):
        """Every forward inside the `with` block, in this thread (or asyncio task), runs with these hooks;
        they are gone after it, whatever order overlapping blocks exit in. Other threads never see them."""
        self._run(fwd_hooks, bwd_hooks)  # fail on typos before anything runs
        return context_hooks(self, hook_list(fwd_hooks), hook_list(bwd_hooks, "bwd_hooks"))

    _context_hooks = property(active_context_hooks)  # (fwd, bwd) set with model.hooks(...) in this thread

    @property
    def has_context_hooks(self) -> bool:
        """True while a `with model.hooks(...)` block is active in the calling thread: then hooks may index
        positions, so analysis shortcuts that drop or reuse positions are not exact."""
        return any(self._context_hooks)

    def run_with_hooks(self, tokens: Tensor, *args, fwd_hooks=(), bwd_hooks=(), **kwargs) -> Tensor:
        """Forward where fwd_hooks [(name | names | predicate, fn(act, hook) -> replacement | None)] fire."""
        fwd, bwd = self._context_hooks
        check_keywords(kwargs, "run_with_hooks")
        own = self._run(fwd_hooks, bwd_hooks)  # this call's hooks must be able to fire
        check_hooks_can_fire(own, kwargs.get("start_at_layer"), kwargs.get("stop_at_layer"), self.cfg.n_layer)
        run = self._run(fwd + hook_list(fwd_hooks), bwd + hook_list(bwd_hooks, "bwd_hooks"))
        return self.forward(tokens, *args, _run=run, **kwargs)

    def run_with_cache(self, tokens: Tensor, *args, names_filter: NamesFilter = None, fwd_hooks=(), bwd_hooks=(),
                       keep_grad: bool = False, **kwargs) -> tuple[Tensor, Cache]:
        """-> (logits, cache). names_filter: None (every point computed anyway), a name, names or a
        predicate over all names (on-request points included). The cache holds values after hooks."""
        cache = Cache(n_layers=self.cfg.n_layer)
        fwd, bwd = self._context_hooks
        check_keywords(kwargs, "run_with_cache")
        own = self._run(fwd_hooks, bwd_hooks)  # this call's hooks must be able to fire
        check_hooks_can_fire(own, kwargs.get("start_at_layer"), kwargs.get("stop_at_layer"), self.cfg.n_layer)
        run = self._run(fwd + hook_list(fwd_hooks), bwd + hook_list(bwd_hooks, "bwd_hooks"), names_filter, cache,
                        keep_grad)
        return self.forward(tokens, *args, _run=run, **kwargs), cache

    # -- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, tokens: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
                 temperature: float = 0.0, top_k: int | None = None, seed: int | None = None,
                 eos_token_id: int | None = None) -> Tensor:
        """-> [batch, pos + max_new_tokens]. temperature 0 is greedy; else sampled (top_k, seed).
        Once a row emits eos_token_id it is padded with eos; generation stops when every row has.
        attention_mask: left or right padding (new tokens follow the padding; each row continues from its
        last real token). Hooks set with model.hooks(...) apply; each step's hooks see only its new positions."""
        tokens = check_tokens(tokens, self.cfg.d_vocab)
        check_attention_mask(attention_mask, tokens.shape)
        check_generation(tokens.shape[1], max_new_tokens, temperature, top_k, eos_token_id, self.cfg)
        if seed is not None:
            check_seed(seed)
        generator = torch.Generator(tokens.device).manual_seed(seed) if seed is not None else None
        mask = torch.ones_like(tokens) if attention_mask is None else attention_mask.long()
        check_prompt_rows(mask)
        run, past = self._run(*self._context_hooks), [None] * self.cfg.n_layer
        done = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)  # rows that emitted eos
        step_input, offset = tokens, 0
        for _ in range(max_new_tokens):
            # Positions: from the mask for the prompt, then one past each row's last real token.
            positions = self.positions(mask.shape, mask, tokens.device)[:, offset:]  # [batch, new]
            resid = self.embed(step_input, positions, run)
            attn = self._attention_mask(mask, step_input.shape, tokens.device, n_past=offset)
            for layer, block in enumerate(self.blocks):
                resid, past[layer] = block(resid, run, attn, past[layer])
            if offset == 0:  # the prompt: each row's last real token (right padding ends in pads)
                resid = resid[torch.arange(len(resid)), mask.shape[1] - 1 - mask.flip(1).argmax(1)][:, None]
            logits = self.unembed(resid[:, -1:], run)[:, 0]  # [batch, d_vocab]
            next_token = logits.argmax(-1) if temperature == 0 else self._sample(logits, temperature, top_k, generator)
            if eos_token_id is not None:
                next_token = next_token.masked_fill(done, eos_token_id)
                done |= next_token == eos_token_id
            tokens = torch.cat([tokens, next_token[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            offset, step_input = tokens.shape[1] - 1, next_token[:, None]
            if eos_token_id is not None and bool(done.all()):
                break
        return tokens

    @staticmethod
    def _sample(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:  # [batch, vocab] -> [batch]
        # Shifted so the largest logit is 0 before dividing: a tiny temperature gives -inf, never inf or NaN.
        logits = (logits - logits.max(-1, keepdim=True).values) / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

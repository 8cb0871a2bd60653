"""TransformerLens 4.x as a benchmark peer: its bridge over a transformers model, and its native model.

Optional: `scripts/bench.py` uses this only when `transformer_lens` imports. TransformerLens 4 has no
HookedTransformer; `TransformerBridge.boot_transformers` wraps a Hugging Face model (forcing eager
attention), `TransformerBridge.boot_native` builds TransformerLens's own model from a config.

Both peers get exactly the benchmark's weights with no processing (no folded layer norms, no
centring), so their logits equal transformers' to float rounding; bench.py checks that.

Known incompatibility (TransformerLens 4.3.0 with transformers 5.x): the bridge's cached generation
reads the KV cache under its old keyword name and silently never extends it, so greedy tokens are
wrong. `GREEDY` turns the cache off, which gives the right tokens at the cost of recomputing the
prefix each step; the native model has no KV cache either way.
"""

from __future__ import annotations

import torch

GREEDY = dict(do_sample=False, stop_at_eos=False, use_past_kv_cache=False, verbose=False)


def bridge(local_dir, device: str = "cpu"):
    """The bridge, booted from the checkpoint directory (it wraps its own copy: TransformerLens swaps
    submodules in place, which would turn the benchmark's transformers peer into a hooked model)."""
    from transformer_lens.model_bridge import TransformerBridge
    return TransformerBridge.boot_transformers(str(local_dir), device=device, dtype=torch.float32).eval()


def native(hf_model, device: str = "cpu"):
    """TransformerLens's native model with the transformers model's weights copied in."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.native.init import _unwrap_component as unwrap

    c = hf_model.config
    if c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn or not c.scale_attn_weights:
        raise ValueError("TransformerLens's native model has no variant for these GPT-2 attention flags")
    cfg = TransformerBridgeConfig(d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_layers=c.n_layer,
                                  n_ctx=c.n_positions, n_heads=c.n_head, d_vocab=c.vocab_size,
                                  d_mlp=c.n_inner or 4 * c.n_embd, act_fn=c.activation_function,
                                  eps=c.layer_norm_epsilon, normalization_type="LN",
                                  positional_embedding_type="standard", init_weights=False, model_name="gpt2-native")
    peer = TransformerBridge.boot_native(cfg, device=device, dtype=torch.float32)
    model, sd, d = peer.original_model, hf_model.state_dict(), c.n_embd

    def put(module, weight, bias=None):  # HF Conv1D stores [in, out]; nn.Linear wants [out, in]
        module = unwrap(module)
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)

    with torch.no_grad():
        put(model.tok_embed, sd["transformer.wte.weight"])
        put(model.pos, sd["transformer.wpe.weight"])
        for i, block in enumerate(model.layers):
            block, h = unwrap(block), f"transformer.h.{i}."
            put(block.ln1, sd[h + "ln_1.weight"], sd[h + "ln_1.bias"])
            put(block.ln2, sd[h + "ln_2.weight"], sd[h + "ln_2.bias"])
            attn, W, b = unwrap(block.attn), sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"]
            for j, name in enumerate("qkv"):
                put(getattr(attn, name), W[:, j * d:(j + 1) * d].T, b[j * d:(j + 1) * d])
            put(attn.o, sd[h + "attn.c_proj.weight"].T, sd[h + "attn.c_proj.bias"])
            mlp = unwrap(block.mlp)
            put(mlp.fc_in, sd[h + "mlp.c_fc.weight"].T, sd[h + "mlp.c_fc.bias"])
            put(mlp.fc_out, sd[h + "mlp.c_proj.weight"].T, sd[h + "mlp.c_proj.bias"])
        put(model.ln_out, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
        put(model.head, sd.get("lm_head.weight", sd["transformer.wte.weight"]))
    return peer.eval()


def peers(hf_model, local_dir, device: str = "cpu") -> dict:
    return {"TL bridge": bridge(local_dir, device), "TL native": native(hf_model, device)}


FRESH_PROCESS = ("import torch; from transformer_lens.model_bridge import TransformerBridge; "
                 "m = TransformerBridge.boot_transformers({path!r}, device='cpu'); m(torch.tensor([[1, 2, 3]]))")


def tl_edge_attribution(bridge_model, clean, corrupted, metric):
    """TransformerLens 4.3's edge attribution patching (denoising form, per position, averaged over pairs):
    TL's own result object, what a benchmark times."""
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch
    return attribution_patch(bridge_model, clean, corrupted, lambda logits: metric(logits).sum(),
                             EdgeAttributionConfig(granularity="edge"))


def tl_edge_scores(bridge_model, clean, corrupted, metric, graph, result=None) -> torch.Tensor:
    """tl_edge_attribution (or its given `result`) summed over positions and laid out in minitx's EdgeGraph
    order: [n_edges]."""
    result = tl_edge_attribution(bridge_model, clean, corrupted, metric) if result is None else result
    index = {graph.label(e): e for e in range(len(graph.edges))}
    out = torch.zeros(len(graph.edges), dtype=torch.float64)
    for (writer, reader), score in result.edge_scores.items():
        out[index[f"{_label(writer)} -> {_label(reader)}"]] += score
    return out


def _label(node) -> str:
    """A TL attribution Node -> minitx's EdgeGraph label of that writer or reader."""
    if node.kind == "embed":
        return "input"
    if node.kind == "attn_head_out":
        return f"{node.layer}.{node.head}"
    if node.kind in ("mlp_out", "mlp_in"):
        return f"mlp{node.layer}"
    if node.kind == "logits":
        return "logits"
    return f"{node.layer}.{node.head}.{node.kind[0]}"  # q_input -> L.H.q

"""minitx: a small, hand-written GPT-2 with introspection built in.

    import minitx
    model = minitx.load("gpt2")                      # or a local directory / .safetensors file
    tokens = minitx.to_tokens("The cat sat on the", prepend_bos=True)
    logits, cache = model.run_with_cache(tokens)
    cache["pattern", 3]                              # blocks.3.attn.hook_pattern [batch, head, q_pos, k_pos]
"""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["__version__", "POINTS", "Cache", "Config", "HookPoint", "Transformer", "get_act_name", "point_names"]


def __getattr__(name):
    # Everything is imported on first use, so `import minitx` (and the command line's start) does not load
    # torch: a Ctrl-C while torch loads then happens inside `minitx.cli.main`, which answers it in one line.
    if name in __all__[1:]:
        from minitx import model
        return getattr(model, name)
    if name in ("load", "save_pretrained", "download"):
        from minitx import loading
        return getattr(loading, name)
    if name == "view":  # minitx.view(model, prompts, ...) -> a self-contained HTML page (minitx/viewer.py)
        from minitx.viewer import view
        return view
    if name in ("Tokenizer", "to_tokens", "to_tokens_padded", "to_string", "to_str_tokens", "to_single_token"):
        from minitx import tokenizer
        return getattr(tokenizer, name) if name == "Tokenizer" else getattr(tokenizer.Tokenizer.default(), name)
    raise AttributeError(f"module 'minitx' has no attribute {name!r}")

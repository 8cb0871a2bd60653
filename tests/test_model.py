"""The activation table, hooks and caches, and the errors a user sees (no transformers needed)."""

import pytest
import torch
from torch.testing import assert_close

import minitx
from minitx.model import ON_REQUEST, POINTS, point_names
from tests.conftest import random_model


def axis_sizes(cfg, batch, pos):
    return {"batch": batch, "pos": pos, "q_pos": pos, "k_pos": pos, "d_model": cfg.d_model, "head": cfg.n_head,
            "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab, "1": 1}


def test_every_point_fires_once_with_its_declared_axes(tiny_model):
    cfg, batch, pos = tiny_model.cfg, 2, 7
    fired = []
    hooks = [(lambda name: True, lambda x, hook: fired.append((hook.name, tuple(x.shape))))]
    tiny_model.run_with_hooks(torch.randint(0, cfg.d_vocab, (batch, pos)), fwd_hooks=hooks)
    names = [name for name, _ in fired]
    assert names == list(point_names(cfg.n_layer)) and len(set(names)) == len(names)
    sizes = axis_sizes(cfg, batch, pos)
    templates = {t.format(l=l): axes for t, axes in POINTS.items() for l in range(cfg.n_layer)}
    for name, shape in fired:
        assert shape == tuple(sizes[a] for a in templates[name]), name


def test_default_cache_leaves_out_on_request_points(tiny_model):
    _, cache = tiny_model.run_with_cache(torch.tensor([[1, 2, 3]]))
    assert set(cache) == set(point_names(tiny_model.cfg.n_layer, include_on_request=False))
    assert not any(name.endswith(ON_REQUEST) for name in cache)
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]


def test_names_filter_forms(tiny_model):
    tokens = torch.tensor([[5, 6, 7]])
    for spec, expected in [("hook_embed", {"hook_embed"}), (["blocks.0.hook_resid_pre", "hook_embed"],
                           {"blocks.0.hook_resid_pre", "hook_embed"}),
                           (lambda n: n.endswith("hook_z"), {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"})]:
        _, cache = tiny_model.run_with_cache(tokens, names_filter=spec)
        assert set(cache) == expected


def test_on_request_points_are_consistent(tiny_model):
    tokens = torch.randint(0, 257, (2, 6))
    logits, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: True)
    assert_close(logits, tiny_model(tokens), atol=1e-5, rtol=1e-5)
    for layer in range(2):
        result, z = cache["result", layer], cache["z", layer]
        assert_close(result.sum(2) + tiny_model.b_O[layer], cache["attn_out", layer], atol=1e-5, rtol=1e-5)
        assert_close(torch.einsum("bphd,hdm->bphm", z, tiny_model.W_O[layer]), result, atol=1e-5, rtol=1e-5)
        for kind in "qkv":  # each head's copy of the residual is the residual
            assert_close(cache[f"{kind}_input", layer], cache["resid_pre", layer][:, :, None].expand_as(
                cache[f"{kind}_input", layer]))


def test_patching_with_own_cache_changes_nothing(tiny_model):
    tokens = torch.randint(0, 257, (2, 8))
    logits, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: True)
    # Per-head inputs take over from ln1 in their layer, so ln1 is left out here (replacing both is an error).
    hooks = [(name, lambda x, hook: cache[hook.name]) for name in cache if ".ln1." not in name]
    assert_close(tiny_model.run_with_hooks(tokens, fwd_hooks=hooks), logits, atol=1e-5, rtol=1e-5)


def test_patching_one_head_input_changes_only_that_head(tiny_model):
    tokens = torch.randint(0, 257, (1, 8))
    _, clean = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.1.attn.hook_"))

    def noise_head_2(x, hook):
        x = x.clone()
        x[:, :, 2] += 1.0
        return x

    _, cache = tiny_model.run_with_cache(tokens, fwd_hooks=[("blocks.1.hook_k_input", noise_head_2)],
                                         names_filter=lambda n: n.startswith("blocks.1.attn.hook_"))
    assert_close(cache["q", 1], clean["q", 1])
    assert_close(cache["k", 1][:, :, [0, 1, 3]], clean["k", 1][:, :, [0, 1, 3]], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(cache["k", 1][:, :, 2], clean["k", 1][:, :, 2])


def test_raising_hook_leaves_no_state(tiny_model):
    tokens = torch.randint(0, 257, (1, 5))
    clean = tiny_model(tokens)

    def boom(x, hook):
        raise RuntimeError("user bug")

    with pytest.raises(RuntimeError, match="user bug"):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", boom)])
    with pytest.raises(RuntimeError, match="user bug"):
        with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", boom)]):
            tiny_model(tokens)
    assert not tiny_model.has_context_hooks
    assert torch.equal(tiny_model(tokens), clean)


def test_context_manager_hooks_apply_inside_only(tiny_model):
    tokens = torch.randint(0, 257, (1, 5))
    clean = tiny_model(tokens)
    with tiny_model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: torch.zeros_like(x))]):
        inside = tiny_model(tokens)
    assert not torch.allclose(inside, clean)
    assert torch.equal(tiny_model(tokens), clean)


def test_unknown_name_suggests_close_names(tiny_model):
    with pytest.raises(KeyError, match="did you mean blocks.0.attn.hook_pattern"):
        tiny_model.run_with_cache(torch.tensor([[1]]), names_filter="blocks.0.attn.hook_patern")
    with pytest.raises(KeyError, match="unknown activation point"):
        tiny_model.run_with_hooks(torch.tensor([[1]]), fwd_hooks=[("blocks.9.hook_resid_pre", lambda x, h: x)])


@pytest.mark.parametrize("bad, message", [
    (lambda x: x[:, :-1], "hook on blocks.0.hook_resid_mid returned shape"),
    (lambda x: x.double(), "torch.float64"),
    (lambda x: x * float("nan"), "NaN or inf"),
    (lambda x: "oops", "returned str"),
])
def test_bad_hook_results_name_the_hook(tiny_model, bad, message):
    with pytest.raises((ValueError, TypeError, FloatingPointError), match=message):
        tiny_model.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=[("blocks.0.hook_resid_mid",
                                                                          lambda x, hook: bad(x))])


@pytest.mark.parametrize("tokens, message", [
    (torch.tensor([[1, 257]]), "outside the vocabulary"),
    (torch.tensor([[-1, 2]]), "outside the vocabulary"),
    (torch.zeros(1, 65, dtype=torch.long), "n_positions=64"),
    (torch.zeros(1, 0, dtype=torch.long), "at least one token"),
    (torch.zeros(0, 3, dtype=torch.long), "at least one token"),
    (torch.tensor([[0.5, 1.0]]), "integer ids"),
    ([[1, 2]], "LongTensor"),
])
def test_bad_tokens(tiny_model, tokens, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_model(tokens)


def test_attention_mask_must_match_tokens(tiny_model):
    with pytest.raises(ValueError, match="attention_mask has shape"):
        tiny_model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4))


def test_start_and_stop_at_layer_compose(tiny_model):
    tokens = torch.randint(0, 257, (2, 6))
    resid1 = tiny_model(tokens, stop_at_layer=1)
    _, cache = tiny_model.run_with_cache(tokens)
    assert_close(resid1, cache["resid_pre", 1])
    assert_close(tiny_model(resid1, start_at_layer=1), tiny_model(tokens), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="start_at_layer"):
        tiny_model(tokens, start_at_layer=2, stop_at_layer=1)


def test_gradients_reach_any_point(tiny_model):
    tokens = torch.randint(0, 257, (1, 6))
    grads = {}
    with torch.enable_grad():
        kept = {}

        def keep(x, hook):
            x = x.detach().requires_grad_(True)
            kept[hook.name] = x
            return x

        logits = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", keep)],
                                           bwd_hooks=[("blocks.1.hook_resid_mid",
                                                       lambda g, hook: grads.setdefault(hook.name, g))])
        logits[0, -1, 3].backward()
    assert kept["blocks.0.attn.hook_z"].grad.shape == (1, 6, 4, 16)
    assert grads["blocks.1.hook_resid_mid"].shape == (1, 6, 64)
    assert kept["blocks.0.attn.hook_z"].grad[0, :, :].abs().sum() > 0


def test_replacing_ln1_while_using_head_inputs_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="per-head inputs"):
        tiny_model.run_with_hooks(torch.tensor([[1, 2]]), fwd_hooks=[
            ("blocks.0.ln1.hook_normalized", lambda x, h: x + 1), ("blocks.0.hook_q_input", lambda x, h: None)])
    # Only reading ln1 beside the per-head inputs is fine.
    tiny_model.run_with_cache(torch.tensor([[1, 2]]), names_filter=lambda n: n.startswith("blocks.0."))


def test_weights_in_analysis_notation(tiny_model):
    cfg = tiny_model.cfg
    assert tiny_model.W_Q.shape == (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_head)
    assert tiny_model.W_O.shape == (cfg.n_layer, cfg.n_head, cfg.d_head, cfg.d_model)
    assert tiny_model.W_U.shape == (cfg.d_model, cfg.d_vocab)
    tokens = torch.randint(0, 257, (1, 5))
    _, cache = tiny_model.run_with_cache(tokens, names_filter=["blocks.1.ln1.hook_normalized", "blocks.1.attn.hook_q"])
    q = torch.einsum("bpm,hmd->bphd", cache["normalized", 1, "ln1"], tiny_model.W_Q[1]) + tiny_model.b_Q[1]
    assert_close(q, cache["q", 1], atol=1e-5, rtol=1e-5)


def test_outputs_do_not_depend_on_batch_neighbours():
    model = random_model(3)
    tokens = torch.randint(0, 257, (4, 9))
    alone = torch.cat([model(tokens[i:i + 1]) for i in range(4)])
    assert_close(model(tokens), alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(model(tokens), model(tokens))  # bitwise repeatable on CPU


def test_sampling_is_seeded(tiny_model):
    prompt = torch.tensor([[1, 2, 3]])
    a = tiny_model.generate(prompt, 8, temperature=1.0, top_k=20, seed=7)
    b = tiny_model.generate(prompt, 8, temperature=1.0, top_k=20, seed=7)
    assert torch.equal(a, b) and a.shape == (1, 11)


def greedy_by_full_forwards(model, tokens, n):
    """Greedy decoding by the definition: a full forward of the whole sequence for every new token."""
    for _ in range(n):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
    return tokens


def test_generate_continues_each_row_from_its_last_real_token():
    """Right padding (to_tokens_padded's default) as well as left: each row continues as it would alone."""
    model = random_model(4)
    rows = [torch.tensor([5, 9, 2, 7, 3]), torch.tensor([8, 1, 4])]
    alone = [greedy_by_full_forwards(model, row[None], 6)[0, len(row):] for row in rows]
    for side in ("right", "left"):
        tokens, mask = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)
        for i, row in enumerate(rows):
            where = slice(0, len(row)) if side == "right" else slice(5 - len(row), 5)
            tokens[i, where], mask[i, where] = row, 1
        out = model.generate(tokens, 6, attention_mask=mask)
        assert torch.equal(out[:, 5:], torch.stack(alone)), side


def test_generate_runs_under_context_hooks():
    model = random_model(5)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    for point in ("blocks.0.hook_mlp_out", "hook_embed", "hook_pos_embed"):
        with model.hooks(fwd_hooks=[(point, lambda x, hook: -3 * x)]):
            hooked = model.generate(prompt, 8)
            expected = greedy_by_full_forwards(model, prompt, 8)
        assert torch.equal(hooked, expected) and not torch.equal(hooked, model.generate(prompt, 8)), point


def test_get_act_name():
    assert minitx.get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert minitx.get_act_name("scale", 2, "ln2") == "blocks.2.ln2.hook_scale"
    assert minitx.get_act_name("scale") == "ln_final.hook_scale"
    assert minitx.get_act_name("q_input", 0) == "blocks.0.hook_q_input"


def test_past_keys_and_values_let_a_suffix_run_alone(tiny_model):
    tokens = torch.randint(0, 257, (2, 9))
    logits, cache = tiny_model.run_with_cache(tokens)
    for layer, p in [(0, 3), (1, 5), (1, 1)]:
        past = [(cache["k", l][:, :p], cache["v", l][:, :p]) for l in range(layer, 2)]
        suffix = tiny_model(cache["resid_pre", layer][:, p:], start_at_layer=layer, past_kv=past)
        assert_close(suffix, logits[:, p:], atol=1e-5, rtol=1e-5)
        _, suffix_cache = tiny_model.run_with_cache(cache["resid_pre", layer][:, p:], start_at_layer=layer,
                                                    past_kv=past, names_filter=lambda n: n.endswith("pattern"))
        assert_close(suffix_cache["pattern", 1], cache["pattern", 1][:, :, p:], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="past_kv needs start_at_layer"):
        tiny_model(tokens, past_kv=past)


def test_keep_last_computes_the_last_block_at_the_last_positions_only(tiny_model):
    tokens = torch.randint(0, 257, (3, 9))
    logits, cache = tiny_model.run_with_cache(tokens)
    for k in (1, 4, 9):
        kept, kept_cache = tiny_model.run_with_cache(tokens, keep_last=k)
        assert_close(kept, logits[:, -k:], atol=1e-5, rtol=1e-5)
        # earlier blocks are whole; in the last block, points after q/k/v hold the kept positions only
        assert kept_cache["resid_post", 0].shape == cache["resid_post", 0].shape
        assert kept_cache["k", 1].shape == cache["k", 1].shape
        assert_close(kept_cache["pattern", 1], cache["pattern", 1][:, :, -k:], atol=1e-6, rtol=1e-5)
        assert_close(kept_cache["resid_post", 1], cache["resid_post", 1][:, -k:], atol=1e-5, rtol=1e-5)
    # with padding, with a suffix run from cached keys and values, and stopping early
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0
    assert_close(tiny_model(tokens, attention_mask=mask, keep_last=2),
                 tiny_model(tokens, attention_mask=mask)[:, -2:], atol=1e-5, rtol=1e-5)
    past = [(cache["k", 1][:, :5], cache["v", 1][:, :5])]
    assert_close(tiny_model(cache["resid_pre", 1][:, 5:], start_at_layer=1, past_kv=past, keep_last=1),
                 logits[:, -1:], atol=1e-5, rtol=1e-5)
    assert_close(tiny_model(tokens, stop_at_layer=1, keep_last=3), cache["resid_post", 0][:, -3:],
                 atol=1e-5, rtol=1e-5)


def test_start_at_mid_runs_only_the_mlp_half_of_the_first_block(tiny_model):
    tokens = torch.randint(0, 257, (2, 7))
    logits, cache = tiny_model.run_with_cache(tokens)
    for layer in range(2):
        _, mid_cache = tiny_model.run_with_cache(cache["resid_mid", layer], start_at_layer=layer, start_at_mid=True)
        assert f"blocks.{layer}.attn.hook_z" not in mid_cache and f"blocks.{layer}.hook_resid_pre" not in mid_cache
        assert_close(mid_cache["resid_post", layer], cache["resid_post", layer], atol=1e-5, rtol=1e-5)
        assert_close(tiny_model(cache["resid_mid", layer], start_at_layer=layer, start_at_mid=True, keep_last=1),
                     logits[:, -1:], atol=1e-5, rtol=1e-5)


def test_context_hooks_are_per_thread_and_leave_nothing_whatever_the_exit_order(tiny_model):
    """A enters, B enters, A exits, B exits: each thread sees only its own hooks; none remain."""
    import threading
    tokens = torch.randint(0, 257, (1, 5))
    clean = tiny_model(tokens)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen, errors = {}, []

    def mark(tag):
        def hook(x, h):
            seen.setdefault(tag, []).append(threading.current_thread().name)
        return hook

    def thread_a():
        try:
            with tiny_model.hooks([("hook_embed", mark("A"))]):
                a_in.set()
                b_in.wait(10)
                tiny_model(tokens)
                seen["A_has"] = tiny_model.has_context_hooks
            a_out.set()
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)
            a_out.set()

    def thread_b():
        try:
            a_in.wait(10)
            seen["B_before"] = tiny_model.has_context_hooks  # A's hooks are not B's
            with tiny_model.hooks([("hook_embed", mark("B"))]):
                b_in.set()
                a_out.wait(10)
                tiny_model(tokens)
            seen["B_after"] = tiny_model.has_context_hooks
        except Exception as e:  # noqa: BLE001
            errors.append(e)
            b_in.set()

    ta, tb = threading.Thread(target=thread_a, name="A"), threading.Thread(target=thread_b, name="B")
    ta.start(), tb.start(), ta.join(20), tb.join(20)
    assert not errors, errors
    assert seen["A"] == ["A"] and seen["B"] == ["B"]  # each hook fired once, in its own thread only
    assert seen["A_has"] and not seen["B_before"] and not seen["B_after"]
    assert not tiny_model.has_context_hooks and tiny_model._context_hooks == ([], [])
    assert torch.equal(tiny_model(tokens), clean)


def test_context_hooks_exit_out_of_order_in_one_thread(tiny_model):
    tokens = torch.randint(0, 257, (1, 5))
    outer = tiny_model.hooks([("hook_embed", lambda x, h: x * 0)])
    inner = tiny_model.hooks([("hook_pos_embed", lambda x, h: x * 0)])
    outer.__enter__(), inner.__enter__()
    outer.__exit__(None, None, None)  # the outer block ends first: only its hooks go
    assert len(tiny_model._context_hooks[0]) == 1 and tiny_model.has_context_hooks
    inner.__exit__(None, None, None)
    assert not tiny_model.has_context_hooks


ALL_POINTS = point_names(2)  # tiny_model's, in the order a forward reaches them


@pytest.mark.parametrize("point", ALL_POINTS)
def test_in_place_edit_means_returning_the_edit_and_reaches_no_other_point(tiny_model, point):
    """For every point: x.mul_(1.5) returning None == returning x * 1.5 (logits and cache), and no
    point cached before it, nor the residual stream it was read from, changes."""
    tokens = torch.randint(0, 257, (2, 6), generator=torch.Generator().manual_seed(1))
    # On-request points change how a layer runs (per-head inputs), so they are cached only when edited.
    names = [n for n in ALL_POINTS if n == point or n in point_names(2, include_on_request=False)]

    def in_place(x, hook):
        x.mul_(1.5)

    def returned(x, hook):
        return x * 1.5

    clean_logits, clean = tiny_model.run_with_cache(tokens, names_filter=names)
    logits_a, cache_a = tiny_model.run_with_cache(tokens, names_filter=names, fwd_hooks=[(point, in_place)])
    logits_b, cache_b = tiny_model.run_with_cache(tokens, names_filter=names, fwd_hooks=[(point, returned)])
    assert torch.equal(logits_a, logits_b), f"in-place edit of {point} differs from returning it"
    assert not torch.equal(logits_a, clean_logits), f"the edit of {point} had no effect"
    for name in names:
        assert torch.equal(cache_a[name], cache_b[name]), name
    for name in names[:names.index(point)]:  # earlier points keep their values
        assert torch.equal(cache_a[name], clean[name]), f"an in-place edit of {point} rewrote the cached {name}"


def test_in_place_mlp_in_edits_only_the_mlp_input(tiny_model):
    tokens = torch.randint(0, 257, (1, 5))
    _, cache = tiny_model.run_with_cache(tokens, fwd_hooks=[("blocks.0.hook_mlp_in", lambda x, h: x.zero_())])
    _, clean = tiny_model.run_with_cache(tokens)
    assert torch.equal(cache["blocks.0.hook_resid_mid"], clean["blocks.0.hook_resid_mid"])
    mlp_out = cache["blocks.0.hook_mlp_out"]
    assert torch.equal(cache["blocks.0.hook_resid_post"], clean["blocks.0.hook_resid_mid"] + mlp_out)


def fill_inf_return_none(x, hook):
    x.fill_(float("inf"))


def fill_nan_return_none(x, hook):
    x.fill_(float("nan"))


@pytest.mark.parametrize("hook", [fill_inf_return_none, fill_nan_return_none,
                                  lambda x, h: x.fill_(float("inf"))])  # the last returns x itself
def test_non_finite_in_place_or_returned_is_caught(tiny_model, hook):
    with pytest.raises(FloatingPointError, match="hook on blocks.0.hook_resid_mid returned NaN or inf"):
        tiny_model.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=[("blocks.0.hook_resid_mid", hook)])


@pytest.mark.parametrize("point", ["hook_pos_embed", "blocks.0.attn.hook_q", "blocks.1.attn.hook_k",
                                   "blocks.0.attn.hook_v", "blocks.0.ln1.hook_scale"])
def test_in_place_edits_work_with_batches_and_trainable_weights(point):
    model = random_model().requires_grad_(True)
    tokens = torch.randint(0, 257, (3, 5), generator=torch.Generator().manual_seed(2))
    with torch.enable_grad():
        edited = model.run_with_hooks(tokens, fwd_hooks=[(point, lambda x, h: x.mul_(2.0))])
        returned = model.run_with_hooks(tokens, fwd_hooks=[(point, lambda x, h: x * 2.0)])
        edited.sum().backward()  # gradients flow through the edited copy
    assert torch.equal(edited, returned)
    assert model.W_E.grad is not None and torch.isfinite(model.W_E.grad).all()


@pytest.mark.parametrize("bad, message", [
    (lambda g, h: g.double(), r"backward hook on blocks.0.hook_resid_mid returned shape \(1, 3, 64\), torch.float64"),
    (lambda g, h: g[0], r"backward hook on blocks.0.hook_resid_mid returned shape \(3, 64\)"),
    (lambda g, h: 3.0, "backward hook on blocks.0.hook_resid_mid returned float")])
def test_backward_hook_results_are_checked(bad, message):
    model = random_model().requires_grad_(True)
    with torch.enable_grad():
        logits = model.run_with_hooks(torch.tensor([[1, 2, 3]]), bwd_hooks=[("blocks.0.hook_resid_mid", bad)])
        with pytest.raises(ValueError, match=message):
            logits.sum().backward()


STACKED = ["W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O", "W_in", "b_in", "W_out", "b_out"]


def expected_stack(model, name):
    blocks = model.blocks
    H, dh = model.cfg.n_head, model.cfg.d_head
    qkv = {"W": [b.attn.W_QKV for b in blocks], "b": [b.attn.b_QKV for b in blocks]}
    if name[2] in "QKV":
        i = "QKV".index(name[2])
        return torch.stack([t[..., i * H * dh:(i + 1) * H * dh].unflatten(-1, (H, dh)).movedim(-2, 0)
                            if t.dim() == 2 else t[i * H * dh:(i + 1) * H * dh].view(H, dh) for t in qkv[name[0]]])
    if name == "W_O":
        return torch.stack([b.attn.W_O.view(H, dh, -1) for b in blocks])
    return torch.stack([getattr(b.attn if name == "b_O" else b.mlp, name) for b in blocks])


@pytest.mark.parametrize("name", STACKED)
def test_stacked_weights_are_made_once_and_never_stale(name):
    model = random_model(4)
    first = getattr(model, name)
    assert torch.equal(first, expected_stack(model, name))
    reads = [getattr(model, name) for _ in range(1000)]  # no copy per read: the same tensor every time
    assert all(r is first for r in reads) and len({r.data_ptr() for r in reads}) == 1
    source = {"W_Q": "attn.W_QKV", "W_K": "attn.W_QKV", "W_V": "attn.W_QKV", "b_Q": "attn.b_QKV",
              "b_K": "attn.b_QKV", "b_V": "attn.b_QKV", "W_O": "attn.W_O", "b_O": "attn.b_O"}.get(name, f"mlp.{name}")
    with torch.no_grad():
        model.blocks[1].get_parameter(source).mul_(-2.0)  # an in-place edit of the weight
    assert torch.equal(getattr(model, name), expected_stack(model, name))
    state = random_model(9).state_dict()
    model.load_state_dict(state)  # copies into the same storage
    assert torch.equal(getattr(model, name), expected_stack(model, name))
    getattr(model, name).zero_()  # writing to the copy does not poison the next read
    assert torch.equal(getattr(model, name), expected_stack(model, name))


def test_stacked_weights_carry_gradients_when_weights_require_them():
    model = random_model().requires_grad_(True)
    with torch.enable_grad():
        model.W_Q.sum().backward()
        model.W_Q.sum().backward()  # a fresh stack each read: no graph is reused
    assert torch.equal(model.blocks[0].attn.W_QKV.grad[:, :64], torch.full((64, 64), 2.0))


def test_shorthands_come_from_points_and_name_every_point():
    from minitx.hooks import SHORTHANDS
    names = set(point_names(3))
    built = {minitx.get_act_name(s, l, t) for s in SHORTHANDS if s not in ("embed", "pos_embed", "scale", "normalized")
             for l in range(3) for t in [None]}
    built |= {minitx.get_act_name(s, l, t) for s in ("scale", "normalized") for l in range(3) for t in ("ln1", "ln2")}
    built |= {minitx.get_act_name(s) for s in ("embed", "pos_embed", "scale", "normalized")}
    assert built == names  # every point has a shorthand, and every shorthand names a point


def test_negative_layers_count_from_the_end(tiny_model):
    assert minitx.get_act_name("resid_post", -1, n_layers=12) == "blocks.11.hook_resid_post"
    assert minitx.get_act_name("scale", -2, "ln2", n_layers=12) == "blocks.10.ln2.hook_scale"
    with pytest.raises(ValueError, match="counts from the end, so it needs the model's size"):
        minitx.get_act_name("resid_post", -1)
    with pytest.raises(IndexError, match="layer -13 is out of range for a model of 12 layers; allowed: -12..11"):
        minitx.get_act_name("resid_post", -13, n_layers=12)
    with pytest.raises(TypeError, match="layer must be an int"):
        minitx.get_act_name("resid_post", 1.0)
    _, cache = tiny_model.run_with_cache(torch.tensor([[1, 2, 3]]))
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]
    assert cache["pattern", -2] is cache["pattern", 0]


def test_transformer_lens_spellings_port_as_written(tiny_model):
    """What TransformerLens's Main Demo writes reads the same points here (no silent difference)."""
    seen = []
    _, cache = tiny_model.run_with_cache(torch.tensor([[1, 2, 3]]), fwd_hooks=[
        ("blocks.1.attn.hook_z", lambda z, hook: seen.append(hook.layer()))])  # TL's hook.layer() is a method
    assert seen == [1]
    assert cache["pattern", 0, "attn"] is cache["pattern", 0] and cache["z", -1, "a"] is cache["blocks.1.attn.hook_z"]
    assert cache["pre", 1, "mlp"] is cache["blocks.1.mlp.hook_pre"] and cache["post", 0, "m"] is cache["post", 0]
    assert cache["embed"] is cache["hook_embed"] and cache["pos_embed"] is cache["hook_pos_embed"]
    assert cache["scale"] is cache["ln_final.hook_scale"] and cache["normalized"] is cache["ln_final.hook_normalized"]
    assert cache["scale", 0, "ln2"] is cache["blocks.0.ln2.hook_scale"]
    cfg = tiny_model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.act_fn) == (cfg.n_layer, cfg.n_head, cfg.activation_function)
    assert not hasattr(tiny_model, "OV") and not hasattr(cache, "decompose_resid")  # they say where minitx has them


def test_cache_keys_in_and_getitem_agree(tiny_model):
    _, cache = tiny_model.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter=["blocks.0.attn.hook_pattern"])
    assert ("pattern", 0) in cache and "blocks.0.attn.hook_pattern" in cache and ("pattern", -2) in cache
    assert ("pattern", 1) not in cache and ("nope", 0) not in cache and 5 not in cache
    assert cache.get(("pattern", 0)) is cache["pattern", 0] and cache.get(("pattern", 1)) is None
    with pytest.raises(ValueError, match=r"layer_type=1 is not allowed for 'pattern': it takes 'attn' or 'a'.*a head, index"):
        cache["pattern", 0, 1]
    with pytest.raises(TypeError, match="a cache key is a point name .* got int 5"):
        cache[5]
    with pytest.raises(KeyError, match="layer 2 is out of range for a model of 2 layers"):
        cache["pattern", 2]


def test_every_integer_dtype_is_ids_and_tiny_temperatures_are_greedy(tiny_model):
    tokens = torch.tensor([[11, 22, 33], [44, 55, 66]])
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.uint16, torch.int32):
        assert torch.equal(tiny_model(tokens.to(dtype)), tiny_model(tokens)), dtype
    greedy = tiny_model.generate(tokens, 4)
    assert torch.equal(tiny_model.generate(tokens, 4, temperature=1e-40, seed=0), greedy)  # no inf/NaN


def test_hook_arguments_none_and_backward_hooks_in_run_with_cache():
    model = random_model().requires_grad_(True)
    tokens = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=None, bwd_hooks=None), model(tokens))
    seen = []
    with torch.enable_grad():
        logits, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post",
                                             bwd_hooks=[("blocks.1.hook_resid_post", lambda g, h: seen.append(h.name))])
        logits.sum().backward()
    assert seen == ["blocks.1.hook_resid_post"] and "blocks.1.hook_resid_post" in cache


def test_hooks_and_stacked_weights_under_inference_mode(tiny_model):
    tokens = torch.tensor([[1, 2, 3, 4]])
    expected = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, h: x * 2)])
    with torch.inference_mode():
        in_place = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, h: x.mul_(2))])
        read_only = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, h: None)])
        W_Q = tiny_model.W_Q
        assert tiny_model.W_Q is W_Q and torch.equal(W_Q, expected_stack(tiny_model, "W_Q"))
        loaded = random_model(3)  # parameters made under inference_mode: read afresh, never stale
        with torch.no_grad():
            loaded.blocks[0].attn.W_QKV.mul_(2)
        assert torch.equal(loaded.W_Q, expected_stack(loaded, "W_Q"))
    assert torch.equal(in_place, expected) and torch.equal(read_only, tiny_model(tokens))

"""`minitx demo`: a first tour of a model's insides, offline, written up as report.md plus figures.

    from minitx.demo import run_demo
    numbers = run_demo(minitx.load("weights/induction-2l"), "minitx-demo")

Every number in the report comes from a library call made here (minitx.heads, .patching,
.path_patching, .lens, .metrics); nothing is hard-coded. `run_demo` returns those numbers in a dict
(tensors as the library returned them), so a test can check that they equal direct library calls.

The tour is a list of sections. Each section is a function of the `Tour` (model, vocabulary, options
and the numbers of the sections before it) that returns a `Section`: its numbers, its markdown, its
figures and its summary lines. Verdicts come from the pure rules at the top of this file
(`withheld`, `k_composition_verdict`, `head_test_verdict`, `mechanism`), each tested on its own.

Two tours, chosen by the vocabulary:
- a small model with its own id vocabulary (the shipped fixture `weights/induction-2l`: vocab 64 + BOS):
  (1) head roles on repeated random tokens [BOS] + r + r; (2) noising each head with the first copy
  replaced, and path patching of the top previous-token head into the induction head's q/k/v and the logits,
  answering one hypothesis; (3) the logit lens on a repeated sequence.
- a GPT-2-vocabulary model (the shipped `weights/english-6l`, or `--model gpt2`): the logit lens on
  "The cat sat on the" -> " mat"; head roles on repeated word sequences; the role swap "The cat chased
  the mouse" / "The mouse chased the cat"; and patching with the role-swapped story as the corruption,
  testing "head L.H carries the subject-object relation" end to end.

References: Olsson et al. 2022 (induction heads, repeated random tokens); Wang et al. 2022 (IOI:
path patching, role-swap minimal pairs); Heimersheim & Nanda 2024 (noising vs denoising);
nostalgebraist 2020 (logit lens).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from minitx import heads as H
from minitx import lens as LENS
from minitx import metrics as M
from minitx import patching as P
from minitx import path_patching as PP
from minitx.prompts import GPT2_VOCAB, ROLE_WORDS, Vocab
from minitx.report import head_label, head_rows, md_table, pct

# ---------------------------------------------------------------------------------------------
# Verdict rules: pure functions of the numbers printed beside them.

MIN_GAP = 0.5  # below this clean - corrupted difference, normalised scores are noise: no verdict
SHARE = 0.3  # a head "carries" the relation when noising it removes, and restoring it recovers, this share


def withheld(clean: float, corrupted: float) -> str | None:
    """The reason a verdict is withheld (the model does not do the task), or None."""
    gap = abs(clean - corrupted)
    if gap >= MIN_GAP:
        return None
    return (f"the clean and corrupted logit differences are only {gap:.3f} apart (under {MIN_GAP}), so the "
            "normalised scores divide by noise: this model does not do the task")


def k_composition_verdict(removed: dict) -> str:
    """Does the previous-token head act on the induction head through its keys? removed: {"q", "k", "v"} shares."""
    best = max(("q", "k", "v"), key=lambda k: float(removed[k]))
    if best == "k" and float(removed["k"]) >= 0.5:
        return "supported"
    if best == "k":
        return "partly supported (keys carry the most, but less than half)"
    return f"not supported: the {dict(q='queries', v='values')[best]} carry more than the keys"


def head_test_verdict(noised: float, restored: float) -> str:
    """Does a head carry the relation? Necessity (noised) and sufficiency (restored), both shares of the gap."""
    if noised >= SHARE and restored >= SHARE:
        return "supported"
    return "partly supported" if max(noised, restored) >= SHARE else "not supported"


def mechanism(pattern: float, values: float) -> str:
    """Where a head's effect lies: in where it attends (pattern) or in what it moves (values)."""
    if abs(pattern) > abs(values):
        return "where it attends (its pattern): it finds the right token by its role"
    return ("what it moves (its values): earlier layers wrote the relation into the positions it reads, and it "
            "moves it to the answer")


def gap_note(clean: float, corrupted: float) -> list[str]:
    """A warning line for the report when normalised scores divide by a small clean - corrupted difference."""
    gap = abs(clean - corrupted)
    if gap >= MIN_GAP:
        return []
    return [f"*Note: the clean and corrupted logit differences are only {gap:.3f} apart, so every normalised score "
            "below divides by a small number and is unstable; read the raw values with care.*\n"]


# ---------------------------------------------------------------------------------------------
# Sections and the tour they share.


@dataclass
class Tour:
    """What every section reads: the model, how prompts become ids, the options, earlier sections' numbers."""

    model: object
    vocab: Vocab
    n: int
    batch: int
    seed: int
    prepend_bos: bool
    log: Callable[[str], None]
    numbers: dict = field(default_factory=dict)


@dataclass
class Section:
    """One part of the report: its numbers (library tensors as returned), markdown lines, figures by file name,
    and the lines it adds to the printed summary."""

    numbers: dict
    markdown: list[str]
    figures: dict = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)


def _argmax(scores: Tensor, layers=None) -> tuple[int, int]:
    """(layer, head) of the largest entry of scores [layer, head], over the given layers (default all)."""
    layers = list(range(scores.shape[0])) if layers is None else list(layers)
    flat = int(scores[layers].reshape(-1).nan_to_num(float("-inf")).argmax())
    return layers[flat // scores.shape[1]], flat % scores.shape[1]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def replace_first_copy(tokens: Tensor, n: int, d_vocab: int, bos: int, seed: int, start: int = 1) -> Tensor:
    """Returns [batch, pos] tokens of [BOS] + r + r... (the first copy at positions start..start+n-1; start=0
    without BOS) with the first copy replaced by n distinct ids disjoint from r and from BOS, so the second
    copy has nothing earlier to copy from. Everything else is unchanged (the corruption of
    scripts/train_induction.py)."""
    generator = torch.Generator().manual_seed(seed)
    out = tokens.clone()
    for b in range(len(tokens)):
        used = set(tokens[b, start:start + n].tolist()) | {bos}
        pool = torch.tensor([t for t in range(d_vocab) if t not in used])
        if len(pool) < n:
            raise ValueError(f"the vocabulary of {d_vocab} ids has too few tokens for two disjoint blocks of {n}")
        out[b, start:start + n] = pool[torch.randperm(len(pool), generator=generator)[:n]]
    return out


# ---------------------------------------------------------------------------------------------
# The tour for a small id-vocabulary model (the induction fixture).


def _sequence(t: Tour) -> str:
    return "[BOS] + r + r" if t.prepend_bos else "r + r"


def induction_intro(t: Tour) -> Section:
    cfg = t.model.cfg
    return Section({"kind": "induction", "n": t.n, "batch": t.batch, "seed": t.seed, "prepend_bos": t.prepend_bos}, [
        f"# minitx demo: induction in a {cfg.n_layer}-layer model\n",
        f"Model: {cfg.n_layer} layers x {cfg.n_head} heads, d_model {cfg.d_model}, vocabulary {cfg.d_vocab} ids "
        f"(BOS = {t.vocab.bos}), context {cfg.n_ctx}. Sequences {'start' if t.prepend_bos else 'do not start'} "
        "with BOS. Every number below comes from a minitx library call; rerun `minitx demo` to reproduce it.\n"])


def induction_roles(t: Tour) -> Section:
    """(1) attention roles on [BOS] + r + r."""
    from minitx import plots
    cfg, n, seq = t.model.cfg, t.n, _sequence(t)
    t.log(f"[1/3] head roles on {t.batch} sequences {seq} (n = {n} random tokens, seed {t.seed})")
    tokens = H.repeated_tokens(cfg.d_vocab, n, t.batch, t.seed, prepend_bos=t.prepend_bos)  # as induction_scores
    offsets = H.offset_scores(t.model, tokens, max_offset=4)  # [layer, head, offset]
    prev, arg = H.previous_token_scores(t.model, tokens), H.argmax_offset(offsets, min_offset=1)
    ind = H.induction_scores(t.model, n=n, batch=t.batch, seed=t.seed, prepend_bos=t.prepend_bos)
    table = {"prev-token": prev, "induction": ind, "duplicate": H.duplicate_token_scores(t.model, tokens),
             "BOS": H.bos_attention_scores(t.model, tokens)}
    prev_head = _argmax(prev, range(max(cfg.n_layer - 1, 1)))
    ind_head = _argmax(ind, range(1, cfg.n_layer) if cfg.n_layer > 1 else None)
    numbers = dict(tokens=tokens, offset_scores=offsets, previous_token=prev, offset_argmax=arg, induction=ind,
                   duplicate=table["duplicate"], bos=table["BOS"], prev_head=prev_head, induction_head=ind_head)
    patterns = H.attention_patterns(t.model, tokens[:1])  # [layer, 1, head, q, k]
    labels = t.vocab.str_tokens(tokens[0])
    figures = {"heads.png": plots.layer_head_grids(table, "head scores on repeated random tokens "
                                                          "(mean attention mass)")}
    for role, (l, h) in (("prev", prev_head), ("induction", ind_head)):
        figures[f"attention-{role}-{l}.{h}.png"] = plots.attention_pattern(
            patterns[l, 0, h], labels, f"head {l}.{h} ({role} role) on {seq}")
    figures[f"attention-layer{ind_head[0]}.png"] = plots.attention_grid(patterns[ind_head[0], 0], labels, ind_head[0])
    rows = [row + [int(arg[l, h]), float(offsets[l, h, int(arg[l, h])])]
            for row, (l, h) in zip(head_rows(table), [(l, h) for l in range(cfg.n_layer) for h in range(cfg.n_head)])]
    markdown = [
        "## 1. Attention roles\n",
        f"On {t.batch} sequences of {seq} with r = {n} distinct random ids: previous-token score "
        "= mean A[q, q-1]; induction score = mean A[n+i, i+1] (the token after the earlier occurrence of "
        "the current token); duplicate = attention to earlier copies of the current token; BOS = attention "
        "to position 0 (`minitx.heads`).\n",
        md_table(["head", *table, "argmax offset 1..4", "its score"], rows),
        "", f"Top previous-token head: **{head_label(*prev_head)}** (score {float(prev[prev_head]):.2f}); "
        f"top induction head: **{head_label(*ind_head)}** (score {float(ind[ind_head]):.2f}).\n",
        "![head scores](heads.png)\n",
        f"![previous-token head](attention-prev-{head_label(*prev_head)}.png)\n",
        f"![induction head](attention-induction-{head_label(*ind_head)}.png)\n"]
    summary = [f"head roles: previous-token head {head_label(*prev_head)} (score {float(prev[prev_head]):.2f}), "
               f"induction head {head_label(*ind_head)} (score {float(ind[ind_head]):.2f})"]
    return Section(numbers, markdown, figures, summary)


def induction_patching(t: Tour) -> Section:
    """(2) noising each head and denoising the residual stream, with the first copy replaced."""
    from minitx import plots
    cfg, n, o, seq = t.model.cfg, t.n, int(t.prepend_bos), _sequence(t)
    t.log("[2/3] activation patching (noising each head; residual stream by position) and path patching")
    tokens = t.numbers["tokens"]
    clean = tokens[:, :-1]  # [BOS] + r + r[:-1]: the last position's next token is r_n, by induction
    bos_id = int(tokens[0, 0]) if t.prepend_bos else t.vocab.bos
    corrupted = replace_first_copy(tokens, n, cfg.d_vocab, bos_id, t.seed + 1, start=o)[:, :-1]
    answer, wrong = tokens[:, o + n - 1], corrupted[:, o + n - 1]  # r_n, and r'_n (induction's guess when corrupted)
    metric = M.logit_diff_metric(answer, wrong, pos=-1)
    noise = P.activation_patching(t.model, clean, corrupted, metric, point="z", by="all", direction="noising")
    resid = P.activation_patching(t.model, clean, corrupted, metric, point="resid_pre", by="pos",
                                  direction="denoising")
    numbers = dict(clean_tokens=clean, corrupted_tokens=corrupted, answer=answer, wrong=wrong, metric=metric,
                   clean_logit_diff=noise.clean, corrupted_logit_diff=noise.corrupted, noising_z=noise.scores,
                   resid_denoising=resid.scores)
    figures = {
        "noising-heads.png": plots.layer_head_grid(
            1 - noise.scores, "noising each head's z: share of the logit difference removed (1 - score)",
            colorbar_label="removed (1 = as corrupted)"),
        "patching-resid.png": plots.patching_heatmap(resid.scores, t.vocab.str_tokens(clean[0]),
                                                     "denoising resid_pre by position (1 = clean restored)")}
    markdown = [
        "## 2. Activation patching and path patching\n",
        f"Clean: {seq} without its last token, so the last position should predict r_n. Corrupted: "
        f"the first copy r replaced by n other ids (positions unchanged). Metric: logit difference "
        f"logit(r_n) - logit(r'_n) at the last position, mean over {t.batch} prompts: clean "
        f"**{noise.clean:.3f}**, corrupted **{noise.corrupted:.3f}**. Normalised score = (patched - corrupted) "
        "/ (clean - corrupted); for noising (run clean, patch in one head's corrupted z) we show "
        "**removed = 1 - score**, the share of the clean-to-corrupted drop that this one head causes.\n",
        *gap_note(noise.clean, noise.corrupted),
        md_table(["head", "noising score", "removed"],
                 [[head_label(l, h), float(noise.scores[l, h]), float(1 - noise.scores[l, h])]
                  for l in range(cfg.n_layer) for h in range(cfg.n_head)]), "",
        "![noising heads](noising-heads.png)\n",
        "Denoising the residual stream position by position (run corrupted, restore one clean resid_pre) "
        "shows where the information sits before each layer:\n", "![resid patching](patching-resid.png)\n"]
    summary = [f"logit difference: clean {noise.clean:.2f}, first copy replaced {noise.corrupted:.2f}"]
    return Section(numbers, markdown, figures, summary)


def induction_k_composition(t: Tour) -> Section:
    """(2, cont.) path patching the previous-token head into the induction head's q, k, v and the logits."""
    model, num = t.model, t.numbers
    if model.cfg.n_layer < 2:
        return Section({"path": {}}, ["Path patching needs a head in a later layer; this model has one layer, "
                                      "so it is skipped.\n"])
    (li, hi), prev = num["induction_head"], num["previous_token"]
    # The textbook hypothesis is about the previous-token head found above; the head whose noising hurts
    # most may be another one (a current-token head feeding the values), which would test something else.
    main = num["prev_head"] if num["prev_head"][0] < li else divmod(int(prev[:li].flatten().argmax()),
                                                                    model.cfg.n_head)
    path, removed = {}, {}
    for name, receiver in (("q", ("q", li, hi)), ("k", ("k", li, hi)), ("v", ("v", li, hi)), ("logits", "logits")):
        result = PP.path_patch(model, num["clean_tokens"], num["corrupted_tokens"], main, receiver, num["metric"])
        path[name], removed[name] = result.scores, 1 - result.scores
    verdict = k_composition_verdict(removed)
    sentence = (f"Head {head_label(*main)} feeds induction head {li}.{hi} through its keys: path patching "
                f"{head_label(*main)} -> {li}.{hi} keys removes {pct(removed['k'])} of the logit difference, "
                f"queries {pct(removed['q'])}, values {pct(removed['v'])} (directly to the logits: "
                f"{pct(removed['logits'])}). Verdict: {verdict}.")
    if reason := withheld(num["clean_logit_diff"], num["corrupted_logit_diff"]):
        verdict = "undetermined"
        sentence = f"Head {head_label(*main)} feeds induction head {li}.{hi}: verdict {verdict}; {reason}."
    noised = 1 - num["noising_z"][main]
    markdown = [
        f"**Hypothesis.** Head {head_label(*main)}, the top previous-token head (score {float(prev[main]):.2f}; "
        f"noising it removes {pct(noised)}), acts as the previous-token half of an induction circuit: it tells "
        f"induction head {li}.{hi} which key follows the earlier occurrence, so it should act through that "
        "head's **keys** (K-composition, Elhage et al. 2021).\n",
        f"Path patching (Wang et al. 2022, App. B): the sender {head_label(*main)} takes its corrupted output; "
        "every other head is frozen to its clean output; only the chosen receiver is updated. "
        "removed = 1 - score, 1 = as bad as the corrupted run.\n",
        md_table(["receiver", "path score", "removed"],
                 [[f"{li}.{hi} {k}" if k != "logits" else "logits (direct)", float(path[k]), float(removed[k])]
                  for k in ("q", "k", "v", "logits")]), "",
        f"**Answer.** {sentence}\n"]
    return Section(dict(main_l0_head=main, path=path, path_removed=removed, hypothesis=sentence, verdict=verdict),
                   markdown, summary=[sentence])


def induction_lens(t: Tour) -> Section:
    """(3) the logit lens on the repeated sequences."""
    from minitx import plots
    n, o, tokens = t.n, int(t.prepend_bos), t.numbers["tokens"]
    t.log("[3/3] logit lens on the repeated sequences")
    lens = LENS.logit_lens(t.model, tokens, targets="next", positions=list(range(tokens.shape[1] - 1)))
    second = list(range(o + n, o + 2 * n - 1))  # queries in the second copy whose next token is predictable
    probs = lens.target_probs[:, :, second].mean((1, 2))  # [layer+1]
    ranks = lens.target_ranks[:, :, second].float().mean((1, 2))
    top1 = (lens.target_ranks[:, :, second] == 0).float().mean((1, 2))
    window = list(range(max(0, n - 3), tokens.shape[1] - 1))
    shown = LENS.logit_lens(t.model, tokens[:1], targets="next", positions=window)
    figure = plots.lens_table(shown, t.vocab.str_tokens(tokens[0]), t.vocab.decode,
                              title=f"logit lens on {_sequence(t)}: top-1 token per layer; "
                                    "colour = p(correct next token)")
    markdown = [
        "## 3. Logit lens\n",
        "Each residual stream (before every block, and the final one) read through the final layer norm and "
        f"the unembedding. Over the second copy's predictable positions ({second[0]}..{second[-1]}, all {t.batch} "
        "prompts): mean probability of the correct next token, its mean rank (0 = top-1), and how often it is "
        "top-1.\n",
        md_table(["stream", "p(correct)", "mean rank", "top-1 rate"],
                 [[lab, float(p), float(k), float(r)] for lab, p, k, r in zip(lens.labels, probs, ranks, top1)]),
        "", "![logit lens](lens.png)\n"]
    summary = ["logit lens, p(correct next token) in the second copy: "
               + ", ".join(f"{lab} {float(p):.2f}" for lab, p in zip(lens.labels, probs))]
    return Section(dict(lens_labels=lens.labels, lens_target_prob=probs, lens_target_rank=ranks, lens_top1=top1,
                        lens_positions=second), markdown, {"lens.png": figure}, summary)


INDUCTION_TOUR = [induction_intro, induction_roles, induction_patching, induction_k_composition, induction_lens]


# ---------------------------------------------------------------------------------------------
# The tour for a GPT-2-vocabulary model.

LENS_PROMPT, LENS_TARGET = "The cat sat on the", " mat"
SWAP_A, SWAP_B = "The cat chased the mouse", "The mouse chased the cat"
# The follow-up names neither animal, so only who did what in the story decides the answer; the
# corruption swaps the two roles in the story and leaves the question as it is (same length).
PATCH_CLEAN = "The cat chased the mouse. The one who chased was the"
PATCH_CORRUPTED = "The mouse chased the cat. The one who chased was the"
ANSWER, WRONG = " cat", " mouse"
N_WORDS = 10  # words per copy in the head-role sequences (fewer when the context is short)


def gpt2_intro(t: Tour) -> Section:
    cfg = t.model.cfg
    return Section({"kind": "gpt2", "prepend_bos": t.prepend_bos}, [
        f"# minitx demo: a GPT-2 model ({cfg.n_layer} layers x {cfg.n_head} heads, d_model {cfg.d_model})\n",
        f"Prompts {'start' if t.prepend_bos else 'do not start'} with BOS (<|endoftext|>). Every number below "
        "comes from a minitx library call.\n"])


def gpt2_lens(t: Tour) -> Section:
    """(1) the logit lens on LENS_PROMPT -> LENS_TARGET."""
    from minitx import plots
    tok = t.vocab.tokenizer
    t.log(f"[1/3] logit lens on {LENS_PROMPT!r} -> {LENS_TARGET!r}")
    tokens, target = tok.to_tokens(LENS_PROMPT, prepend_bos=t.prepend_bos), tok.to_single_token(LENS_TARGET)
    lens = LENS.logit_lens(t.model, tokens, targets=target)
    probs, ranks = lens.target_probs[:, 0, -1], lens.target_ranks[:, 0, -1]
    top = [tok.decode([int(i)]) for i in lens.top_tokens[:, 0, -1, 0]]
    markdown = [
        "## 1. Logit lens\n",
        f"{LENS_PROMPT!r}: at the last position, the probability and rank (0 = top-1) of {LENS_TARGET!r} read "
        "from each residual stream through the final layer norm and unembedding:\n",
        md_table(["stream", f"p({LENS_TARGET!r})", "rank", "top-1 token"],
                 [[lab, float(p), int(k), repr(w)] for lab, p, k, w in zip(lens.labels, probs, ranks, top)]),
        "", "![logit lens](lens.png)\n"]
    summary = [f"logit lens: p({LENS_TARGET!r}) after {LENS_PROMPT!r}: "
               + ", ".join(f"{lab} {float(p):.3f}" for lab, p in zip(lens.labels, probs))]
    return Section(dict(lens_tokens=tokens, lens_target=target, lens_labels=lens.labels, lens_target_prob=probs,
                        lens_target_rank=ranks, lens_top_token=top), markdown,
                   {"lens.png": plots.lens_table(lens, tok.to_str_tokens(tokens), tok, title=(
                       f"logit lens on {LENS_PROMPT!r}: top-1 token per layer; colour = p({LENS_TARGET!r})"))},
                   summary)


def gpt2_roles(t: Tour) -> Section:
    """(2) head roles on repeated word sequences."""
    from minitx import plots
    cfg, tok, bos = t.model.cfg, t.vocab.tokenizer, t.prepend_bos
    t.log(f"[2/3] head roles on repeated word sequences; role swap {SWAP_A!r} vs {SWAP_B!r}")
    word_ids = [tok.to_single_token(w) for w in ROLE_WORDS]
    n_words = min(N_WORDS, (cfg.n_ctx - 1) // 2)
    repeats = H.repeated_tokens(cfg.d_vocab, n_words, 8, 0, bos, tok.bos_token_id, token_ids=word_ids)
    offsets = H.offset_scores(t.model, repeats, max_offset=4)
    roles = {"prev-token": offsets[..., 1],
             "induction": H.induction_scores(t.model, n=n_words, batch=8, seed=0, prepend_bos=bos,
                                             token_ids=word_ids),
             "duplicate": H.duplicate_token_scores(t.model, repeats)}
    best_offset = H.argmax_offset(offsets, min_offset=1)
    prev, ind = _argmax(roles["prev-token"]), _argmax(roles["induction"])
    markdown = [
        "## 2. Attention roles\n",
        f"On 8 sequences {'[BOS] + ' if bos else ''}w + w ({n_words} words drawn from a fixed list, repeated once): "
        "mean attention to the previous token, to the token after the previous occurrence of the current one "
        "(induction) and to that occurrence itself (duplicate); and each head's strongest backward offset k "
        "(attention from position q to q - k, k = 1..4). A causal head can only look back, so '+k' roles "
        "exist only relative to an anchor, as induction is.\n",
        md_table(["head", *roles, "best offset k", "its score"],
                 [row + [int(best_offset[l, h]), float(offsets[l, h, int(best_offset[l, h])])]
                  for row, (l, h) in zip(head_rows(roles), [(l, h) for l in range(cfg.n_layer)
                                                            for h in range(cfg.n_head)])]), "",
        f"Strongest previous-token head: **{head_label(*prev)}** ({float(roles['prev-token'][prev]):.2f}); "
        f"strongest induction head: **{head_label(*ind)}** ({float(roles['induction'][ind]):.2f}).\n",
        "![head scores](heads.png)\n"]
    summary = [f"head roles: previous-token head {head_label(*prev)} ({float(roles['prev-token'][prev]):.2f}), "
               f"induction head {head_label(*ind)} ({float(roles['induction'][ind]):.2f})"]
    return Section(dict(role_tokens=repeats, offset_scores=offsets, head_scores=roles, prev_head=prev,
                        induction_head=ind), markdown,
                   {"heads.png": plots.layer_head_grids(roles, "head scores on repeated word sequences")}, summary)


def gpt2_role_swap(t: Tour) -> Section:
    """(2, cont.) attention under the role swap SWAP_A / SWAP_B."""
    from minitx import plots
    tok, bos = t.vocab.tokenizer, t.prepend_bos
    a, b = tok.to_tokens(SWAP_A, prepend_bos=bos), tok.to_tokens(SWAP_B, prepend_bos=bos)
    swapped = (a[0] != b[0]).nonzero()[:, 0].tolist() if a.shape == b.shape else []
    if len(swapped) != 2:
        raise ValueError(f"the role-swap prompts differ at positions {swapped}, expected exactly two")
    rs = H.role_swap(t.model, a, b, tuple(swapped))
    l, h, _ = rs.most_changed[0]
    patterns = H.attention_patterns(t.model, torch.cat([a, b]))  # [layer, 2, head, q, k]
    figures = {"role-swap.png": plots.role_swap_figure(rs)}
    for i, (prompt, toks) in enumerate(((SWAP_A, a), (SWAP_B, b))):
        figures[f"attention-{l}.{h}-{'ab'[i]}.png"] = plots.attention_pattern(
            patterns[l, i, h], tok.to_str_tokens(toks), f"head {l}.{h} on {prompt!r}")
    markdown = [
        "### Attention under a role swap\n",
        f"{SWAP_A!r} vs {SWAP_B!r} (positions {swapped[0]} and {swapped[1]} swap). TV_pos: how much a head's "
        "pattern changes at the same positions; TV_tok: after following the swapped tokens; R = TV_tok - TV_pos "
        "> 0 for heads that attend by role (slot), < 0 by token identity. Heads whose patterns change most:\n",
        md_table(["head", "TV_pos", "TV_tok", "R"],
                 [[head_label(ll, hh), float(rs.tv_pos[ll, hh]), float(rs.tv_tok[ll, hh]), float(rs.scores[ll, hh])]
                  for ll, hh, _ in rs.most_changed]), "",
        "![role swap](role-swap.png)\n", f"![head {l}.{h}, first prompt](attention-{l}.{h}-a.png)\n",
        f"![head {l}.{h}, swapped prompt](attention-{l}.{h}-b.png)\n"]
    summary = [f"role swap: head {l}.{h} changes most (TV_pos {float(rs.tv_pos[l, h]):.2f}, "
               f"R {float(rs.scores[l, h]):+.2f})"]
    return Section(dict(swap_tokens=(a, b), swap_positions=tuple(swapped), role_swap=rs, swap_head=(l, h)),
                   markdown, figures, summary)


def gpt2_patching(t: Tour) -> Section:
    """(3) patching with the role-swapped prompt as corruption, and the test of the head whose noising hurts most."""
    from minitx import plots
    tok, bos = t.vocab.tokenizer, t.prepend_bos
    t.log("[3/3] activation patching and path patching with the role-swapped prompt as corruption")
    clean, corrupted = tok.to_tokens(PATCH_CLEAN, prepend_bos=bos), tok.to_tokens(PATCH_CORRUPTED, prepend_bos=bos)
    answer, wrong = tok.to_single_token(ANSWER), tok.to_single_token(WRONG)
    metric = M.logit_diff_metric(answer, wrong, pos=-1)
    resid = P.activation_patching(t.model, clean, corrupted, metric, point="resid_pre", by="pos",
                                  direction="denoising")
    noise = P.activation_patching(t.model, clean, corrupted, metric, point="z", by="all", direction="noising")
    senders = PP.path_patch_senders(t.model, clean, corrupted, "logits", metric)
    main = _argmax(1 - noise.scores)
    test = head_hypothesis_test(t.model, clean, corrupted, metric, main, noise, senders)
    if reason := withheld(noise.clean, noise.corrupted):
        test["verdict"] = "undetermined"
        test["sentence"] = (f"Head {head_label(*main)} carries the subject-object relation: verdict undetermined; "
                            f"{reason}.")
    sentence = test["sentence"]
    figures = {
        "patching-resid.png": plots.patching_heatmap(resid.scores, tok.to_str_tokens(clean),
                                                     "denoising resid_pre by position"),
        "noising-heads.png": plots.layer_head_grid(1 - noise.scores, "noising each head's z: removed (1 - score)",
                                                   colorbar_label="removed (1 = as corrupted)"),
        "path-logits.png": plots.layer_head_grid(1 - senders.scores, "path patching head -> logits: removed "
                                                 "(1 - score)", colorbar_label="removed (1 = as corrupted)")}
    markdown = [
        "## 3. Patching with the role-swapped prompt as corruption\n",
        f"Clean {PATCH_CLEAN!r}, corrupted {PATCH_CORRUPTED!r}; metric logit({ANSWER!r}) - logit({WRONG!r}) at "
        f"the last position: clean **{noise.clean:.3f}**, corrupted **{noise.corrupted:.3f}**. Noising and path "
        "patching show removed = 1 - score (1 = as bad as the corrupted run).\n",
        *gap_note(noise.clean, noise.corrupted),
        "![resid patching](patching-resid.png)\n", "![noising heads](noising-heads.png)\n",
        "![path patching to logits](path-logits.png)\n",
        f"**Hypothesis: \"head {head_label(*main)} carries the subject-object relation\".** It is the head whose "
        "noising hurts most. Tested end to end:\n",
        md_table(["experiment", "share of the logit difference"], test["rows"]), "",
        f"**Answer.** {sentence}\n"]
    summary = [f"logit difference {ANSWER!r} - {WRONG!r}: clean {noise.clean:.2f}, role-swapped {noise.corrupted:.2f}",
               sentence]
    return Section(dict(clean_tokens=clean, corrupted_tokens=corrupted, answer=answer, wrong=wrong,
                        clean_logit_diff=noise.clean, corrupted_logit_diff=noise.corrupted,
                        resid_denoising=resid.scores, noising_z=noise.scores, path_logits=senders.score,
                        main_head=main, hypothesis=sentence, verdict=test["verdict"], head_test=test),
                   markdown, figures, summary)


def head_hypothesis_test(model, clean: Tensor, corrupted: Tensor, metric, head: tuple[int, int], noise,
                         senders) -> dict:
    """Tests "head L.H carries the subject-object relation" with the role-swapped prompt as corruption.

    Shares of the clean - corrupted logit difference: noising the head's output (necessity), restoring
    it alone into the corrupted run (sufficiency), noising only its pattern or only its values (where
    it attends vs what it moves), its direct path to the logits, and its path into the q, k or v of
    each later layer (IOI path patching, Wang et al. 2022), then into the best of those heads."""
    l, h = head
    total = float(1 - noise.scores[l, h])
    restored = float(P.activation_patching(model, clean, corrupted, metric, "z", "all", direction="denoising")
                     .scores[l, h])
    pattern = float(1 - P.activation_patching(model, clean, corrupted, metric, "pattern", "all",
                                              direction="noising").scores[l, h])
    values = float(1 - P.activation_patching(model, clean, corrupted, metric, "v", "all",
                                             direction="noising").scores[l, h])
    direct = float(1 - senders.scores[l, h])
    rows = [[f"noise {l}.{h} (all positions): removed", total], [f"restore {l}.{h} alone: recovered", restored],
            ["noise only its pattern (where it attends): removed", pattern],
            ["noise only its values (what it moves): removed", values], [f"path {l}.{h} -> logits: removed", direct]]
    paths, via = _later_paths(model, clean, corrupted, metric, head, rows)
    verdict = head_test_verdict(total, restored)
    sentence = (f"Head {l}.{h} carries the subject-object relation: {verdict}. Noising it removes {pct(total)} of "
                f"the logit difference and restoring it alone recovers {pct(restored)}; the information lies in "
                f"{mechanism(pattern, values)} (pattern {pct(pattern)}, values {pct(values)}); {pct(direct)} goes "
                f"directly to the logits{via}.")
    return {"rows": rows, "sentence": sentence, "verdict": verdict, "noised": total, "restored": restored,
            "pattern": pattern, "values": values, "direct": direct, "paths": paths}


def _later_paths(model, clean, corrupted, metric, head, rows: list) -> tuple[dict, str]:
    """Path patching head -> the q, k or v of every later layer (all heads together), then into the best
    single head of the strongest; appends table rows. Returns ({(kind, layer): removed}, a clause)."""
    l, h = head
    n_head, paths = model.cfg.n_head, {}
    for layer in range(l + 1, model.cfg.n_layer):
        for kind in "qkv":
            receivers = [(kind, layer, j) for j in range(n_head)]
            paths[(kind, layer)] = float(1 - PP.path_patch(model, clean, corrupted, [(l, h)], receivers, metric).scores)
            rows.append([f"path {l}.{h} -> {kind} of layer {layer}: removed", paths[(kind, layer)]])
    if not paths:
        return paths, ""
    kind, layer = max(paths, key=lambda key: abs(paths[key]))
    per_head = [float(1 - PP.path_patch(model, clean, corrupted, [(l, h)], [(kind, layer, j)], metric).scores)
                for j in range(n_head)]
    j = max(range(n_head), key=lambda i: abs(per_head[i]))
    rows.append([f"path {l}.{h} -> {kind} of head {layer}.{j}: removed", per_head[j]])
    return paths, (f"; through later heads it acts mostly via the {kind} of layer {layer} "
                   f"({pct(paths[(kind, layer)])}, head {layer}.{j} alone {pct(per_head[j])})")


GPT2_TOUR = [gpt2_intro, gpt2_lens, gpt2_roles, gpt2_role_swap, gpt2_patching]


# ---------------------------------------------------------------------------------------------
# Running a tour: checks first, then every section, then the report moved into place at once.


def check_demo_args(n, batch, flags: bool = False) -> None:
    """ValueError unless n (random ids per copy) is an int >= 2 and batch an int >= 1; flags: name them --n/--batch."""
    name_n, name_batch = ("--n ", "--batch ") if flags else ("n=", "batch=")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"{name_n}{n!r}: the induction tour needs at least 2 random ids per copy")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"{name_batch}{batch!r}: the number of random sequences must be at least 1")


def fit_tour(model, vocab: Vocab, n: int, prepend_bos: bool) -> int:
    """Checks, before any stage runs, that the model can take the tour's prompts; returns the n the induction
    tour uses (n clipped to the context and vocabulary). ValueError naming the prompt that does not fit."""
    cfg, o = model.cfg, int(prepend_bos)
    if not vocab.is_text:
        n = min(n, (cfg.n_ctx - o) // 2, (cfg.d_vocab - 1) // 2)
        if n < 2:
            raise ValueError(f"the model's context ({cfg.n_ctx}) or vocabulary ({cfg.d_vocab}) is too small for "
                             "the demo")
        return n
    prompts = (LENS_PROMPT, SWAP_A, SWAP_B, PATCH_CLEAN, PATCH_CORRUPTED)
    longest = max(prompts, key=lambda p: len(vocab.tokenizer.encode(p)))
    needed = len(vocab.tokenizer.encode(longest)) + o
    if needed > cfg.n_ctx or (cfg.n_ctx - 1) // 2 < 2:
        raise ValueError(f"this model has n_positions={cfg.n_ctx}, but the demo's longest prompt {longest!r} has "
                         f"{needed} tokens; the GPT-2 tour needs n_positions >= {max(needed, 5)}")
    return n


MANIFEST = ".minitx-demo"  # lists the files a demo wrote into its folder, so the next run replaces exactly those


def write_report(out: Path, markdown: list[str], figures: dict) -> list[str]:
    """Writes report.md and the figures into a fresh folder beside `out`, then moves them in: an interrupted run
    leaves `out` as it was, and a rerun replaces the previous demo's files (listed in .minitx-demo), never a
    user's. `out` may be missing (its parent must exist) or a folder a demo wrote; anything else is refused."""
    from minitx import plots
    out = Path(out)
    old = check_report_folder(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for name, figure in figures.items():
            plots.save(figure, tmp / name)
        (tmp / "report.md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
        files = ["report.md", *figures]
        (tmp / MANIFEST).write_text("\n".join(files) + "\n", encoding="utf-8")
        out.mkdir(exist_ok=True)
        for name in old:
            (out / name).unlink(missing_ok=True)
        for name in [*files, MANIFEST]:
            (tmp / name).replace(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def check_report_folder(out: Path) -> list[str]:
    """The files a previous demo wrote into out ([] when out is missing or empty); refuses a foreign folder."""
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent} does not exist; create it first, or choose another --out folder "
                                "(only the last folder of the path is created)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose a folder for the report")
    if not out.exists() or not any(out.iterdir()):
        return []
    if not (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} already holds files that minitx demo did not write; choose a new or empty "
                              "folder (a demo's own folder is replaced on the next run)")
    names = (out / MANIFEST).read_text(encoding="utf-8").split()
    return [name for name in names if "/" not in name and "\\" not in name and name not in ("", ".", "..")]


def run_demo(model, out_dir, *, n: int = 12, batch: int = 8, seed: int = 0, prepend_bos: bool = True,
             log: Callable[[str], None] | None = _stderr, vocab: Vocab | None = None) -> dict:
    """Writes report.md and PNG figures into out_dir; returns the numbers reported (library tensors as returned).

    The tour depends on the vocabulary: a text vocabulary (GPT-2's 50257) gets English prompts, any other
    the induction tour on repeated random tokens (n ids per copy, batch prompts, seed). prepend_bos: every
    prompt starts with BOS (default, as the fixture was trained and TransformerLens does). log: a function
    given one line per stage (default: stderr), or None for silence. vocab: how prompts become ids
    (default: prompts.Vocab(model.cfg)). Every check runs before the first stage."""
    check_demo_args(n, batch)
    vocab = vocab or Vocab(model.cfg)
    n = fit_tour(model, vocab, n, prepend_bos)
    check_report_folder(Path(out_dir))  # the folder is checked before the work, and again when written
    tour = Tour(model, vocab, n, batch, seed, prepend_bos, log or (lambda message: None))
    markdown, figures, summary = [], {}, []
    with torch.no_grad():
        for section in GPT2_TOUR if vocab.is_text else INDUCTION_TOUR:
            part = section(tour)
            tour.numbers.update(part.numbers)
            markdown += part.markdown
            figures.update(part.figures)
            summary += part.summary
    numbers = {k: v for k, v in tour.numbers.items() if k != "metric"}
    files = write_report(Path(out_dir), markdown, figures)
    return {**numbers, "summary": summary, "files": files, "out_dir": Path(out_dir)}


__all__ = ["Vocab", "run_demo", "check_demo_args", "fit_tour", "replace_first_copy", "write_report", "GPT2_VOCAB",
           "check_report_folder", "withheld", "k_composition_verdict", "head_test_verdict", "mechanism", "Section", "Tour",
           "INDUCTION_TOUR", "GPT2_TOUR"]

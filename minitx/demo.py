"""`minitx demo`: a first tour of a model's insides, offline, written up as report.md plus figures.

    from minitx.demo import run_demo
    numbers = run_demo(minitx.load("weights/induction-2l"), "minitx-demo")

Every number in the report comes from a library call made here (minitx.heads, .patching,
.path_patching, .lens, .metrics); nothing is hard-coded. `run_demo` returns those numbers in a dict
(tensors as the library returned them), so a test can check that they equal direct library calls.

The tour is a list of sections. Each section is a function of the `Tour` (model, vocabulary, options
and the numbers of the sections before it) that returns a `Section`: its numbers, its markdown, its
figures and its summary lines. Headline numbers come with bootstrap 95% intervals over prompts
(minitx.stats), and verdicts come from the pure rules at the top of this file (`claim`,
`head_test_verdict_iv`, `k_composition_verdict_iv`, `mechanism_iv`, `adds_up`, `withheld`): a claim holds
only when its printed interval clears its threshold, otherwise the report says "not established"
(docs/methods.md §14). Each rule is tested on its own, and tests/test_demo.py recomputes every verdict
of a written report from the numbers printed beside it.

Two tours, chosen by the vocabulary:
- a small model with its own id vocabulary (the shipped fixture `weights/induction-2l`: vocab 64 + BOS):
  (1) head roles on `batch` (default 50) repeated random sequences [BOS] + r + r; (2) noising each head with
  the first copy replaced, and path patching of the top previous-token head into the induction head's q/k/v
  and the logits, answering one hypothesis; (3) the logit lens on the repeated sequences.
- a GPT-2-vocabulary model (the shipped `weights/english-6l`, or `--model gpt2`): the data (`n_pairs`
  role-swap pairs from minitx.datasets, default 64, 8 for a model over 30M parameters, or the user's
  JSONL pairs); the logit lens on "The cat sat on the" -> " mat" and on the dataset; head roles on
  repeated word sequences; role, position or word for every head over swapped, passive and shifted
  stories (minitx.roles); and patching over the dataset, testing "head L.H carries the subject-object
  relation" end to end, with direct effects computed with the MLPs frozen and a second corruption.

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

from minitx import datasets as D
from minitx import heads as H
from minitx import lens as LENS
from minitx import metrics as M
from minitx import patching as P
from minitx import path_patching as PP
from minitx import roles as R
from minitx import stats as S
from minitx.checks import check_count
from minitx.prompts import GPT2_VOCAB, ROLE_WORDS, Vocab
from minitx.report import fmt, fmt_interval, head_label, head_rows, md_table, pct

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


K_SHARE = 0.5  # K-composition is "supported" when the keys' path removes more than half of the logit difference


def k_composition_verdict_iv(removed: dict) -> str:
    """Does the previous-token head act on the induction head through its keys? removed: {"q", "k", "v"} ->
    Interval of the share of the logit difference each path removes."""
    k, q, v = removed["k"], removed["q"], removed["v"]
    if reason := S.too_few(k.n):
        return reason
    above = lambda a, b: claim(a, float(_printed(b).high)) == S.ESTABLISHED  # a's interval wholly above b's
    for name, other in (("queries", q), ("values", v)):
        if above(other, k):
            return f"not supported: the {name} carry more than the keys"
    if claim(k, K_SHARE) == S.ESTABLISHED and all(claim(x, K_SHARE, above=False) == S.ESTABLISHED for x in (q, v)):
        return "supported"
    if above(k, q) and above(k, v):
        return f"partly supported (the keys carry the most, but not established above {pct(K_SHARE)})"
    return S.NOT_ESTABLISHED


def gap_note(clean: float, corrupted: float) -> list[str]:
    """A warning line for the report when normalised scores divide by a small clean - corrupted difference."""
    gap = abs(clean - corrupted)
    if gap >= MIN_GAP:
        return []
    return [f"*Note: the clean and corrupted logit differences are only {gap:.3f} apart, so every normalised score "
            "below divides by a small number and is unstable; read the raw values with care.*\n"]


# ---------------------------------------------------------------------------------------------
# Verdicts from intervals (docs/methods.md §14): a claim holds when its printed interval clears its threshold.

N_PAIRS = 64  # default pairs for a small model (weights/english-6l: the whole tour 77 s of CPU time, 2 threads)
# default for a model of more than LARGE_MODEL parameters: a GPT-2-small-shaped model spent 257 s of CPU time
# (2 threads) on the whole tour with 4 pairs, 224 s of it patching, which grows with the pairs
N_PAIRS_LARGE = 8
MIN_PAIRS = S.MIN_PROMPTS  # below this a percentile bootstrap over prompts covers too little to decide a verdict
LARGE_MODEL = 30_000_000
RESAMPLES = 2000
TOLERANCE = 0.05  # direct + indirect "add up to the total" unless the remainder is established beyond this


def default_n_pairs(model) -> int:
    """How many pairs the tour uses when not told: fewer for a large model, so the CPU demo takes minutes."""
    n_params = sum(p.numel() for p in model.parameters())
    return N_PAIRS if n_params <= LARGE_MODEL else N_PAIRS_LARGE


def _printed(iv: S.Interval) -> S.Interval:
    """The interval as the report prints it (3 decimals): verdicts are taken from these very numbers."""
    return iv.map(lambda x: torch.round(torch.as_tensor(x, dtype=torch.float64) * 1000) / 1000)


def claim(iv: S.Interval, threshold: float, above: bool = True) -> str:
    """"established" when the printed interval lies wholly above (below) threshold, else "not established"."""
    return S.verdict(_printed(iv), threshold, above)


def head_test_verdict_iv(noised: S.Interval, restored: S.Interval) -> str:
    """Does a head carry the relation? Necessity (noised) and sufficiency (restored), each an interval of the share
    of the gap: "supported" when both clear SHARE, "not supported" when both lie below it, "partly supported" when
    one clears it and the other lies below, else "not established" (an interval straddles SHARE); over fewer than
    S.MIN_PROMPTS prompts, "too few prompts (...)"."""
    if reason := S.too_few(noised.n):
        return reason
    up = [claim(iv, SHARE) == S.ESTABLISHED for iv in (noised, restored)]
    down = [claim(iv, SHARE, above=False) == S.ESTABLISHED for iv in (noised, restored)]
    if all(up):
        return "supported"
    if all(down):
        return "not supported"
    if any(up) and any(down):
        return "partly supported"
    return S.NOT_ESTABLISHED


def mechanism_iv(difference: S.Interval) -> str:
    """Where a head's effect lies, from the interval of removed(pattern) - removed(values)."""
    if reason := S.too_few(difference.n):
        return f"not established ({reason})"
    if claim(difference, 0.0) == S.ESTABLISHED:
        return "where it attends (its pattern)"
    if claim(difference, 0.0, above=False) == S.ESTABLISHED:
        return "what it moves (its values)"
    return "not established between its pattern and its values"


def adds_up(remainder: S.Interval) -> bool:
    """Direct + indirect add up to the total unless the remainder's interval lies wholly beyond +-TOLERANCE."""
    return not (claim(remainder, TOLERANCE) == S.ESTABLISHED or claim(remainder, -TOLERANCE, above=False)
                == S.ESTABLISHED)


def interval_text(iv: S.Interval) -> str:
    return fmt_interval(float(iv.estimate), float(iv.low), float(iv.high))


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
    n_pairs: int = 64  # prompt pairs per dataset (the GPT-2 tour)
    pairs: list | None = None  # the user's pairs (--pairs FILE) instead of generated ones


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
    baselines = S.baselines(t.model, clean, corrupted, metric)  # per prompt: what every interval resamples
    removed = S.result_interval(noise, *baselines, resamples=RESAMPLES).complement()
    clean_iv, corrupted_iv = (S.bootstrap(b, resamples=RESAMPLES) for b in baselines)
    numbers = dict(clean_tokens=clean, corrupted_tokens=corrupted, answer=answer, wrong=wrong, metric=metric,
                   clean_logit_diff=noise.clean, corrupted_logit_diff=noise.corrupted, noising_z=noise.scores,
                   resid_denoising=resid.scores, baselines=baselines, removed=removed, clean_interval=clean_iv,
                   corrupted_interval=corrupted_iv)
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
        f"logit(r_n) - logit(r'_n) at the last position over {t.batch} prompts ({_sequence(t)}, seed {t.seed}): "
        f"clean **{interval_text(clean_iv)}**, corrupted **{interval_text(corrupted_iv)}** (mean [95% interval]: "
        f"a percentile bootstrap over prompts, {RESAMPLES} resamples). Normalised score = (patched - corrupted) "
        "/ (clean - corrupted) on batch means; for noising (run clean, patch in one head's corrupted z) we show "
        "**removed = 1 - score**, the share of the clean-to-corrupted drop that this one head causes.\n",
        *gap_note(noise.clean, noise.corrupted),
        md_table(["head", "noising score", "removed [95% interval]"],
                 [[head_label(l, h), float(noise.scores[l, h]), interval_text(removed[l, h])]
                  for l in range(cfg.n_layer) for h in range(cfg.n_head)]), "",
        "![noising heads](noising-heads.png)\n",
        "Denoising the residual stream position by position (run corrupted, restore one clean resid_pre) "
        "shows where the information sits before each layer:\n", "![resid patching](patching-resid.png)\n"]
    summary = [f"logit difference over {t.batch} prompts: clean {interval_text(clean_iv)}, first copy replaced "
               f"{interval_text(corrupted_iv)}"]
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
    path, removed, intervals = {}, {}, {}
    for name, receiver in (("q", ("q", li, hi)), ("k", ("k", li, hi)), ("v", ("v", li, hi)), ("logits", "logits")):
        result = PP.path_patch(model, num["clean_tokens"], num["corrupted_tokens"], main, receiver, num["metric"])
        path[name], removed[name] = result.scores, 1 - result.scores
        intervals[name] = S.result_interval(result, *num["baselines"], resamples=RESAMPLES).complement()
    verdict = k_composition_verdict_iv(intervals)
    sentence = (f"Head {head_label(*main)} feeds induction head {li}.{hi} through its keys: path patching "
                f"{head_label(*main)} -> {li}.{hi} keys removes {interval_text(intervals['k'])} of the logit "
                f"difference, queries {interval_text(intervals['q'])}, values {interval_text(intervals['v'])} "
                f"(directly to the logits: {interval_text(intervals['logits'])}; 95% intervals over {t.batch} "
                f"prompts). Verdict: {verdict}.")
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
        "removed = 1 - score, 1 = as bad as the corrupted run. \"Supported\" needs the keys' interval above "
        f"{K_SHARE} and the queries' and values' below it; \"not supported\" an interval of the queries or values "
        "wholly above the keys'; anything else is \"not established\" (or \"partly supported\": the keys carry "
        f"the most, but not established above {K_SHARE}).\n",
        md_table(["receiver", "path score", "removed [95% interval]"],
                 [[f"{li}.{hi} {k}" if k != "logits" else "logits (direct)", float(path[k]),
                   interval_text(intervals[k])] for k in ("q", "k", "v", "logits")]), "",
        f"**Answer.** {sentence}\n"]
    return Section(dict(main_l0_head=main, path=path, path_removed=removed, path_intervals=intervals,
                        hypothesis=sentence, verdict=verdict), markdown, summary=[sentence])


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
    t.log("[2/3] head roles on repeated word sequences")
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


def _removed(model, data, point: str, direction: str = "noising"):
    """Activation patching of every head's `point` (all positions) on a dataset: (result, [layer, head] interval
    of the share removed (noising: 1 - score) or recovered (denoising: the score))."""
    b = data.batch
    result = P.activation_patching(model, b.clean, b.corrupted, b.metric(), point, "all", direction=direction)
    iv = S.result_interval(result, *data.baselines, resamples=RESAMPLES)
    return result, (iv.complement() if direction == "noising" else iv)


def _one_head(model, data, point: str, head: tuple[int, int], direction: str = "noising"):
    """Patching one head's `point` (all positions) on a dataset, one forward: (per-prompt metric [prompt], interval
    of the share removed (noising) or recovered (denoising)); the sweep's entry for that head, without the sweep."""
    b, (c, x) = data.batch, data.baselines
    logits = P.patch_one(model, b.clean, b.corrupted, point, head[0], head=head[1], direction=direction)
    patched = b.metric()(logits).float().cpu()
    iv = S.normalized_interval(patched, c, x, resamples=RESAMPLES)
    return patched, (iv.complement() if direction == "noising" else iv)


def _path(model, data, senders, receivers, freeze_mlps: bool):
    """One path-patching experiment on a dataset: (result, interval of the share removed)."""
    b = data.batch
    result = PP.path_patch(model, b.clean, b.corrupted, senders, receivers, b.metric(), freeze_mlps=freeze_mlps)
    return result, S.result_interval(result, *data.baselines, resamples=RESAMPLES).complement()


@dataclass
class Data:
    """A dataset as the tour uses it: its pairs, tokens (PairBatch) and per-prompt clean and corrupted metrics."""

    name: str
    pairs: list
    batch: object
    baselines: tuple

    def describe(self, bos: bool) -> str:
        templates = sorted({p.template for p in self.pairs if p.template}) or ["not recorded"]
        voices = sorted({p.voice for p in self.pairs if p.voice}) or ["not recorded"]
        return (f"{len(self.pairs)} pairs ({self.name}; templates {', '.join(templates)}; voice {', '.join(voices)}; "
                f"{'BOS first' if bos else 'no BOS'}; {self.batch.clean.shape[1]} tokens each)")


def _data(t: Tour, name: str, pairs) -> Data:
    batch = D.to_batch(pairs, t.vocab.tokenizer, t.prepend_bos)
    return Data(name, list(pairs), batch, S.baselines(t.model, batch.clean, batch.corrupted, batch.metric()))


def _words(t: Tour) -> tuple[list[str], list[str]]:
    tok = t.vocab.tokenizer
    nouns, verbs = D.known_words(D.NOUNS, tok, t.model), D.known_words(D.VERBS, tok, t.model)
    if len(nouns) < 2 or not verbs:
        raise ValueError(f"the model has trained only {len(nouns)} of the tour's nouns and {len(verbs)} of its verbs "
                         "(blank embeddings); give your own pairs with --pairs FILE")
    return nouns, verbs


def gpt2_datasets(t: Tour) -> Section:
    """The datasets every later section uses: role-swap pairs (or the user's), and a second corruption."""
    nouns, verbs = _words(t)
    n = t.n_pairs
    main = list(t.pairs) if t.pairs else D.role_swap_pairs(min(n, _available(nouns, verbs)), nouns=nouns,
                                                           verbs=verbs, templates=("who",), seed=t.seed)
    data = _data(t, "role swap" if not t.pairs else "your file", main)
    replaceable = all(p.generated for p in main) and len(nouns) >= 4  # two nouns besides S and O
    other = D.replacement_pairs(main, nouns, seed=t.seed + 1) if replaceable else None
    second = _data(t, "both nouns replaced", other) if other else None
    c, x = data.baselines
    right = int(((c > 0) & (x < 0)).sum())
    lines = ["## Data\n",
             f"- Patching: {data.describe(t.prepend_bos)}; e.g. clean {main[0].clean!r} -> {main[0].answer!r}, "
             f"corrupted {main[0].corrupted!r} -> {main[0].wrong!r}. Metric: logit(answer) - logit(wrong) at the "
             f"last position. The model prefers the clean answer on the clean prompt and the other on the corrupted "
             f"one in **{right} of {len(main)}** pairs.",
             (f"- Second corruption: the same clean prompts, with both nouns of the story replaced by two other "
              f"nouns (e.g. {other[0].corrupted!r}), so the corrupted prompt holds neither answer." if other else
              "- Second corruption: none (the pairs do not say which words are their nouns, or fewer than four nouns "
              "are known)."),
             f"- Every interval is a 95% percentile bootstrap over prompts ({RESAMPLES} resamples, seed 0); a "
             "verdict needs the whole interval past its threshold, otherwise it reads \"not established\". More "
             "pairs: `minitx demo --n-pairs N` (or your own pairs: "
             "`--pairs FILE`, JSONL rows with clean, corrupted, answer, wrong).\n"]
    return Section(dict(data=data, second=second, n_pairs=len(main), task_right=right), lines,
                   summary=[f"data: {data.describe(t.prepend_bos)}"])


def _available(nouns, verbs) -> int:
    return len(nouns) * (len(nouns) - 1) // 2 * len(verbs)


def gpt2_dataset_lens(t: Tour) -> Section:
    """(1, cont.) the logit lens over the dataset's clean prompts: p(answer) per stream, with intervals."""
    data = t.numbers["data"]
    batch = data.batch
    lens = LENS.logit_lens(t.model, batch.clean, targets=batch.answer[:, None], positions=[-1])
    probs = lens.target_probs[:, :, 0]  # [stream, prompt]
    iv = S.bootstrap(probs, resamples=RESAMPLES)
    rows = [[lab, interval_text(iv[i])] for i, lab in enumerate(lens.labels)]
    markdown = ["### The logit lens over the dataset\n",
                f"p(answer) at the last position of the {len(data.pairs)} clean prompts, read from each residual "
                "stream (mean and 95% interval over prompts):\n",
                md_table(["stream", "p(answer) [95% interval]"], rows), ""]
    return Section(dict(dataset_lens_labels=lens.labels, dataset_lens_prob=iv), markdown,
                   summary=["logit lens over the dataset, p(answer): "
                            + ", ".join(f"{lab} {interval_text(iv[i])}" for i, lab in enumerate(lens.labels)
                                        if i >= len(lens.labels) - 3)])


def gpt2_head_roles(t: Tour) -> Section:
    """(2, cont.) role, position or word: each head over role-swap, passive-voice and filler-shift variants."""
    from minitx import plots
    nouns, verbs = _words(t)
    L, n_head = t.model.cfg.n_layer, t.model.cfg.n_head
    pairs = D.role_swap_pairs(min(t.n_pairs, _available(nouns, verbs)), nouns=nouns, verbs=verbs, seed=t.seed)
    families = R.story_families(pairs, t.vocab.tokenizer, t.prepend_bos)
    t.log(f"head roles: role, position or word over {len(families)} families of prompts")
    result = R.head_roles(t.model, families, resamples=RESAMPLES)
    # the classes follow from the printed intervals
    printed = [None if iv is None else _printed(iv) for iv in result.intervals]
    classes = [[R.classify(*(None if iv is None else iv[l, h] for iv in printed), threshold=result.threshold)
                for h in range(n_head)] for l in range(L)]
    heads = [(l, h) for l in range(L) for h in range(n_head)]
    shown = heads if len(heads) <= 48 else [(l, h) for l, h in heads if classes[l][h] != S.NOT_ESTABLISHED]
    rows = [[head_label(l, h), *(interval_text(iv[l, h]) for iv in result.intervals if iv is not None), classes[l][h]]
            for l, h in shown]
    names = [c for c, iv in zip(R.CONTRASTS, result.intervals) if iv is not None]
    found = {c: [head_label(*lh) for lh in heads if classes[lh[0]][lh[1]] == c] for c in ("role", "position", "word")}
    markdown = [
        "### Role, position or word (replaces the single-pair role swap)\n",
        f"{len(families)} families, each a story from templates {', '.join(sorted({p.template for p in pairs}))} "
        f"(active voice, {'BOS first' if t.prepend_bos else 'no BOS'}) with three variants: the nouns swapped (the "
        "words move, roles and positions stay), the passive voice (roles stay with their words, positions move), and "
        f"a filler sentence before it ({R.SHIFT_FILLER!r}: every position shifts). At the last position, each head's "
        "attention in a variant is compared with the base prompt's through three maps of the keys: same role (label), "
        "same word, same position (absolute or from the query); overlap = the attention mass kept (1 = unchanged). "
        "role - word (on swaps) > 0: it keeps the slot, not the word; role - position (on passives) > 0: it follows "
        "the role, not the position; role - absolute (on shifts) < 0 would mean it reads absolute positions. "
        f"Class (docs/methods.md §14.3): role, word or position only when the intervals clear +-{result.threshold}; "
        "a head that mostly attends to BOS keeps every map and stays \"not established\".\n",
        md_table(["head", *(f"{n} [95%]" for n in names), "class"], rows), "",
        "Role heads: " + (", ".join(found["role"]) or "none") + "; position heads: "
        + (", ".join(found["position"]) or "none") + "; word heads: " + (", ".join(found["word"]) or "none")
        + ". Every other head: not established.\n", "![role, position or word](head-roles.png)\n"]
    figure = plots.layer_head_grids({n: result.scores[c] for c, n in enumerate(R.CONTRASTS)
                                     if result.intervals[c] is not None},
                                    "attention overlap contrasts (mean over families)", diverging=True)
    summary = ["heads by what their attention follows: role " + (", ".join(found["role"]) or "none") + "; position "
               + (", ".join(found["position"]) or "none") + "; word " + (", ".join(found["word"]) or "none")]
    return Section(dict(head_roles=result, head_classes=classes, role_pairs=pairs), markdown,
                   {"head-roles.png": figure}, summary)


def gpt2_patching(t: Tour) -> Section:
    """(3) patching over the dataset, and the test of the head whose noising removes most."""
    from minitx import plots
    data, second = t.numbers["data"], t.numbers["second"]
    b, (c, x) = data.batch, data.baselines
    t.log(f"[3/3] activation patching and path patching over {len(data.pairs)} role-swap pairs")
    clean_iv, corrupted_iv = S.bootstrap(c, resamples=RESAMPLES), S.bootstrap(x, resamples=RESAMPLES)
    resid = P.activation_patching(t.model, b.clean, b.corrupted, b.metric(), "resid_pre", "pos", direction="denoising")
    noise, removed = _removed(t.model, data, "z")
    direct_grid = PP.path_patch_senders(t.model, b.clean, b.corrupted, "logits", b.metric(), freeze_mlps=True)
    main = _argmax(removed.estimate)
    test = head_test(t.model, data, second, main, noise, removed)
    if reason := withheld(noise.clean, noise.corrupted):
        test["verdict"] = "undetermined"
        test["sentence"] = (f"Head {head_label(*main)} carries the subject-object relation: verdict undetermined; "
                            f"{reason}.")
    labels = t.vocab.tokenizer.to_str_tokens(b.clean[0])
    figures = {
        "patching-resid.png": plots.patching_heatmap(resid.scores, labels, f"denoising resid_pre by position, mean "
                                                     f"over {len(data.pairs)} pairs (first pair's tokens)"),
        "noising-heads.png": plots.layer_head_grid(removed.estimate, f"noising each head's z over {len(data.pairs)} "
                                                   "pairs: removed (1 - score)",
                                                   colorbar_label="removed (1 = as corrupted)"),
        "path-logits.png": plots.layer_head_grid(1 - direct_grid.scores, "path patching head -> logits, MLPs frozen "
                                                 "(direct): removed", colorbar_label="removed (1 = as corrupted)")}
    L, n_head = t.model.cfg.n_layer, t.model.cfg.n_head
    top = sorted(((float(removed.estimate[l, h]), l, h) for l in range(L) for h in range(n_head)), reverse=True)[:5]
    markdown = [
        "## 3. Patching over the dataset\n",
        f"On the {len(data.pairs)} role-swap pairs: logit difference clean **{interval_text(clean_iv)}**, corrupted "
        f"**{interval_text(corrupted_iv)}** (mean [95% interval] over prompts). Noising runs the clean prompt with one "
        "head's output taken from the corrupted run; removed = 1 - (patched - corrupted) / (clean - corrupted), on "
        "batch means (1 = as bad as the corrupted run). Heads whose noising removes most:\n",
        md_table(["head", "removed [95% interval]"], [[head_label(l, h), interval_text(removed[l, h])]
                                                     for _, l, h in top]), "",
        *gap_note(noise.clean, noise.corrupted),
        "![resid patching](patching-resid.png)\n", "![noising heads](noising-heads.png)\n",
        "![path patching to logits](path-logits.png)\n",
        f"**Hypothesis: \"head {head_label(*main)} carries the subject-object relation\".** It is the head whose "
        "noising removes most on average (the table's means; the next head's interval may overlap). \"Direct\" "
        "below is the path from the head to the logits with every MLP frozen to its clean value "
        "(docs/methods.md §14.4); the IOI paper's path patching recomputes the MLPs, which mixes MLP-mediated "
        "effects into \"direct\", and is shown beside it. \"Via later heads\" is the path into the "
        "queries, keys and values of every later head at once, MLPs frozen.\n",
        md_table(["experiment", "share [95% interval]"], test["rows"]), "",
        md_table(["claim", "estimate", "95% interval", "threshold", "verdict"], test["claims"]), "",
        f"**Answer.** {test['sentence']}\n"]
    summary = [f"logit difference over {len(data.pairs)} pairs: clean {interval_text(clean_iv)}, role-swapped "
               f"{interval_text(corrupted_iv)}", test["sentence"]]
    return Section(dict(clean_tokens=b.clean, corrupted_tokens=b.corrupted, answer=b.answer, wrong=b.wrong,
                        clean_logit_diff=noise.clean, corrupted_logit_diff=noise.corrupted, clean_interval=clean_iv,
                        corrupted_interval=corrupted_iv, resid_denoising=resid.scores, noising_z=noise.scores,
                        removed=removed, path_logits=direct_grid.scores, main_head=main, hypothesis=test["sentence"],
                        verdict=test["verdict"], head_test=test), markdown, figures, summary)


def head_test(model, data, second, head: tuple[int, int], noise, removed) -> dict:
    """Tests "head L.H carries the subject-object relation" on the dataset; every share with its interval.

    Necessity (noising its output) and sufficiency (restoring it alone), pattern vs values, its direct path to
    the logits (MLPs frozen; and recomputed, as IOI), its path into every later head's q, k and v (MLPs frozen),
    the remainder total - direct - via later heads, and noising under a second corruption."""
    l, h = head
    c, x = data.baselines
    total = removed[l, h]
    _, restored = _one_head(model, data, "z", head, "denoising")
    pattern_patched, pattern = _one_head(model, data, "pattern", head)
    values_patched, values = _one_head(model, data, "v", head)
    # removed(pattern) - removed(values) = (values patched - pattern patched) / (clean - corrupted), per prompt
    difference = S.ratio_interval(values_patched - pattern_patched, c - x, resamples=RESAMPLES)
    direct_run, direct = _path(model, data, [(l, h)], "logits", freeze_mlps=True)
    _, direct_mlps = _path(model, data, [(l, h)], "logits", freeze_mlps=False)
    later = [(k, j, i) for j in range(l + 1, model.cfg.n_layer) for i in range(model.cfg.n_head) for k in "qkv"]
    rows = [[f"noise {l}.{h} (all positions): removed", interval_text(total)],
            [f"restore {l}.{h} alone into the corrupted run: recovered", interval_text(restored)],
            ["noise only its pattern (where it attends): removed", interval_text(pattern)],
            ["noise only its values (what it moves): removed", interval_text(values)],
            [f"path {l}.{h} -> logits, MLPs frozen (direct): removed", interval_text(direct)],
            [f"path {l}.{h} -> logits, MLPs recomputed (IOI's 'direct'): removed", interval_text(direct_mlps)]]
    if later:
        later_run, via = _path(model, data, [(l, h)], later, freeze_mlps=True)
        rows.append([f"path {l}.{h} -> q, k, v of every later head, MLPs frozen: removed", interval_text(via)])
        # remainder = total - direct - via, per prompt on the same denominator (clean - corrupted)
        drops = [c - per_prompt for per_prompt in (noise.per_prompt[l, h], direct_run.per_prompt, later_run.per_prompt)]
        remainder = S.ratio_interval(drops[0] - drops[1] - drops[2], c - x, resamples=RESAMPLES)
        rows.append(["total - direct - via later heads (MLP-mediated paths and interactions)",
                     interval_text(remainder)])
    else:
        via, remainder = None, None
    claims = [[f"noising {l}.{h} removes more than {pct(SHARE)}", *_claim_cells(total, SHARE)],
              [f"restoring {l}.{h} alone recovers more than {pct(SHARE)}", *_claim_cells(restored, SHARE)]]
    if second is not None:
        _, removed2 = _removed(model, second, "z")
        rows.append([f"noise {l}.{h}, second corruption (both nouns replaced): removed", interval_text(removed2[l, h])])
        claims.append([f"it survives the second corruption: removes more than {pct(SHARE)}",
                       *_claim_cells(removed2[l, h], SHARE)])
    if remainder is not None:
        claims.append([f"direct + via later heads differ from the total by more than {TOLERANCE}",
                       fmt(float(remainder.estimate)), f"[{fmt(float(remainder.low))}, {fmt(float(remainder.high))}]",
                       f"+-{TOLERANCE}", S.too_few(remainder.n) or ("established" if not adds_up(remainder)
                                                                     else S.NOT_ESTABLISHED)])
    numbers = {"noised": total, "restored": restored, "pattern": pattern, "values": values,
               "pattern_minus_values": difference, "direct": direct, "direct_mlps_recomputed": direct_mlps,
               "via_later_heads": via, "remainder": remainder, "verdict": head_test_verdict_iv(total, restored),
               "mechanism": mechanism_iv(difference)}
    return {"rows": rows, "claims": claims, "sentence": _head_sentence(head, numbers), **numbers}


def _head_sentence(head: tuple[int, int], n: dict) -> str:
    """The answer to "head L.H carries the subject-object relation", from the numbers of head_test."""
    remainder, via = n["remainder"], n["via_later_heads"]
    sums = "" if remainder is None else _sums_sentence(remainder)
    return (f"Head {head_label(*head)} carries the subject-object relation: {n['verdict']}. Noising it removes "
            f"{interval_text(n['noised'])} of the logit difference and restoring it alone recovers "
            f"{interval_text(n['restored'])} (threshold {pct(SHARE)}); its effect lies in {n['mechanism']} (pattern "
            f"{interval_text(n['pattern'])}, values {interval_text(n['values'])}); directly to the logits with MLPs "
            f"frozen: {interval_text(n['direct'])}"
            + ("" if via is None else f"; via later heads: {interval_text(via)}") + f".{sums}")


def _sums_sentence(remainder: S.Interval) -> str:
    """Whether direct + via later heads add up to the total (adds_up), or too_few's reason to say nothing."""
    why = f"(remainder {interval_text(remainder)}: MLP-mediated paths and interactions between paths)"
    if reason := S.too_few(remainder.n):
        return f" Whether direct and via-later-heads shares add up to the total: {reason} {why}."
    verb = "add up to" if adds_up(remainder) else "do NOT add up to"
    return f" Direct and via-later-heads shares {verb} the total {why}."


def _claim_cells(iv, threshold: float) -> list:
    """[estimate, interval, threshold, verdict] cells of a claim "value > threshold"."""
    return [fmt(float(iv.estimate)), f"[{fmt(float(iv.low))}, {fmt(float(iv.high))}]", fmt(threshold),
            claim(iv, threshold)]


GPT2_TOUR = [gpt2_intro, gpt2_datasets, gpt2_lens, gpt2_dataset_lens, gpt2_roles, gpt2_head_roles, gpt2_patching]


# ---------------------------------------------------------------------------------------------
# Running a tour: checks first, then every section, then the report moved into place at once.


def check_demo_args(n, batch, n_pairs=None, flags: bool = False) -> None:
    """ValueError unless n (random ids per copy) is an int >= 2, batch an int >= 1 and n_pairs None or an int >=
    MIN_PAIRS; flags: name them --n, --batch and --n-pairs (the CLI's options)."""
    name = (lambda flag, argument: flag) if flags else (lambda flag, argument: argument)
    check_count(n, name("--n", "n"), "random ids per copy in the induction tour", minimum=2)
    check_count(batch, name("--batch", "batch"), "random sequences in the induction tour")
    if n_pairs is not None:
        check_count(n_pairs, name("--n-pairs", "n_pairs"), "prompt pairs per dataset (fewer leave every verdict "
                    "\"too few prompts\")", minimum=MIN_PAIRS)


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
    longest_pair = D.make_pair("who_was", "passive", "cat", "mouse", "chased", max(D.FILLERS, key=len))
    prompts = (LENS_PROMPT, longest_pair.clean)
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
        raise FileNotFoundError(f"cannot make the folder {out}: {out.parent} does not exist; create it first "
                                "(only the last folder of a path is created)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose a folder for the report")
    try:  # write_report builds the report in a temporary folder beside out: can it, before minutes of work?
        Path(tempfile.mkdtemp(prefix=f".{out.name}-check-", dir=out.parent)).rmdir()
    except OSError as error:
        raise PermissionError(f"cannot write the report into {out.parent}: {error.strerror}; choose another "
                              "folder") from None
    if not out.exists() or not any(out.iterdir()):
        return []
    if not (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} already holds files that minitx demo did not write; choose a new or empty "
                              "folder (a demo's own folder is replaced on the next run)")
    names = (out / MANIFEST).read_text(encoding="utf-8").split()
    return [name for name in names if "/" not in name and "\\" not in name and name not in ("", ".", "..")]


def run_demo(model, out_dir, *, n: int = 12, batch: int = 50, seed: int = 0, prepend_bos: bool = True,
             log: Callable[[str], None] | None = _stderr, vocab: Vocab | None = None, n_pairs: int | None = None,
             pairs: list | None = None) -> dict:
    """Writes report.md and PNG figures into out_dir; returns the numbers reported (library tensors as returned).

    The tour depends on the vocabulary: a text vocabulary (GPT-2's 50257) gets English prompts, any other
    the induction tour on repeated random tokens (n ids per copy, batch prompts, seed). prepend_bos: every
    prompt starts with BOS (default, as the fixture was trained and TransformerLens does). log: a function
    given one line per stage (default: stderr), or None for silence. vocab: how prompts become ids
    (default: prompts.Vocab(model.cfg)). GPT-2 tour: n_pairs prompt pairs per dataset (default
    `default_n_pairs(model)`: 64, or 8 for a model over 30M parameters), or the user's `pairs` (PromptPairs of one
    token length, e.g. datasets.read_jsonl(FILE)) for the patching sections. Every check runs before the first
    stage."""
    check_demo_args(n, batch, n_pairs)
    vocab = vocab or Vocab(model.cfg)
    n = fit_tour(model, vocab, n, prepend_bos)
    n_pairs = default_n_pairs(model) if n_pairs is None else n_pairs
    if pairs is not None:
        if len(pairs) < MIN_PAIRS:
            raise ValueError(f"the pairs file has {len(pairs)} pairs; the demo needs at least {MIN_PAIRS} (a bootstrap "
                             "interval over fewer prompts is too unreliable to decide a verdict)")
        if not vocab.is_text:
            raise ValueError("prompt pairs are text; this model has no text vocabulary (its tour uses random ids)")
        D.to_batch(pairs, vocab.tokenizer, prepend_bos)  # one length, single-token answers: checked now
    check_report_folder(Path(out_dir))  # the folder is checked before the work, and again when written
    tour = Tour(model, vocab, n, batch, seed, prepend_bos, log or (lambda message: None), n_pairs=n_pairs,
                pairs=pairs)
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
           "check_report_folder", "withheld", "Section",
           "Tour", "INDUCTION_TOUR", "GPT2_TOUR", "claim", "k_composition_verdict_iv", "head_test_verdict_iv",
           "mechanism_iv", "adds_up", "default_n_pairs", "head_test", "SHARE", "K_SHARE", "TOLERANCE"]

"""`minitx demo`: a first tour of a model's insides, offline, written up as report.md plus figures.

    from minitx.demo import run_demo
    numbers = run_demo(minitx.load("weights/induction-2l"), "minitx-demo")

Every number in the report comes from a library call made here (minitx.heads, .patching,
.path_patching, .lens, .metrics); nothing is hard-coded. `run_demo` returns those numbers in a dict
(tensors as the library returned them), so a test can check that they equal direct library calls.

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

import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from minitx import heads as H
from minitx import lens as LENS
from minitx import metrics as M
from minitx import patching as P
from minitx import path_patching as PP

GPT2_VOCAB = 50257


# ---------------------------------------------------------------------------------------------
# Prompts for either kind of model: text for GPT-2's vocabulary, integer ids otherwise.

class Vocab:
    """How prompts and single tokens become ids for this model, and ids become labels.

    A model whose vocabulary is GPT-2's (50257 ids) reads text through the shipped GPT-2 tokenizer.
    Any other vocabulary has no tokenizer: a prompt is a space- (or comma-) separated list of integer
    ids, and BOS is cfg.bos_token_id when it lies in the vocabulary, else the last id (d_vocab - 1,
    the convention of `heads.repeated_tokens` and of the fixture, whose BOS is 64)."""

    def __init__(self, cfg):
        self.d_vocab = cfg.d_vocab
        self.is_text = cfg.d_vocab == GPT2_VOCAB
        self.tokenizer = None
        if self.is_text:
            from minitx.tokenizer import Tokenizer
            self.tokenizer = Tokenizer.default()
        bos = cfg.bos_token_id
        self.bos = bos if isinstance(bos, int) and 0 <= bos < cfg.d_vocab else cfg.d_vocab - 1

    def describe(self) -> str:
        if self.is_text:
            return "GPT-2 vocabulary: prompts are text"
        return f"vocabulary of {self.d_vocab} ids (BOS = {self.bos}): prompts are space-separated ids"

    def _ids(self, text: str, what: str) -> list[int]:
        parts = text.replace(",", " ").split()
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"{what} {text!r}: this model's vocabulary has {self.d_vocab} ids, not GPT-2's "
                             f"{GPT2_VOCAB}, so there is no text tokenizer; give space-separated token ids "
                             f"0..{self.d_vocab - 1}, e.g. '3 17 5 3 17'") from None
        bad = [i for i in ids if not 0 <= i < self.d_vocab]
        if bad:
            raise ValueError(f"{what}: token id {bad[0]} is outside the vocabulary; allowed ids are "
                             f"0..{self.d_vocab - 1}")
        return ids

    def tokens(self, prompt: str, *, prepend_bos: bool, what: str = "prompt") -> Tensor:
        """Returns [1, pos] token ids of one prompt, BOS first iff prepend_bos."""
        if self.is_text:
            return self.tokenizer.to_tokens(prompt, prepend_bos=prepend_bos)
        ids = ([self.bos] if prepend_bos else []) + self._ids(prompt, what)
        if not ids:
            raise ValueError(f"{what} is empty; give at least one token id (or use --prepend-bos)")
        return torch.tensor([ids], dtype=torch.long)

    def token(self, text: str, what: str = "token") -> int:
        """One token's id: a single GPT-2 token (mind the leading space: ' mat') or one integer id."""
        if self.is_text:
            try:
                return self.tokenizer.to_single_token(text)
            except ValueError as error:
                raise ValueError(f"{what}: {error}") from None
        ids = self._ids(text, what)
        if len(ids) != 1:
            raise ValueError(f"{what} {text!r} must be exactly one token id, got {len(ids)}")
        return ids[0]

    def decode(self, token_id: int) -> str:
        if self.is_text:
            return self.tokenizer.decode([int(token_id)])
        return "BOS" if int(token_id) == self.bos else str(int(token_id))

    def str_tokens(self, tokens: Tensor) -> list[str]:
        """Labels of one sequence [pos] (or [1, pos])."""
        ids = tokens.reshape(-1).tolist()
        return [self.decode(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# Small helpers


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _argmax(scores: Tensor, layers=None) -> tuple[int, int]:
    """(layer, head) of the largest entry of scores [layer, head], over the given layers (default all)."""
    layers = list(range(scores.shape[0])) if layers is None else list(layers)
    sub = scores[layers]
    flat = int(sub.reshape(-1).nan_to_num(float("-inf")).argmax())
    return layers[flat // scores.shape[1]], flat % scores.shape[1]


def _pct(x) -> str:
    return f"{100 * float(x):.0f}%"


MIN_GAP = 0.5  # below this clean - corrupted difference, normalised scores are noise: no verdict


def _withheld(clean: float, corrupted: float) -> str | None:
    """The reason a verdict is withheld, or None."""
    gap = abs(clean - corrupted)
    if gap >= MIN_GAP:
        return None
    return (f"the clean and corrupted logit differences are only {gap:.3f} apart (under {MIN_GAP}), so the "
            "normalised scores divide by noise: this model does not do the task")


def _gap_note(clean: float, corrupted: float) -> list[str]:
    """A warning line when normalised scores divide by a small clean - corrupted difference."""
    gap = abs(clean - corrupted)
    if gap >= MIN_GAP:
        return []
    return [f"*Note: the clean and corrupted logit differences are only {gap:.3f} apart, so every normalised score "
            "below divides by a small number and is unstable; read the raw values with care.*\n"]


def _md_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _head_rows(scores: dict[str, Tensor]) -> list[list]:
    first = next(iter(scores.values()))
    return [[f"{l}.{h}", *(float(s[l, h]) for s in scores.values())]
            for l in range(first.shape[0]) for h in range(first.shape[1])]


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


def _save(fig, out_dir: Path, name: str, files: list[str]) -> str:
    from minitx import plots
    plots.save(fig, out_dir / name)
    files.append(name)
    return name


# ---------------------------------------------------------------------------------------------
# The tour for a small id-vocabulary model (the induction fixture).


def _induction_demo(model, vocab: Vocab, out: Path, n: int, batch: int, seed: int, prepend_bos: bool,
                    log: Callable) -> dict:
    from minitx import plots
    cfg, files = model.cfg, []
    L, n_head = cfg.n_layer, cfg.n_head
    o = int(prepend_bos)  # the first copy starts at position o
    seq = "[BOS] + r + r" if prepend_bos else "r + r"
    n = min(n, (cfg.n_ctx - o) // 2, (cfg.d_vocab - 1) // 2)
    if n < 2:
        raise ValueError(f"the model's context ({cfg.n_ctx}) or vocabulary ({cfg.d_vocab}) is too small for the demo")
    r: dict = {"kind": "induction", "n": n, "batch": batch, "seed": seed, "prepend_bos": prepend_bos, "files": files}
    md = [f"# minitx demo: induction in a {L}-layer model\n",
          f"Model: {L} layers x {n_head} heads, d_model {cfg.d_model}, vocabulary {cfg.d_vocab} ids "
          f"(BOS = {vocab.bos}), context {cfg.n_ctx}. Sequences {'start' if prepend_bos else 'do not start'} "
          "with BOS. Every number below comes from a minitx library call; rerun `minitx demo` to reproduce it.\n"]

    # (1) attention roles on [BOS] + r + r --------------------------------------------------------
    log(f"[1/3] head roles on {batch} sequences {seq} (n = {n} random tokens, seed {seed})")
    tokens = H.repeated_tokens(cfg.d_vocab, n, batch, seed, prepend_bos=prepend_bos)  # what induction_scores builds
    offsets = H.offset_scores(model, tokens, max_offset=4)  # [layer, head, offset]
    prev = H.previous_token_scores(model, tokens)
    arg = H.argmax_offset(offsets, min_offset=1)
    ind = H.induction_scores(model, n=n, batch=batch, seed=seed, prepend_bos=prepend_bos)
    dup = H.duplicate_token_scores(model, tokens)
    bos = H.bos_attention_scores(model, tokens)
    r.update(tokens=tokens, offset_scores=offsets, previous_token=prev, offset_argmax=arg, induction=ind,
             duplicate=dup, bos=bos)
    prev_head = _argmax(prev, range(max(L - 1, 1)))
    ind_head = _argmax(ind, range(1, L) if L > 1 else None)
    r.update(prev_head=prev_head, induction_head=ind_head)
    table = {"prev-token": prev, "induction": ind, "duplicate": dup, "BOS": bos}
    _save(plots.layer_head_grids(table, "head scores on repeated random tokens (mean attention mass)"), out,
          "heads.png", files)
    patterns = H.attention_patterns(model, tokens[:1])  # [layer, 1, head, q, k]
    labels = vocab.str_tokens(tokens[0])
    for role, (l, h) in (("prev", prev_head), ("induction", ind_head)):
        _save(plots.attention_pattern(patterns[l, 0, h], labels, f"head {l}.{h} ({role} role) on {seq}"),
              out, f"attention-{role}-{l}.{h}.png", files)
    _save(plots.attention_grid(patterns[ind_head[0], 0], labels, ind_head[0]), out,
          f"attention-layer{ind_head[0]}.png", files)
    md += ["## 1. Attention roles\n",
           f"On {batch} sequences of {seq} with r = {n} distinct random ids: previous-token score "
           "= mean A[q, q-1]; induction score = mean A[n+i, i+1] (the token after the earlier occurrence of "
           "the current token); duplicate = attention to earlier copies of the current token; BOS = attention "
           "to position 0 (`minitx.heads`).\n",
           _md_table(["head", *table, "argmax offset 1..4", "its score"],
                     [row + [int(arg[l, h]), float(offsets[l, h, int(arg[l, h])])]
                      for row, (l, h) in zip(_head_rows(table), [(l, h) for l in range(L) for h in range(n_head)])]),
           "", f"Top previous-token head: **{prev_head[0]}.{prev_head[1]}** (score {float(prev[prev_head]):.2f}); "
           f"top induction head: **{ind_head[0]}.{ind_head[1]}** (score {float(ind[ind_head]):.2f}).\n",
           "![head scores](heads.png)\n",
           f"![previous-token head](attention-prev-{prev_head[0]}.{prev_head[1]}.png)\n",
           f"![induction head](attention-induction-{ind_head[0]}.{ind_head[1]}.png)\n"]

    # (2) activation patching and path patching ---------------------------------------------------
    log("[2/3] activation patching (noising each head; residual stream by position) and path patching")
    clean = tokens[:, :-1]  # [BOS] + r + r[:-1]: the last position's next token is r_n, by induction
    bos_id = int(tokens[0, 0]) if prepend_bos else vocab.bos
    corrupted = replace_first_copy(tokens, n, cfg.d_vocab, bos_id, seed + 1, start=o)[:, :-1]
    answer, wrong = tokens[:, o + n - 1], corrupted[:, o + n - 1]  # r_n, and r'_n (induction's guess when corrupted)
    metric = M.logit_diff_metric(answer, wrong, pos=-1)
    noise = P.activation_patching(model, clean, corrupted, metric, point="z", by="all", direction="noising")
    resid = P.activation_patching(model, clean, corrupted, metric, point="resid_pre", by="pos",
                                  direction="denoising")
    r.update(clean_tokens=clean, corrupted_tokens=corrupted, answer=answer, wrong=wrong,
             clean_logit_diff=noise.clean, corrupted_logit_diff=noise.corrupted,
             noising_z=noise.scores, resid_denoising=resid.scores)
    _save(plots.layer_head_grid(1 - noise.scores, "noising each head's z: share of the logit difference removed "
                                "(1 - score)", colorbar_label="removed (1 = as corrupted)"), out,
          "noising-heads.png", files)
    _save(plots.patching_heatmap(resid.scores, vocab.str_tokens(clean[0]),
                                 "denoising resid_pre by position (1 = clean restored)"), out,
          "patching-resid.png", files)
    md += ["## 2. Activation patching and path patching\n",
           f"Clean: {seq} without its last token, so the last position should predict r_n. Corrupted: "
           f"the first copy r replaced by n other ids (positions unchanged). Metric: logit difference "
           f"logit(r_n) - logit(r'_n) at the last position, mean over {batch} prompts: clean "
           f"**{noise.clean:.3f}**, corrupted **{noise.corrupted:.3f}**. Normalised score = (patched - corrupted) "
           "/ (clean - corrupted); for noising (run clean, patch in one head's corrupted z) we show "
           "**removed = 1 - score**, the share of the clean-to-corrupted drop that this one head causes.\n",
           *_gap_note(noise.clean, noise.corrupted),
           _md_table(["head", "noising score", "removed"],
                     [[f"{l}.{h}", float(noise.scores[l, h]), float(1 - noise.scores[l, h])]
                      for l in range(L) for h in range(n_head)]), "",
           "![noising heads](noising-heads.png)\n",
           "Denoising the residual stream position by position (run corrupted, restore one clean resid_pre) "
           "shows where the information sits before each layer:\n", "![resid patching](patching-resid.png)\n"]
    if L < 2:
        md.append("Path patching needs a head in a later layer; this model has one layer, so it is skipped.\n")
        r["path"] = {}
    else:
        li, hi = ind_head
        # The textbook hypothesis is about the previous-token head found above; the head whose noising hurts
        # most may be another one (a current-token head feeding the values), which would test something else.
        main = prev_head if prev_head[0] < li else divmod(int(prev[:li].flatten().argmax()), n_head)
        path, removed = {}, {}
        for name, receiver in (("q", ("q", li, hi)), ("k", ("k", li, hi)), ("v", ("v", li, hi)), ("logits", "logits")):
            result = PP.path_patch(model, clean, corrupted, main, receiver, metric)
            path[name], removed[name] = result.score, 1 - result.score
        best = max(("q", "k", "v"), key=lambda k: float(removed[k]))
        if best == "k" and float(removed["k"]) >= 0.5:
            verdict = "supported"
        elif best == "k":
            verdict = "partly supported (keys carry the most, but less than half)"
        else:
            verdict = f"not supported: the {dict(q='queries', v='values')[best]} carry more than the keys"
        sentence = (f"Head {main[0]}.{main[1]} feeds induction head {li}.{hi} through its keys: path patching "
                    f"{main[0]}.{main[1]} -> {li}.{hi} keys removes {_pct(removed['k'])} of the logit difference, "
                    f"queries {_pct(removed['q'])}, values {_pct(removed['v'])} (directly to the logits: "
                    f"{_pct(removed['logits'])}). Verdict: {verdict}.")
        if reason := _withheld(noise.clean, noise.corrupted):
            verdict = "undetermined"
            sentence = f"Head {main[0]}.{main[1]} feeds induction head {li}.{hi}: verdict {verdict}; {reason}."
        r.update(main_l0_head=main, path=path, path_removed=removed, hypothesis=sentence, verdict=verdict)
        md += [f"**Hypothesis.** Head {main[0]}.{main[1]}, the top previous-token head (score "
               f"{float(prev[main]):.2f}; noising it removes {_pct(1 - noise.scores[main])}), acts as the previous-token half of an induction circuit: it tells "
               f"induction head {li}.{hi} which key follows the earlier occurrence, so it should act through that "
               "head's **keys** (K-composition, Elhage et al. 2021).\n",
               f"Path patching (Wang et al. 2022, App. B): the sender {main[0]}.{main[1]} takes its corrupted output; "
               "every other head is frozen to its clean output; only the chosen receiver is updated. "
               "removed = 1 - score, 1 = as bad as the corrupted run.\n",
               _md_table(["receiver", "path score", "removed"],
                         [[f"{li}.{hi} {k}" if k != "logits" else "logits (direct)", float(path[k]),
                           float(removed[k])] for k in ("q", "k", "v", "logits")]), "",
               f"**Answer.** {sentence}\n"]

    # (3) logit lens ------------------------------------------------------------------------------------
    log("[3/3] logit lens on the repeated sequences")
    positions = list(range(tokens.shape[1] - 1))
    lens = LENS.logit_lens(model, tokens, targets="next", positions=positions)
    second = list(range(o + n, o + 2 * n - 1))  # queries in the second copy whose next token is predictable
    probs = lens.target_probs[:, :, second].mean((1, 2))  # [layer+1]
    ranks = lens.target_ranks[:, :, second].float().mean((1, 2))
    top1 = (lens.target_ranks[:, :, second] == 0).float().mean((1, 2))
    r.update(lens_labels=lens.labels, lens_target_prob=probs, lens_target_rank=ranks, lens_top1=top1,
             lens_positions=second)
    window = list(range(max(0, n - 3), tokens.shape[1] - 1))
    shown = LENS.logit_lens(model, tokens[:1], targets="next", positions=window)
    _save(plots.lens_table(shown, vocab.str_tokens(tokens[0]), vocab.decode,
                           title=f"logit lens on {seq}: top-1 token per layer; colour = p(correct next token)"),
          out, "lens.png", files)
    md += ["## 3. Logit lens\n",
           "Each residual stream (before every block, and the final one) read through the final layer norm and "
           f"the unembedding. Over the second copy's predictable positions ({second[0]}..{second[-1]}, all {batch} "
           "prompts): mean probability of the correct next token, its mean rank (0 = top-1), and how often it is "
           "top-1.\n",
           _md_table(["stream", "p(correct)", "mean rank", "top-1 rate"],
                     [[lab, float(p), float(k), float(t)] for lab, p, k, t in zip(lens.labels, probs, ranks, top1)]),
           "", "![logit lens](lens.png)\n"]

    summary = [f"head roles: previous-token head {prev_head[0]}.{prev_head[1]} (score {float(prev[prev_head]):.2f}), "
               f"induction head {ind_head[0]}.{ind_head[1]} (score {float(ind[ind_head]):.2f})",
               f"logit difference: clean {noise.clean:.2f}, first copy replaced {noise.corrupted:.2f}"]
    if r.get("hypothesis"):
        summary.append(r["hypothesis"])
    summary.append("logit lens, p(correct next token) in the second copy: "
                   + ", ".join(f"{lab} {float(p):.2f}" for lab, p in zip(lens.labels, probs)))
    r["summary"] = summary
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return r


# ---------------------------------------------------------------------------------------------
# The tour for a GPT-2-vocabulary model.

LENS_PROMPT, LENS_TARGET = "The cat sat on the", " mat"
SWAP_A, SWAP_B = "The cat chased the mouse", "The mouse chased the cat"
# The follow-up names neither animal, so only who did what in the story decides the answer; the
# corruption swaps the two roles in the story and leaves the question as it is (same length).
PATCH_CLEAN = "The cat chased the mouse. The one who chased was the"
PATCH_CORRUPTED = "The mouse chased the cat. The one who chased was the"
ANSWER, WRONG = " cat", " mouse"
# Head roles are scored on repeated sequences of these words (single GPT-2 tokens that a small English
# model has seen), not on random GPT-2 ids, most of which such a model never saw.
ROLE_WORDS = [" river", " stone", " king", " tree", " door", " fish", " star", " moon", " boat", " car", " road",
              " house", " lamp", " bell", " shell", " cloud", " song", " milk", " bread", " egg", " salt",
              " gold", " wood", " glass", " paper", " clock", " rose", " corn", " lake", " box", " wall"]


def _gpt2_demo(model, vocab: Vocab, out: Path, bos: bool, log: Callable) -> dict:
    from minitx import plots
    cfg, files, tok = model.cfg, [], vocab.tokenizer
    L, n_head = cfg.n_layer, cfg.n_head
    r: dict = {"kind": "gpt2", "prepend_bos": bos, "files": files}
    md = [f"# minitx demo: a GPT-2 model ({L} layers x {n_head} heads, d_model {cfg.d_model})\n",
          f"Prompts {'start' if bos else 'do not start'} with BOS (<|endoftext|>). Every number below comes "
          "from a minitx library call.\n"]

    # (1) logit lens ---------------------------------------------------------------------------------------
    log(f"[1/3] logit lens on {LENS_PROMPT!r} -> {LENS_TARGET!r}")
    tokens = tok.to_tokens(LENS_PROMPT, prepend_bos=bos)
    target = tok.to_single_token(LENS_TARGET)
    lens = LENS.logit_lens(model, tokens, targets=target)
    probs, ranks = lens.target_probs[:, 0, -1], lens.target_ranks[:, 0, -1]
    top = [tok.decode([int(i)]) for i in lens.top_tokens[:, 0, -1, 0]]
    r.update(lens_tokens=tokens, lens_target=target, lens_labels=lens.labels, lens_target_prob=probs,
             lens_target_rank=ranks, lens_top_token=top)
    _save(plots.lens_table(lens, tok.to_str_tokens(tokens), tok), out, "lens.png", files)
    md += ["## 1. Logit lens\n",
           f"{LENS_PROMPT!r}: at the last position, the probability and rank (0 = top-1) of {LENS_TARGET!r} read "
           "from each residual stream through the final layer norm and unembedding:\n",
           _md_table(["stream", f"p({LENS_TARGET!r})", "rank", "top-1 token"],
                     [[lab, float(p), int(k), repr(t)] for lab, p, k, t in zip(lens.labels, probs, ranks, top)]),
           "", "![logit lens](lens.png)\n"]

    # (2) head roles, then attention under a role swap ---------------------------------------------------------------
    log("[2/3] head roles on repeated word sequences; role swap "
        f"{SWAP_A!r} vs {SWAP_B!r}")
    word_ids = [tok.to_single_token(w) for w in ROLE_WORDS]
    n_words = min(10, (cfg.n_ctx - 1) // 2)
    repeats = H.repeated_tokens(cfg.d_vocab, n_words, 8, 0, bos, tok.bos_token_id, token_ids=word_ids)
    offsets = H.offset_scores(model, repeats, max_offset=4)
    roles = {"prev-token": offsets[..., 1],
             "induction": H.induction_scores(model, n=n_words, batch=8, seed=0, prepend_bos=bos, token_ids=word_ids),
             "duplicate": H.duplicate_token_scores(model, repeats)}
    best_offset = H.argmax_offset(offsets, min_offset=1)
    prev, ind = _argmax(roles["prev-token"]), _argmax(roles["induction"])
    r.update(role_tokens=repeats, offset_scores=offsets, head_scores=roles, prev_head=prev, induction_head=ind)
    _save(plots.layer_head_grids(roles, "head scores on repeated word sequences"), out, "heads.png", files)
    md += ["## 2. Attention roles\n",
           f"On 8 sequences {'[BOS] + ' if bos else ''}w + w ({n_words} words drawn from a fixed list, repeated once): "
           "mean attention to the previous token, to the token after the previous occurrence of the current one "
           "(induction) and to that occurrence itself (duplicate); and each head's strongest backward offset k "
           "(attention from position q to q - k, k = 1..4). A causal head can only look back, so '+k' roles "
           "exist only relative to an anchor, as induction is.\n",
           _md_table(["head", *roles, "best offset k", "its score"],
                     [[f"{l}.{h}", *(float(v[l, h]) for v in roles.values()), int(best_offset[l, h]),
                       float(offsets[l, h, int(best_offset[l, h])])]
                      for l in range(L) for h in range(n_head)]), "",
           f"Strongest previous-token head: **{prev[0]}.{prev[1]}** ({float(roles['prev-token'][prev]):.2f}); "
           f"strongest induction head: **{ind[0]}.{ind[1]}** ({float(roles['induction'][ind]):.2f}).\n",
           "![head scores](heads.png)\n"]

    a, b = tok.to_tokens(SWAP_A, prepend_bos=bos), tok.to_tokens(SWAP_B, prepend_bos=bos)
    swapped = P.differing_positions(a, b)
    if len(swapped) != 2:
        raise ValueError(f"the role-swap prompts differ at positions {swapped}, expected exactly two")
    rs = H.role_swap(model, a, b, tuple(swapped))
    l, h, _ = rs.most_changed[0]
    r.update(swap_tokens=(a, b), swap_positions=tuple(swapped), role_swap=rs, swap_head=(l, h))
    _save(plots.role_swap_figure(rs), out, "role-swap.png", files)
    patterns = H.attention_patterns(model, torch.cat([a, b]))  # [layer, 2, head, q, k]
    for i, (prompt, toks) in enumerate(((SWAP_A, a), (SWAP_B, b))):
        _save(plots.attention_pattern(patterns[l, i, h], tok.to_str_tokens(toks), f"head {l}.{h} on {prompt!r}"),
              out, f"attention-{l}.{h}-{'ab'[i]}.png", files)
    md += ["### Attention under a role swap\n",
           f"{SWAP_A!r} vs {SWAP_B!r} (positions {swapped[0]} and {swapped[1]} swap). TV_pos: how much a head's "
           "pattern changes at the same positions; TV_tok: after following the swapped tokens; R = TV_tok - TV_pos "
           "> 0 for heads that attend by role (slot), < 0 by token identity. Heads whose patterns change most:\n",
           _md_table(["head", "TV_pos", "TV_tok", "R"],
                     [[f"{ll}.{hh}", float(rs.tv_pos[ll, hh]), float(rs.tv_tok[ll, hh]), float(rs.role_index[ll, hh])]
                      for ll, hh, _ in rs.most_changed]), "",
           "![role swap](role-swap.png)\n", f"![head {l}.{h}, first prompt](attention-{l}.{h}-a.png)\n",
           f"![head {l}.{h}, swapped prompt](attention-{l}.{h}-b.png)\n"]

    # (3) patching with the role-swapped prompt as corruption ----------------------------------------------------
    log("[3/3] activation patching and path patching with the role-swapped prompt as corruption")
    clean = tok.to_tokens(PATCH_CLEAN, prepend_bos=bos)
    corrupted = tok.to_tokens(PATCH_CORRUPTED, prepend_bos=bos)
    answer, wrong = tok.to_single_token(ANSWER), tok.to_single_token(WRONG)
    metric = M.logit_diff_metric(answer, wrong, pos=-1)
    resid = P.activation_patching(model, clean, corrupted, metric, point="resid_pre", by="pos", direction="denoising")
    noise = P.activation_patching(model, clean, corrupted, metric, point="z", by="all", direction="noising")
    senders = PP.path_patch_senders(model, clean, corrupted, "logits", metric)
    main = _argmax(1 - noise.scores)
    test = _test_head(model, clean, corrupted, metric, main, noise, senders)
    if reason := _withheld(noise.clean, noise.corrupted):
        test["verdict"] = "undetermined"
        test["sentence"] = f"Head {main[0]}.{main[1]} carries the subject-object relation: verdict undetermined; {reason}."
    sentence = test["sentence"]
    r.update(clean_tokens=clean, corrupted_tokens=corrupted, answer=answer, wrong=wrong,
             clean_logit_diff=noise.clean, corrupted_logit_diff=noise.corrupted, resid_denoising=resid.scores,
             noising_z=noise.scores, path_logits=senders.score, main_head=main, hypothesis=sentence,
             verdict=test["verdict"], head_test=test)
    _save(plots.patching_heatmap(resid.scores, tok.to_str_tokens(clean), "denoising resid_pre by position"),
          out, "patching-resid.png", files)
    _save(plots.layer_head_grid(1 - noise.scores, "noising each head's z: removed (1 - score)"), out,
          "noising-heads.png", files)
    _save(plots.layer_head_grid(1 - senders.score, "path patching head -> logits: removed (1 - score)"), out,
          "path-logits.png", files)
    md += ["## 3. Patching with the role-swapped prompt as corruption\n",
           f"Clean {PATCH_CLEAN!r}, corrupted {PATCH_CORRUPTED!r}; metric logit({ANSWER!r}) - logit({WRONG!r}) at "
           f"the last position: clean **{noise.clean:.3f}**, corrupted **{noise.corrupted:.3f}**. Noising and path "
           "patching show removed = 1 - score (1 = as bad as the corrupted run).\n",
           *_gap_note(noise.clean, noise.corrupted),
           "![resid patching](patching-resid.png)\n", "![noising heads](noising-heads.png)\n",
           "![path patching to logits](path-logits.png)\n",
           f"**Hypothesis: \"head {main[0]}.{main[1]} carries the subject-object relation\".** It is the head whose "
           "noising hurts most. Tested end to end:\n",
           _md_table(["experiment", "share of the logit difference"], test["rows"]), "",
           f"**Answer.** {sentence}\n"]

    r["summary"] = [
        f"logit lens: p({LENS_TARGET!r}) after {LENS_PROMPT!r}: "
        + ", ".join(f"{lab} {float(p):.3f}" for lab, p in zip(lens.labels, probs)),
        f"role swap: head {l}.{h} changes most (TV_pos {float(rs.tv_pos[l, h]):.2f}, "
        f"R {float(rs.role_index[l, h]):+.2f})",
        f"head roles: previous-token head {prev[0]}.{prev[1]} ({float(roles['prev-token'][prev]):.2f}), "
        f"induction head {ind[0]}.{ind[1]} ({float(roles['induction'][ind]):.2f})",
        f"logit difference {ANSWER!r} - {WRONG!r}: clean {noise.clean:.2f}, role-swapped {noise.corrupted:.2f}",
        sentence]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return r


def _test_head(model, clean: Tensor, corrupted: Tensor, metric, head: tuple[int, int], noise, senders) -> dict:
    """Tests "head L.H carries the subject-object relation" with the role-swapped prompt as corruption.

    Shares of the clean - corrupted logit difference: noising the head's output (necessity), restoring
    it alone into the corrupted run (sufficiency), noising only its pattern or only its values (where
    it attends vs what it moves), its direct path to the logits, and its path into the q, k or v of
    each later layer (IOI path patching, Wang et al. 2022), then into the best of those heads."""
    l, h = head
    L, n_head = model.cfg.n_layer, model.cfg.n_head
    total = float(1 - noise.scores[l, h])
    restored = float(P.activation_patching(model, clean, corrupted, metric, "z", "all", direction="denoising")
                     .scores[l, h])
    pattern = float(1 - P.activation_patching(model, clean, corrupted, metric, "pattern", "all",
                                              direction="noising").scores[l, h])
    values = float(1 - P.activation_patching(model, clean, corrupted, metric, "v", "all",
                                             direction="noising").scores[l, h])
    direct = float(1 - senders.score[l, h])
    rows = [[f"noise {l}.{h} (all positions): removed", total], [f"restore {l}.{h} alone: recovered", restored],
            ["noise only its pattern (where it attends): removed", pattern],
            ["noise only its values (what it moves): removed", values], [f"path {l}.{h} -> logits: removed", direct]]
    paths = {}
    for layer in range(l + 1, L):  # every later layer's queries, keys or values, all heads together
        for kind in "qkv":
            receivers = [(kind, layer, j) for j in range(n_head)]
            paths[(kind, layer)] = float(1 - PP.path_patch(model, clean, corrupted, [(l, h)], receivers, metric).score)
            rows.append([f"path {l}.{h} -> {kind} of layer {layer}: removed", paths[(kind, layer)]])
    via = ""
    if paths:
        kind, layer = max(paths, key=lambda key: abs(paths[key]))
        per_head = [float(1 - PP.path_patch(model, clean, corrupted, [(l, h)], [(kind, layer, j)], metric).score)
                    for j in range(n_head)]
        j = max(range(n_head), key=lambda i: abs(per_head[i]))
        rows.append([f"path {l}.{h} -> {kind} of head {layer}.{j}: removed", per_head[j]])
        via = f"; through later heads it acts mostly via the {kind} of layer {layer} ({_pct(paths[(kind, layer)])}, " \
              f"head {layer}.{j} alone {_pct(per_head[j])})"
    carries = total >= 0.3 and restored >= 0.3
    verdict = "supported" if carries else ("partly supported" if max(total, restored) >= 0.3 else "not supported")
    how = ("where it attends (its pattern): it finds the right token by its role" if abs(pattern) > abs(values) else
           "what it moves (its values): earlier layers wrote the relation into the positions it reads, and it "
           "moves it to the answer")
    sentence = (f"Head {l}.{h} carries the subject-object relation: {verdict}. Noising it removes {_pct(total)} of "
                f"the logit difference and restoring it alone recovers {_pct(restored)}; the information lies in "
                f"{how} (pattern {_pct(pattern)}, values {_pct(values)}); {_pct(direct)} goes directly to the "
                f"logits{via}.")
    return {"rows": rows, "sentence": sentence, "verdict": verdict, "noised": total, "restored": restored,
            "pattern": pattern, "values": values, "direct": direct, "paths": paths}


# ---------------------------------------------------------------------------------------------


def check_demo_args(n, batch, flags: bool = False) -> None:
    """ValueError unless n (random ids per copy) is an int >= 2 and batch an int >= 1; flags: name them --n/--batch."""
    name_n, name_batch = ("--n ", "--batch ") if flags else ("n=", "batch=")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"{name_n}{n!r}: the induction tour needs at least 2 random ids per copy")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"{name_batch}{batch!r}: the number of random sequences must be at least 1")


def run_demo(model, out_dir, *, n: int = 12, batch: int = 8, seed: int = 0, prepend_bos: bool = True,
             log: Callable[[str], None] | None = _stderr) -> dict:
    """Writes report.md and PNG figures into out_dir; returns the numbers reported (library tensors as returned).

    The tour depends on the vocabulary: GPT-2's (50257) gets English prompts, any other the
    induction tour on repeated random tokens (n ids per copy, batch prompts, seed). prepend_bos: every
    prompt starts with BOS (default, as the fixture was trained and TransformerLens does). log: a function
    given one line per stage (default: stderr), or None for silence."""
    check_demo_args(n, batch)  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = Vocab(model.cfg)
    log = log or (lambda message: None)
    with torch.no_grad():
        if vocab.is_text:
            result = _gpt2_demo(model, vocab, out, prepend_bos, log)
        else:
            result = _induction_demo(model, vocab, out, n, batch, seed, prepend_bos, log)
    result["files"] = ["report.md"] + result["files"]
    result["out_dir"] = out
    return result


__all__ = ["Vocab", "run_demo", "check_demo_args", "replace_first_copy", "GPT2_VOCAB"]

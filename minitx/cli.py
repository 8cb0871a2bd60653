"""The `minitx` command line: thin wrappers that parse arguments, call the library, print and save.

Every command is one row of `COMMANDS`: its name, a one-line help, a description, a function adding its
arguments and a function running it. To add a command, write `args_x(p)` (arguments, each with help
text; defaults are shown automatically) and `cmd_x(args) -> exit code` (load with `_load`, compute with
two or three library calls, print tables with `say(report.text_table(...))`, save figures with
`_save_figure`), then append `Command("x", ...)` to COMMANDS. Prompts are positional (`_prompt_args`),
each with a `--name` alias.

Errors never show a traceback: anything raised below `main` is printed as one line
`minitx CMD: error: ...` with exit code 2 (set MINITX_DEBUG=1 to see the traceback instead).
Ctrl-C exits with 130 and one line; a closed pipe (`minitx heads | head -1`) ends the printing,
not the work, so the figure is still written.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from minitx import __version__

# The small English model trained here (weights/english-6l/MODEL_CARD.md); weights/induction-2l is the
# 2-layer induction fixture (token ids, no text). Both ship inside the package (minitx/shipped.py): a
# --model that is not a local path but names a shipped model ("english-6l" or "weights/english-6l")
# reads the packaged copy, so every command works from any directory, installed or not.
DEFAULT_MODEL = "weights/english-6l"
REPO_ROOT = Path(__file__).resolve().parent.parent  # the source checkout, when there is one (tests use it)

MODEL_HELP = (f"checkpoint directory, .safetensors file or hub id (default: the small English model {DEFAULT_MODEL}, "
              "shipped inside the package and found from any directory; also english-6l, induction-2l). With a "
              "tokenizer (GPT-2's vocabulary of 50257, or the checkpoint's own vocab.json + merges.txt) prompts "
              "and tokens are text; with any other vocabulary (the fixture has 65 ids, BOS = 64) they are "
              "space-separated integer token ids")
BOS_HELP = ("start every prompt with BOS (default: --prepend-bos, as the fixture was trained and as "
            "TransformerLens does; <|endoftext|> for GPT-2, cfg.bos_token_id or the last id otherwise)")
PROMPT_HELP = "text for a model with a tokenizer, else space-separated token ids (e.g. '5 9 2 5 9')"
TOKEN_HELP = "text: one token such as ' mat' (mind the leading space); ids: one id"


# ---------------------------------------------------------------------------------------------
# Output: stdout that survives a closed pipe, progress lines on stderr, figures.

def say(text: str = "") -> None:
    """Prints a line to stdout; once the reader has gone (`| head -1`), further output is dropped, not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail either
        os.close(devnull)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _warn(args, message: str) -> None:
    print(f"minitx {args.command}: warning: {message}", file=sys.stderr, flush=True)


def _figure_path(out: str | None, default: str) -> Path:
    """--out -> the PNG to write: default in the current folder, inside --out when it names a folder."""
    if out is None:
        return Path(default)
    path = Path(out).expanduser()
    return path / default if path.is_dir() or out.endswith(("/", os.sep)) else path


def _save_figure(fig, args, default: str) -> None:
    from minitx import plots
    say(f"figure: {plots.save(fig, _figure_path(args.out, default))}")


# ---------------------------------------------------------------------------------------------
# Shared by the commands: the model, its prompts, small checks.

def resolve_model(name: str | None) -> str:
    """--model -> what minitx.loading.load reads: a local path, a shipped model's folder, or a hub id."""
    from minitx.shipped import shipped_path
    name = DEFAULT_MODEL if name is None else name
    if not name.strip():  # Path("") is the current folder: never load it by accident
        raise ValueError(f"--model {name!r} is empty; give a checkpoint folder, a .safetensors file or a hub id "
                         f"(or leave --model out for {DEFAULT_MODEL})")
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    shipped = shipped_path(name)
    return str(shipped) if shipped is not None else name


def _check_out(out: str | None) -> None:
    """--out names a place that can be written, checked before any work: its folder is a folder, or can be made."""
    if out is None:
        return
    folder = _figure_path(out, "figure.png").parent
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--out {out}: {folder} is a file, not a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise FileNotFoundError(f"cannot make the folder {folder}: {folder.parent} does not exist; create it first "
                                "(only the last folder of a path is created)")  # as plots.save says, before the work


def _load(args):
    """-> (model, prompts.Vocab) for --model, after checking --out; the checkpoint's own vocab.json + merges.txt
    when it has them."""
    from minitx.checks import check_device
    from minitx.loading import load
    from minitx.prompts import Vocab
    device = check_device(args.device, "--device")  # before any work: "--device cuda: cuda is not available here"
    if args.command != "demo":  # the demo's --out is a report folder, checked by demo.check_report_folder
        _check_out(getattr(args, "out", None))
    path = resolve_model(args.model)
    model = load(path, device=device)
    return model, Vocab.for_model(model, path if Path(path).exists() else None)


def _check_runs(model, *tokens) -> None:
    """The model's own checks on each [batch, pos] prompt (ids in the vocabulary, at most n_positions tokens),
    from an embedding-only forward, so that they fail before any progress line."""
    for t in tokens:
        model(t, stop_at_layer=0)


def _check_pos(pos: int, n_pos: int) -> None:
    from minitx.checks import check_positions
    try:
        check_positions(pos, n_pos)
    except ValueError as error:
        raise ValueError(f"--pos: {error}") from None


def _check_index(value: int | None, size: int, what: str, plural: str) -> None:
    from minitx.checks import check_index
    if value is not None:
        check_index(value, size, what, plural)


def _token(args, vocab, text: str, what: str) -> int:
    """One token's id, with a hint when a word is given without the leading space it has after another word."""
    token = vocab.token(text, what)
    if vocab.is_text and text[:1].isalnum():
        try:
            spaced = vocab.token(" " + text, what)
        except ValueError:
            return token
        _warn(args, f"{what} {text!r} has no leading space; after another word the token is {' ' + text!r} "
                    f"(id {spaced}), a different token from {text!r} (id {token})")
    return token


def _warn_blank(args, model, vocab, tokens, what: str) -> None:
    """A warning when tokens use ids whose embedding is blank: the model never trained them."""
    from minitx.prompts import blank_tokens
    blank = blank_tokens(model, tokens)
    if blank:
        shown = ", ".join(repr(vocab.decode(t)) for t in blank[:6]) + (" ..." if len(blank) > 6 else "")
        _warn(args, f"{what} uses {len(blank)} token(s) this model never trained (blank embeddings): {shown}; "
                    "its numbers there say little")


# ---------------------------------------------------------------------------------------------
# Commands without analysis.

def cmd_download(args) -> int:
    from minitx.loading import download
    path = download(args.name, revision=args.revision)
    say(f"{args.name}: in the Hugging Face cache at {path}")
    return 0


def cmd_verify(args) -> int:
    from minitx.verify import format_rows, verify, verify_processed
    if args.source is not None:  # a processed model against its raw source: the invariants of docs/methods.md §11
        rows = verify_processed(resolve_model(args.model), resolve_model(args.source), tolerance=args.tolerance)
    else:
        rows = verify(resolve_model(args.model), tolerance=args.tolerance)
    say(format_rows(rows))
    failed = [r for r in rows if not r.ok]
    say(f"\n{len(rows) - len(failed)} of {len(rows)} checks within tolerance {args.tolerance:g}")
    return 1 if failed else 0


def cmd_generate(args) -> int:
    model, vocab = _load(args)
    tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
    # GPT-2 ends a text with <|endoftext|> (its BOS id); a model of bare ids has no end token.
    eos = model.cfg.bos_token_id if vocab.is_text and not args.ignore_eos else None
    out = model.generate(tokens, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                         eos_token_id=eos)[0]
    ends = [] if eos is None else (out[tokens.shape[1]:] == eos).nonzero()
    if len(ends):
        out = out[:tokens.shape[1] + int(ends[0])]  # the text ends there
    say(vocab.tokenizer.to_string(out) if vocab.is_text else " ".join(map(str, out.tolist())))
    return 0


# ---------------------------------------------------------------------------------------------
# Analysis commands. Each: parse, call the library, print a compact table, save one PNG.

def cmd_attention(args) -> int:
    from minitx import heads, plots
    from minitx.report import text_table, token_label
    model, vocab = _load(args)
    cfg = model.cfg
    _check_index(args.layer, cfg.n_layer, "--layer", "layers")
    _check_index(args.head, cfg.n_head, "--head", "heads")
    tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
    _check_runs(model, tokens)
    _warn_blank(args, model, vocab, tokens, "the prompt")
    patterns = heads.attention_patterns(model, tokens)[args.layer, 0]  # [head, q, k]
    labels = vocab.str_tokens(tokens[0])
    shown = [args.head] if args.head is not None else list(range(cfg.n_head))
    rows = []
    for q, label in enumerate(labels):
        row = [f"{q} {token_label(label, 10)}"]
        for h in shown:
            k = int(patterns[h, q].argmax())
            row.append(f"{k} {token_label(labels[k], 10)} {float(patterns[h, q, k]):.2f}")
        rows.append(row)
    say(f"layer {args.layer}: the key each query attends to most (position, token, weight)")
    say(text_table(["query", *(f"head {args.layer}.{h}" for h in shown)], rows))
    if len(labels) > 1:
        prev = heads.offset_profile(patterns, 1)[:, 1:, 1].mean(-1)  # [head] mean A[q, q-1], q >= 1: no 2nd forward
        say("mean attention to the previous token: " + ", ".join(f"{args.layer}.{h} {float(prev[h]):.2f}"
                                                                  for h in shown))
    if args.head is not None:
        fig = plots.attention_pattern(patterns[args.head], labels, f"head {args.layer}.{args.head} on {args.prompt!r}")
        _save_figure(fig, args, f"attention-{args.layer}.{args.head}.png")
    else:
        fig = plots.attention_grid(patterns, labels, args.layer, f"layer {args.layer} on {args.prompt!r}")
        _save_figure(fig, args, f"attention-layer{args.layer}.png")
    return 0


def _heads_tokens(args, model, vocab):
    """-> (tokens the prompt scores use, ids r is drawn from or None, a phrase saying where), all checked first."""
    from minitx import heads
    from minitx.checks import check_count
    from minitx.prompts import known_token_ids
    cfg, o = model.cfg, int(args.prepend_bos)
    check_count(args.batch, "--batch", "random sequences the scores average over")
    heads.check_max_offset(args.max_offset)
    known = known_token_ids(model)
    pool = known.tolist() if len(known) < cfg.d_vocab else None  # a small model's trained tokens only
    n_tokens = len(set(pool or range(cfg.d_vocab)) - {cfg.d_vocab - 1})  # ids r is drawn from: not BOS (the last)
    largest = min(n_tokens, (cfg.n_ctx - o) // 2)  # distinct ids, and [BOS] + r + r within n_positions
    if not 1 <= args.n <= largest:
        raise ValueError(f"--n {args.n}: allowed --n 1..{largest} ({n_tokens} distinct ids to draw r from; "
                         f"{'[BOS] + ' if o else ''}r + r must fit n_positions={cfg.n_ctx})")
    heads.check_memory(cfg, args.batch, 2 * args.n + o, device=model.W_E.device)  # before the batch is drawn
    drawn = f" from the {len(pool)} tokens this model trained" if pool is not None else ""
    if args.prompt is not None:
        tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
        if tokens.shape[1] < 2:
            raise ValueError("the prompt needs at least 2 tokens to score heads")
        _check_runs(model, tokens)
        heads.check_memory(cfg, *tokens.shape, device=model.W_E.device)
        _warn_blank(args, model, vocab, tokens, "the prompt")
        return tokens, pool, f"the prompt {args.prompt!r}"
    tokens = heads.repeated_tokens(cfg.d_vocab, args.n, args.batch, args.seed, args.prepend_bos, token_ids=pool)
    where = (f"{args.batch} sequences {'[BOS] + ' if o else ''}r + r (n = {args.n}{drawn}, seed {args.seed})")
    return tokens, pool, where


def cmd_heads(args) -> int:
    from minitx import heads, plots
    from minitx.report import progress, text_table
    model, vocab = _load(args)
    cfg = model.cfg
    tokens, pool, where = _heads_tokens(args, model, vocab)  # every argument checked before the progress line
    _progress(f"scoring heads on {where}; induction on repeated random tokens")
    max_offset = min(args.max_offset, tokens.shape[1] - 1)
    scores, offsets = {}, None
    stages = ["offsets", "induction", "duplicate", "BOS"]
    for stage in progress(stages, "scoring heads"):
        if stage == "offsets":
            offsets = heads.offset_scores(model, tokens, max_offset=max_offset)
            scores["prev-token"] = offsets[..., 1]
        elif stage == "induction":
            scores["induction"] = heads.induction_scores(model, n=args.n, batch=args.batch, seed=args.seed,
                                                         prepend_bos=args.prepend_bos, token_ids=pool)
        elif stage == "duplicate":
            try:
                scores["duplicate"] = heads.duplicate_token_scores(model, tokens)
            except ValueError:  # no token repeats in a user's prompt: the score is undefined, not an error
                _progress("duplicate-token score: no token of the prompt repeats an earlier one; left out")
        else:
            scores["pos-0 (BOS)"] = heads.bos_attention_scores(model, tokens)
    best = heads.argmax_offset(offsets, min_offset=1)
    rows = [[f"{l}.{h}", *(float(s[l, h]) for s in scores.values()), int(best[l, h]),
             float(offsets[l, h, int(best[l, h])])] for l in range(cfg.n_layer) for h in range(cfg.n_head)]
    say(f"head scores (mean attention mass) on {where}")
    say(text_table(["head", *scores, "offset 1..k", "its score"], rows))
    _save_figure(plots.layer_head_grids(scores, f"head scores on {where}"), args, "heads.png")
    return 0


def _receiver(text: str, cfg):
    """'logits' | 'q:L.H' | 'k:L.H' | 'v:L.H' | 'mlp_in:L' -> path_patching's receiver."""
    if text == "logits":
        return "logits"
    kind, _, where = text.partition(":")
    try:
        if kind in ("q", "k", "v"):
            layer, head = (int(x) for x in where.split("."))
            _check_index(layer, cfg.n_layer, "receiver layer", "layers")
            _check_index(head, cfg.n_head, "receiver head", "heads")
            return (kind, layer, head)
        if kind == "mlp_in":
            _check_index(int(where), cfg.n_layer, "receiver layer", "layers")
            return ("mlp_in", int(where))
    except ValueError as error:
        if "out of range" in str(error):
            raise
    raise ValueError(f"--receiver {text!r}: use logits, q:L.H, k:L.H, v:L.H (e.g. k:1.0) or mlp_in:L")


def _sender(text: str, cfg):
    """'L.H' | 'mlp:L' | 'embed' -> path_patching's sender."""
    try:
        if text == "embed":
            return "embed"
        if text.startswith("mlp:"):
            layer = int(text[4:])
            _check_index(layer, cfg.n_layer, "sender layer", "layers")
            return ("mlp", layer)
        layer, head = (int(x) for x in text.split("."))
        _check_index(layer, cfg.n_layer, "sender layer", "layers")
        _check_index(head, cfg.n_head, "sender head", "heads")
        return (layer, head)
    except ValueError as error:
        if "out of range" in str(error):
            raise
    raise ValueError(f"--sender {text!r}: use a head L.H (e.g. 0.1), mlp:L or embed")


def _pair(args, model, vocab):
    """-> clean, corrupted, answer, wrong, checked (with --pos) before any progress line, so an error stands alone.
    With --pairs FILE: [batch, pos] prompts and [batch] answer and wrong ids from its JSONL rows."""
    import torch
    from minitx.engine import check_same_shape
    if getattr(args, "pairs", None) is not None:
        return _pairs_file(args, model, vocab)
    missing = [f"--{name}" for name in ("clean", "corrupted", "answer", "wrong") if getattr(args, name) is None]
    if missing:
        raise ValueError(f"give the clean and corrupted prompts, --answer and --wrong (missing: {', '.join(missing)}), "
                         "or --pairs FILE")
    clean = vocab.tokens(args.clean, prepend_bos=args.prepend_bos, what="--clean")
    corrupted = vocab.tokens(args.corrupted, prepend_bos=args.prepend_bos, what="--corrupted")
    answer, wrong = _token(args, vocab, args.answer, "--answer"), _token(args, vocab, args.wrong, "--wrong")
    check_same_shape(clean, corrupted)
    _check_runs(model, clean, corrupted)
    if torch.equal(clean, corrupted):
        raise ValueError("--clean and --corrupted are the same tokens, so clean - corrupted = 0 and every score "
                         "(patched - corrupted) / (clean - corrupted) is undefined; corrupt the prompt "
                         "(e.g. swap a name)")
    if answer == wrong:
        raise ValueError(f"--answer and --wrong are the same token ({answer}), so the logit difference is always 0 and "
                         "every score is undefined; --wrong is the competing token (e.g. the corrupted answer)")
    _check_pos(args.pos, clean.shape[1])
    _warn_blank(args, model, vocab, torch.cat([clean, corrupted, torch.tensor([[answer, wrong]])], 1),
                "the prompt pair")
    return clean, corrupted, answer, wrong


def _pairs_file(args, model, vocab):
    """--pairs FILE -> clean, corrupted [batch, pos], answer, wrong [batch] (minitx.datasets.load_pairs)."""
    import torch
    from minitx import datasets
    given = [f"--{name}" for name in ("clean", "corrupted", "answer", "wrong") if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--pairs replaces the single pair; drop {', '.join(given)}")
    if not vocab.is_text:
        raise ValueError("--pairs holds text prompts, and this model has no tokenizer; give one pair of token ids")
    batch = datasets.load_pairs(args.pairs, vocab.tokenizer, args.prepend_bos)
    _check_runs(model, batch.clean, batch.corrupted)
    _check_pos(args.pos, batch.clean.shape[1])
    _warn_blank(args, model, vocab, torch.cat([batch.clean, batch.corrupted], 1), "the pairs")
    return batch.clean, batch.corrupted, batch.answer, batch.wrong


def _pair_name(args, vocab, answer, wrong) -> str:
    """What the metric is, for a table's first line: the two tokens, or the dataset."""
    if getattr(args, "pairs", None) is not None:
        return f"logit difference answer - wrong over {len(answer)} pairs from {args.pairs}"
    return f"logit difference {vocab.decode(answer)!r} - {vocab.decode(wrong)!r}"


def _pair_title(args) -> str:
    if getattr(args, "pairs", None) is not None:
        return f"the pairs of {Path(args.pairs).name}"
    return f"{args.clean!r} vs {args.corrupted!r}"


def cmd_patch(args) -> int:
    from minitx import metrics, patching, plots
    from minitx.report import text_table
    model, vocab = _load(args)
    cfg = model.cfg
    clean, corrupted, answer, wrong = _pair(args, model, vocab)
    by = args.by or ("pos" if args.point in patching.RESID_LIKE else "all")
    head = 0 if args.point in patching.HEAD_LIKE else None
    patching.act_index(args.point, 0 if by == "pos" else None, head)  # e.g. pattern has no per-position patch
    metric = metrics.logit_diff_metric(answer, wrong, pos=args.pos)
    _progress(f"activation patching {args.point} ({args.direction}, by {by}) over {cfg.n_layer} layers ...")
    result = patching.activation_patching(model, clean, corrupted, metric, point=args.point, by=by,
                                          direction=args.direction)
    labels = plots.position_labels(vocab.str_tokens(clean[0]), vocab.str_tokens(corrupted[0]), 10)
    S = result.scores
    say(f"{_pair_name(args, vocab, answer, wrong)}: clean {result.clean:+.3f}, "
        f"corrupted {result.corrupted:+.3f}")
    say(f"{result.direction} {args.point}, score = (patched - corrupted) / (clean - corrupted): "
        "1 = clean behaviour, 0 = corrupted")
    title = f"{result.direction} {args.point} on {_pair_title(args)} (1 = clean, 0 = corrupted)"
    if result.axes == ("layer", "pos"):
        say(text_table(["layer", *(f"{p}:{t}" for p, t in enumerate(labels))],
                       [[str(l), *map(float, S[l])] for l in range(cfg.n_layer)]))
        fig = plots.patching_heatmap(S, labels, title)
    elif result.axes == ("layer",):
        say(text_table(["layer", "score"], [[str(l), float(S[l])] for l in range(cfg.n_layer)]))
        fig = plots.patching_heatmap(S[:, None], ["all positions"], title)
    elif result.axes == ("layer", "head"):
        say(text_table(["layer", *(f"head {h}" for h in range(cfg.n_head))],
                       [[str(l), *map(float, S[l])] for l in range(cfg.n_layer)]))
        fig = plots.layer_head_grid(S, title, limits=(-1.0, 1.0), colorbar_label="score (1 clean, 0 corrupted)")
    else:  # [layer, pos, head] -> rows L.H
        rows = [[f"{l}.{h}", *map(float, S[l, :, h])] for l in range(cfg.n_layer) for h in range(cfg.n_head)]
        say(text_table(["head", *(f"{p}:{t}" for p, t in enumerate(labels))], rows))
        fig = plots.patching_heatmap(S.permute(0, 2, 1).reshape(-1, S.shape[1]), labels, title,
                                     row_labels=[r[0] for r in rows], ylabel="head")
    if clean.shape[0] > 1:  # --pairs: the table holds means; say how sure the largest ones are
        _say_top_intervals(result, labels, no_effect=0.0 if result.direction == "denoising" else 1.0)
    _save_figure(fig, args, "patch.png")
    return 0


def _say_top_intervals(result, labels: list[str], no_effect: float, top: int = 5) -> None:
    """The `top` entries of a patching result over several prompts that move the score most from `no_effect`
    (0 when denoising, 1 when noising or path patching), each with its 95% interval."""
    import torch
    from minitx import stats
    from minitx.report import fmt_interval, head_label, text_table
    interval = stats.result_interval(result)
    effect = (interval.estimate.flatten() - no_effect).abs().nan_to_num(-1.0)  # NaN (no path) last
    order = effect.argsort(descending=True)[:top].tolist()
    rows = []
    for flat in order:
        at = dict(zip(result.axes, (int(i) for i in torch.unravel_index(torch.tensor(flat), interval.estimate.shape))))
        where = head_label(at["layer"], at["head"]) if "head" in at else f"layer {at['layer']}"
        where += f" at {at['pos']}:{labels[at['pos']]}" if "pos" in at else ""
        rows.append([where, fmt_interval(*(float(x.flatten()[flat]) for x in (interval.estimate, interval.low,
                                                                               interval.high)))])
    say(f"the {len(rows)} scores farthest from {no_effect:g} (no effect), with a 95% percentile bootstrap interval "
        f"over the {interval.n} pairs:")
    say(text_table(["where", "score [95% interval]"], rows))


REL_CHANGE = ("rel. change = (patched - clean) / clean logit difference: the IOI paper's \"% change in logit "
              "difference\" / 100 (-1 = the difference is gone, 0 = unchanged)")


def cmd_path_patch(args) -> int:
    from minitx import metrics, path_patching, plots
    from minitx.report import text_table
    model, vocab = _load(args)
    cfg = model.cfg
    receivers = [_receiver(r, cfg) for r in args.receiver]
    sender = _sender(args.sender, cfg) if args.sender is not None else None
    clean, corrupted, answer, wrong = _pair(args, model, vocab)
    metric = metrics.logit_diff_metric(answer, wrong, pos=args.pos)
    named = " + ".join(args.receiver)
    frozen = ", MLPs frozen" if args.freeze_mlps else ""
    if sender is not None:
        return _path_patch_one_sender(args, model, clean, corrupted, metric, sender, receivers, vocab, answer, wrong)
    _progress(f"path patching each of {cfg.n_layer * cfg.n_head} heads -> {named}{frozen} ...")
    result = path_patching.path_patch_senders(model, clean, corrupted, receivers, metric, freeze_mlps=args.freeze_mlps)
    removed = 1 - result.scores
    say(f"{_pair_name(args, vocab, answer, wrong)}: clean {result.clean:+.3f}, "
        f"corrupted {result.corrupted:+.3f}")
    say(f"path sender -> {named}{frozen}: removed = 1 - score = share of the clean-corrupted difference "
        "lost when only this path sees the corrupted prompt (0 = no effect, 1 = as corrupted)")
    say(REL_CHANGE)
    if bool(result.scores.isnan().any()):
        say("nan = no path: the sender is at or after the receivers' layer")
    say(text_table(["sender", "score", "removed", "rel. change"],
                   [[f"{l}.{h}", float(result.scores[l, h]), float(removed[l, h]),
                     float(result.relative_change[l, h])] for l in range(cfg.n_layer) for h in range(cfg.n_head)]))
    fig = plots.layer_head_grid(removed, f"path patching sender -> {named}{frozen} on {_pair_title(args)}: removed "
                                "(1 - score)", limits=(-1.0, 1.0), colorbar_label="removed (1 = as corrupted)")
    if clean.shape[0] > 1:  # --pairs
        _say_top_intervals(result, [], no_effect=1.0)
    _save_figure(fig, args, "path-patch.png")
    return 0


def _path_patch_one_sender(args, model, clean, corrupted, metric, sender, receivers, vocab, answer, wrong) -> int:
    """--sender: the path sender -> each receiver alone, and (several receivers) -> all of them together."""
    from minitx import path_patching
    from minitx.report import progress, text_table
    _progress(f"path patching {args.sender} -> {' + '.join(args.receiver)} ...")
    runs = [(name, [r]) for name, r in zip(args.receiver, receivers)]
    if len(receivers) > 1:
        runs.append((" + ".join(args.receiver), receivers))
    rows, result = [], None
    for name, recs in progress(runs, "path patching"):
        result = path_patching.path_patch(model, clean, corrupted, sender, recs, metric, freeze_mlps=args.freeze_mlps)
        rows.append([f"{args.sender} -> {name}", float(result.scores), float(1 - result.scores),
                     float(result.relative_change)])
    say(f"{_pair_name(args, vocab, answer, wrong)}: clean {result.clean:+.3f}, "
        f"corrupted {result.corrupted:+.3f}" + (" (MLPs frozen)" if args.freeze_mlps else ""))
    say("removed = 1 - score: share of the clean-corrupted difference lost when only this path sees the corrupted "
        "prompt (0 = no effect, 1 = as corrupted)")
    say(REL_CHANGE)
    say(text_table(["path", "score", "removed", "rel. change"], rows))
    return 0


def cmd_lens(args) -> int:
    from minitx import lens, plots
    from minitx.report import text_table
    model, vocab = _load(args)
    tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
    target = _token(args, vocab, args.target, "--target") if args.target is not None else None
    T = tokens.shape[1]
    _check_pos(args.pos, T)
    _check_runs(model, tokens)
    import torch
    _warn_blank(args, model, vocab, tokens if target is None else torch.cat([tokens, torch.tensor([[target]])], 1),
                "the prompt" if target is None else "the prompt or --target")
    chosen = _lens(args, model, args.lens)
    result = lens.read_lens(chosen, tokens, targets=target, incl_mid=args.incl_mid)
    labels = vocab.str_tokens(tokens[0])
    p = args.pos % T
    header = ["stream", "top-1", "p(top-1)"] + ([f"p({vocab.decode(target)!r})", "rank"] if target is not None else [])
    rows = []
    for i, name in enumerate(result.labels):
        row = [name, repr(vocab.decode(int(result.top_tokens[i, 0, p, 0]))), float(result.top_probs[i, 0, p, 0])]
        if target is not None:
            row += [float(result.target_probs[i, 0, p]), int(result.target_ranks[i, 0, p])]
        rows.append(row)
    say(f"{args.lens} lens at position {p} ({labels[p]!r}); rank 0 = top-1")
    say(text_table(header, rows))
    what = f"colour = p({vocab.decode(target)!r})" if target is not None else "colour = p(top-1)"
    fig = plots.lens_table(result, labels, vocab.decode, title=f"{args.lens} lens on {args.prompt!r}: top-1 token "
                                                              f"per layer; {what}")
    if not args.compare:
        _save_figure(fig, args, "lens.png")
        return 0
    lenses = {kind: _lens(args, model, kind) for kind in ("logit", "tuned", "jacobian")}
    scores = lens.lens_scores(lenses, [tokens])
    paths = ({kind: lens.read_lens(lenses[kind], tokens, targets=target, positions=[p]) for kind in lenses}
             if target is not None else None)
    say(text_table(["lens", "mean KL(final || layer) per stream, nats"],
                   [[kind, "  ".join(f"{l} {k:.3f}" for l, k in zip(s["labels"], s["kl"]))] for kind, s in scores.items()]))
    _save_figure(plots.lens_comparison(scores, paths, repr(vocab.decode(target)) if target is not None else "",
                                       title=f"lenses on {args.prompt!r} ({len(labels)} positions)"), args, "lens.png")
    return 0


def _lens(args, model, kind: str):
    """The lens to read with: the logit lens, or a tuned / Jacobian lens from --lens-path or the model's lenses/."""
    from minitx import lens
    if kind == "logit":
        if args.lens_path and args.lens == "logit":
            raise ValueError("--lens-path is a tuned or Jacobian lens file; give --lens tuned or --lens jacobian "
                             "with it")
        return lens.LogitLens(model)
    folder = Path(resolve_model(args.model)) / "lenses"
    path = Path(args.lens_path) if args.lens_path and kind == args.lens else folder / ("tuned" if kind == "tuned" else
                                                                                      "jacobian.pt")
    if not path.exists():
        raise FileNotFoundError(f"no {kind} lens at {path}; give --lens-path, or make one with scripts/train_lenses.py")
    if kind == "tuned":
        from minitx.tuned_lens import TunedLens
        return TunedLens.load(model, path)
    from minitx.jacobian_lens import JacobianLens
    return JacobianLens.load(model, path)


def _circuit_prompts(args, model, vocab):
    """-> (tokens [batch, pos] for the positional/token split, a phrase saying what they are), checked."""
    import torch
    from minitx.prompts import known_token_ids
    if args.prompt is not None:
        tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
        _check_runs(model, tokens)
        _warn_blank(args, model, vocab, tokens, "the prompt")
        return tokens, "the prompt"
    if args.batch < 2 or args.n_pos < 2:
        raise ValueError(f"--batch {args.batch} and --n-pos {args.n_pos}: need at least 2 prompts of at least 2 tokens")
    o = int(args.prepend_bos)
    if args.n_pos + o > model.cfg.n_ctx:
        raise ValueError(f"--n-pos {args.n_pos} is more than this model's n_positions={model.cfg.n_ctx} allows; "
                         f"allowed --n-pos 2..{model.cfg.n_ctx - o}")
    pool = known_token_ids(model)
    g = torch.Generator().manual_seed(args.seed)
    tokens = pool[torch.randint(len(pool), (args.batch, args.n_pos), generator=g)]
    if args.prepend_bos:
        tokens = torch.cat([torch.full((args.batch, 1), vocab.bos), tokens], 1)
    return tokens, (f"{args.batch} sequences of {args.n_pos} random trained tokens{' after BOS' if o else ''} "
                    f"(seed {args.seed})")


def cmd_circuits(args) -> int:
    import torch
    from minitx import circuits, plots, processing, stats
    from minitx.prompts import known_token_ids
    from minitx.report import text_table
    model, vocab = _load(args)
    cfg = model.cfg
    tokens, where = _circuit_prompts(args, model, vocab)  # every argument checked before the progress line
    if args.processed:
        model = processing.process(model)
    if args.copy_tokens < 1:
        raise ValueError(f"--copy-tokens {args.copy_tokens}: the size of the token set must be at least 1")
    if args.samples < 2:  # before the progress line, as every other argument
        raise ValueError(f"--samples {args.samples}: a random baseline needs at least 2 samples")
    known = known_token_ids(model)
    g = torch.Generator().manual_seed(args.seed)
    token_set = known[torch.randperm(len(known), generator=g)[:args.copy_tokens]]
    _progress(f"composition scores ({args.samples} random baseline samples), copying scores over {len(token_set)} "
              f"trained tokens, positional/token split on {where}")
    modes = ["Q", "K", "V"] if args.mode == "all" else [args.mode]
    composition = {m: circuits.all_composition_scores(model, m, n_samples=args.samples, seed=args.seed) for m in modes}
    copying = circuits.copying_scores(model, embedding=args.embedding, tokens=token_set)
    split = circuits.positional_token_split(model, tokens, exclude_bos=args.exclude_bos)
    weights = "processed weights (fold_ln, centring, fold_value_biases)" if args.processed else "the raw weights"
    for mode, result in composition.items():
        threshold = result.baseline_mean + 3 * result.baseline_std
        order = result.scores.flatten().argsort(descending=True)[:args.top]
        L, H = cfg.n_layer, cfg.n_head
        rows = [[f"{i // (H * L * H)}.{i // (L * H) % H} -> {i // H % L}.{i % H}", float(result.scores.flatten()[i]),
                 "yes" if bool(result.above_baseline.flatten()[i]) else "no"] for i in order.tolist()
                if float(result.scores.flatten()[i]) > 0]
        n_pairs = H * H * L * (L - 1) // 2
        say(f"{mode}-composition on {weights}: random baseline {result.baseline_mean:.4g} +- {result.baseline_std:.2g} "
            f"(std over {result.n_samples} random factor pairs); {int(result.above_baseline.sum())} of {n_pairs} "
            f"pairs above mean + 3 std = {threshold:.4g} (random weights would put about {0.00135 * n_pairs:.1f} "
            "there, if the random scores are near-Gaussian). Largest:")
        say(text_table(["earlier -> later head", "score", "above baseline"], rows))
        _save_figure(plots.composition_heatmap(result), args, f"composition-{mode}.png")
    say(f"per head: copying = sum(eig) / sum(|eig|) of E W_OV W_U ({args.embedding} embedding), diagonal argmax "
        f"share over {len(token_set)} tokens, QK self-preference (same score of E W_QK E^T); shares of the score "
        f"variance over keys on {where}{', keys after BOS' if args.exclude_bos else ''} (mean over prompts)")
    rows = [[f"{l}.{h}", float(copying.scores[l, h]), float(copying.argmax_fraction[l, h]),
             float(copying.qk_scores[l, h]), *(float(split.scores[l, h, g]) for g in range(3)), split.kind[l][h],
             float(split.same_in_every_prompt[l, h])] for l in range(cfg.n_layer) for h in range(cfg.n_head)]
    say(text_table(["head", "copying", "argmax", "QK self", "pos x pos", "token", "other", "kind", "same in all"],
                   rows))
    say("kind: positional / token-pair (layer 0) / indirect (later layers, through earlier heads and MLPs) when that "
        "share minus two standard errors over prompts is above 0.5, else mixed (no kind over fewer than "
        f"{stats.MIN_PROMPTS} prompts). same in all: the share of each prompt's score variation that the other "
        "prompts' mean scores explain (position alone, when the prompts share no token at a position, as random "
        "prompts do)")
    _save_figure(plots.plot_result(copying, title=f"copying ({args.embedding} embedding)"), args, "copying.png")
    _save_figure(plots.plot_result(split, title=f"share of the score variance over keys, on {where}"), args,
                 "split.png")
    return 0


def cmd_circuit(args) -> int:
    """Circuit discovery on a prompt pair (or --pairs): edge scores, the faithfulness curve, the chosen circuit."""
    from minitx import discovery, metrics, plots
    from minitx.report import text_table
    model, vocab = _load(args)
    ks = _circuit_sizes(args.ks)
    clean, corrupted, answer, wrong = _pair(args, model, vocab)
    _check_circuit_args(args, clean, corrupted)  # before any progress line, so an error stands alone
    metric = metrics.logit_diff_metric(answer, wrong, pos=args.pos)
    graph = discovery.edge_graph(model)
    _progress(f"{args.method} over the {graph.n_edges} edges ...")
    if args.method == "eap":
        scores = discovery.eap(model, clean, corrupted, metric)
    else:
        scores = discovery.eap_ig(model, clean, corrupted, metric, steps=args.steps, on=args.method.split("-")[-1])
    _progress(f"faithfulness of {len(ks)} circuit{'s' if len(ks) > 1 else ''} by exact edge patching "
              f"({args.ablation} ablation) ...")
    reference = corrupted if args.ablation == "mean" else None
    curve = discovery.faithfulness_curve(model, clean, scores, metric, [min(k, graph.n_edges) for k in ks],
                                         ablation=args.ablation, corrupted=corrupted, reference=reference)
    say(f"{_pair_name(args, vocab, answer, wrong)}: clean {scores.clean:+.3f}, corrupted {scores.corrupted:+.3f}")
    if args.ablation == "mean" and len(corrupted) == 1:
        say("note: the mean over one corrupted prompt is that prompt, so --ablation mean is resample here")
    if scores.clean <= scores.corrupted:
        say("note: the clean logit difference is not above the corrupted one, so these prompts do not show the "
            "model doing the task; F then measures a change the task does not explain")
    say(f"{scores.method} edge scores (estimated change of the logit difference when the edge alone reads the "
        f"corrupted run, whatever --ablation says; top {args.top} of {graph.n_edges} by |score|):")
    say(text_table(["edge", "score"], [[label, value] for label, value in scores.top(args.top)]))
    chosen = _report_curve(args, curve)
    fig = plots.circuit_graph(graph, scores.scores, curve.circuits[chosen],
                              f"circuit on {_pair_title(args)}: top {curve.ks[chosen]} by {scores.method}, "
                              f"F = {float(curve.scores[chosen]):.2f} ({args.ablation})")
    _save_figure(fig, args, "circuit.png")
    return 0


def _check_circuit_args(args, clean, corrupted) -> None:
    """--target a finite number; under resample, --pos at or after the first position where the
    prompts differ (before it every patched run is the clean run, so F would be 0/0)."""
    import math
    from minitx.engine import shared_prefix
    if not math.isfinite(args.target):
        raise ValueError(f"--target {args.target}: the faithfulness the chosen circuit must reach, a finite number "
                         "such as 0.8")
    first, pos = shared_prefix(clean, corrupted), args.pos % clean.shape[1]
    if args.ablation == "resample" and pos < first:
        raise ValueError(f"--pos {args.pos} reads position {pos}, before the prompts first differ (position {first}): "
                         f"the corruption cannot change the logit difference there; use --pos {first} or later "
                         "(default -1, the last)")


def _report_curve(args, curve) -> int:
    """Prints the faithfulness curve with intervals over prompts and the chosen circuit; returns its index: the
    smallest size whose whole interval lies above --target (over at least stats.MIN_PROMPTS prompts), else the
    largest size tried."""
    from minitx import stats
    from minitx.report import fmt_interval, text_table
    n = curve.per_prompt.shape[-1]
    say(f"faithfulness F = (m(C) - m(none)) / (m(all) - m(none)), every edge outside C patched ({args.ablation} "
        f"ablation{', mean over the corrupted prompts' if args.ablation == 'mean' else ''}): 1 = the circuit alone "
        "does the task; the complement patches C's edges instead. "
        + (f"[95% bootstrap interval over the {n} prompt pairs]" if n > 1 else "One prompt pair: no interval."))
    intervals = [curve.interval(i) for i in range(len(curve.ks))]

    def shown(iv) -> str:
        return fmt_interval(iv.estimate, iv.low, iv.high) if n > 1 else f"{float(iv.estimate):.3f}"

    rows = [[str(k), int(e), shown(iv), shown(curve.interval(i, complement=True))]
            for i, (k, e, iv) in enumerate(zip(curve.ks, curve.n_edges, intervals))]
    say(text_table(["top k", "edges after pruning", "F(circuit)", "F(complement)"], rows))
    verdicts = [stats.verdict(iv, args.target) for iv in intervals]
    chosen = next((i for i, v in enumerate(verdicts) if v == stats.ESTABLISHED), None)
    if chosen is None:
        reason = stats.too_few(n) or f"no interval lies wholly above {args.target}"
        say(f"no circuit of these sizes is shown to reach F > {args.target}: {reason}; the figure shows the largest")
        return len(curve.ks) - 1
    best, edges = intervals[chosen], curve.edges(chosen)
    listed = (", ".join(edges[:20]) or "no edges") + (f" and {len(edges) - 20} more (in the figure)"
                                                       if len(edges) > 20 else "")
    say(f"smallest of the sizes tried (--ks {args.ks}) whose F interval lies above {args.target}: top "
        f"{curve.ks[chosen]}, {len(edges)} edges, F = {fmt_interval(best.estimate, best.low, best.high)}: "
        f"{listed}")
    return chosen


def _circuit_sizes(text: str) -> list[int]:
    """--ks '5,10,20' -> [5, 10, 20]: circuit sizes in edges, each >= 1, increasing."""
    try:
        ks = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--ks {text!r}: give circuit sizes as comma-separated integers, e.g. 5,10,20") from None
    if not ks or min(ks) < 1 or ks != sorted(set(ks)):
        raise ValueError(f"--ks {text!r}: circuit sizes must be integers >= 1 in increasing order, e.g. 5,10,20")
    return ks


def cmd_view(args) -> int:
    from minitx import metrics, patching
    from minitx.discovery import eap
    from minitx.viewer import view
    pair = [args.clean, args.corrupted, args.answer, args.wrong]
    if any(x is not None for x in pair) and not all(x is not None for x in pair):
        raise ValueError("patching needs all of --clean, --corrupted, --answer and --wrong (or none of them)")
    if not args.prompt and args.clean is None:
        raise ValueError("give at least one --prompt (repeat it for several), or a --clean/--corrupted pair")
    if Path(args.out).expanduser().is_dir():
        raise IsADirectoryError(f"--out {args.out} is a folder; give a file name such as "
                                f"{Path(args.out) / 'view.html'}")
    model, vocab = _load(args)
    prompts, results, tokens_pair = list(args.prompt or []), [], None
    if args.clean is not None:
        clean, corrupted, answer, wrong = _pair(args, model, vocab)
        metric = metrics.logit_diff_metric(answer, wrong, pos=args.pos)
        _progress("activation patching resid_pre by position and z by head; EAP edge scores ...")
        results = [patching.activation_patching(model, clean, corrupted, metric, point, by=by)
                   for point, by in (("resid_pre", "pos"), ("z", "all"))] + [eap(model, clean, corrupted, metric)]
        prompts, tokens_pair = prompts or [args.clean, args.corrupted], (clean, corrupted)
    for prompt in prompts:
        _check_runs(model, vocab.tokens(prompt, prepend_bos=args.prepend_bos))
    page = view(model, prompts, prepend_bos=args.prepend_bos, model_name=args.model or DEFAULT_MODEL, vocab=vocab,
                results=results, pair=tokens_pair)
    out = page.save(Path(args.out).expanduser())
    say(f"view: {out.resolve()} ({out.stat().st_size / 1e3:.0f} kB; open it in a browser, no network needed)")
    return 0


def cmd_dla(args) -> int:
    from minitx import dla, plots
    from minitx.report import text_table
    model, vocab = _load(args)
    tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
    answer = _token(args, vocab, args.answer, "--answer")
    wrong = _token(args, vocab, args.wrong, "--wrong") if args.wrong is not None else None
    if answer == wrong:
        raise ValueError(f"--answer and --wrong are the same token ({answer}), so the logit difference is always 0; "
                         "--wrong is the competing token, or leave it out to attribute the answer's logit alone")
    _check_runs(model, tokens)
    _check_pos(args.pos, tokens.shape[1])
    result = dla.direct_logit_attribution(model, tokens, answer, wrong=wrong, pos=args.pos)
    what = f"logit {vocab.decode(answer)!r}" + (f" - logit {vocab.decode(wrong)!r}" if wrong is not None else "")
    order = result.scores.abs().argsort(descending=True)[:args.top].tolist()
    say(f"direct logit attribution of {what} at position {args.pos % tokens.shape[1]}: {result.clean:+.3f} = "
        f"the components below + the rest + the final LN bias term {float(result.bias_term.mean()):+.3f}")
    say("each component's write into the final residual, centred and divided by the final LN scale of this run, "
        "dotted with the unembedding direction; direct effects only (a head acting through later layers can "
        "show 0 here)")
    say(text_table(["component", "contribution", "share"],
                   [[result.labels[i], float(result.scores[i]), float(result.scores[i]) / result.clean
                     if result.clean else float("nan")] for i in order]))
    fig = plots.dla_bars(result, f"direct logit attribution of {what} on {args.prompt!r}", top=args.top)
    _save_figure(fig, args, "dla.png")
    return 0


def cmd_role_swap(args) -> int:
    from minitx import heads, plots
    from minitx.report import text_table
    model, vocab = _load(args)
    a, b = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos), vocab.tokens(args.swapped,
                                                                                 prepend_bos=args.prepend_bos)
    _check_runs(model, a, b)
    swapped = (a[0] != b[0]).nonzero()[:, 0].tolist() if a.shape == b.shape else None
    if swapped is None or len(swapped) != 2:
        differ = "their lengths" if swapped is None else f"positions {swapped}" if swapped else "no position"
        raise ValueError(f"the two prompts must have the same number of tokens and differ at exactly two positions "
                         f"(the swapped words); they differ at {differ}")
    _warn_blank(args, model, vocab, _cat_tokens(a, b), "the prompts")
    result = heads.role_swap(model, a, b, tuple(swapped), top=model.cfg.n_layer * model.cfg.n_head)
    labels = vocab.str_tokens(a[0])
    say(f"role swap of {labels[swapped[0]]!r} (position {swapped[0]}) and {labels[swapped[1]]!r} (position "
        f"{swapped[1]}), queries {result.query_positions[0]}..{result.query_positions[-1]} of this one pair")
    say("TV_pos: pattern change at the same positions; TV_tok: after following the swapped tokens; R = TV_tok - "
        "TV_pos: > 0 the head follows the role (slot), < 0 the word. One pair cannot tell a role from a position "
        "(the words keep their positions); heads sorted by |R|")
    order = sorted(((l, h) for l, h, _ in result.most_changed), key=lambda lh: -abs(float(result.scores[lh])))
    say(text_table(["head", "TV_pos", "TV_tok", "R"],
                   [[f"{l}.{h}", float(result.tv_pos[l, h]), float(result.tv_tok[l, h]), float(result.scores[l, h])]
                    for l, h in order]))
    _save_figure(plots.role_swap_figure(result, f"role swap: {args.prompt!r} vs {args.swapped!r}"), args,
                 "role-swap.png")
    return 0


def _cat_tokens(*tokens):
    import torch
    return torch.cat(tokens, 1)


def cmd_attribution(args) -> int:
    from minitx import attribution, metrics, plots
    from minitx.report import text_table
    model, vocab = _load(args)
    cfg = model.cfg
    clean, corrupted, answer, wrong = _pair(args, model, vocab)
    metric = metrics.logit_diff_metric(answer, wrong, pos=args.pos)
    _progress(f"attribution patching (AtP) of {args.point}: 2 forwards and 1 backward ...")
    result = attribution.attribution_patching(model, clean, corrupted, metric, points=args.point)
    estimate = result.normalized(args.point)  # [layer, head] or [layer]
    say(f"{_pair_name(args, vocab, answer, wrong)}: clean {result.clean:+.3f}, "
        f"corrupted {result.corrupted:+.3f}")
    say(f"AtP estimate of denoising {args.point}, normalised like patch's score (1 = restores the clean difference): "
        "a first-order estimate, checked against `minitx patch` before it is trusted (saturated attention "
        "breaks it; see attribution.atp_star_qk_fix)")
    title = f"AtP estimate, denoising {args.point} on {_pair_title(args)}"
    if estimate.dim() == 2:
        say(text_table(["layer", *(f"head {h}" for h in range(cfg.n_head))],
                       [[str(l), *map(float, estimate[l])] for l in range(cfg.n_layer)]))
        fig = plots.layer_head_grid(estimate, title, limits=(-1.0, 1.0),
                                    colorbar_label="estimated score (1 clean, 0 corrupted)")
    else:
        say(text_table(["layer", "estimate"], [[str(l), float(estimate[l])] for l in range(cfg.n_layer)]))
        fig = plots.patching_heatmap(estimate[:, None], ["all positions"], title,
                                     colorbar_label="estimated score (1 clean, 0 corrupted)")
    _save_figure(fig, args, "attribution.png")
    return 0


def cmd_demo(args) -> int:
    from minitx.demo import check_demo_args, check_report_folder, fit_tour, run_demo
    check_demo_args(args.n, args.batch, args.n_pairs, flags=True)  # before the first line is printed
    model, vocab = _load(args)
    fit_tour(model, vocab, args.n, args.prepend_bos)
    out = Path(args.out).expanduser().resolve()
    check_report_folder(out)
    if args.html is not None and Path(args.html).expanduser().is_dir():
        raise IsADirectoryError(f"--html {args.html} is a folder; give a file name such as "
                                f"{Path(args.html) / 'view.html'}")
    if args.html is not None and not Path(args.html).expanduser().resolve().parent.is_dir():
        raise FileNotFoundError(f"--html {args.html}: the folder {Path(args.html).expanduser().resolve().parent} "
                                "does not exist")
    pairs = None
    if args.pairs is not None:
        from minitx import datasets
        if not Path(args.pairs).expanduser().is_file():
            raise FileNotFoundError(f"--pairs {args.pairs}: no such file (JSONL rows with clean, corrupted, answer, "
                                    "wrong)")
        pairs = (datasets.load_pairs(args.pairs, vocab.tokenizer, args.prepend_bos).pairs if vocab.is_text  # one length
                 else datasets.read_jsonl(Path(args.pairs).expanduser()))
    say(f"writing the demo report into {out}")
    result = run_demo(model, out, n=args.n, batch=args.batch, seed=args.seed, prepend_bos=args.prepend_bos,
                      log=_progress, vocab=vocab, n_pairs=args.n_pairs, pairs=pairs)
    for line in result["summary"]:
        say(f"- {line}")
    say(f"report: {out / 'report.md'} ({len(result['files']) - 1} figures)")
    if args.html is not None:
        from minitx.viewer import demo_view
        _progress("writing the interactive page (attention, logit lens, patching, circuit) ...")
        page = demo_view(model, vocab, prepend_bos=args.prepend_bos, model_name=args.model or DEFAULT_MODEL)
        say(f"view: {page.save(Path(args.html).expanduser()).resolve()} (open it in a browser, no network needed)")
    return 0


# ---------------------------------------------------------------------------------------------
# Arguments: one function per command. Every option has help text; the formatter adds its default.

def _seed(text: str) -> int:
    from minitx.checks import check_seed
    try:
        value = int(text)
        check_seed(value)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: an int from 0 to 2**64-1") from None
    return value


def _count(text: str) -> int:
    """An argparse type: an int >= 1 (a --top of 0 or -3 would list nothing, or all but the last 3)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: an int >= 1")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid tolerance {text!r}: a finite number > 0, e.g. 1e-4")
    return value


def _prompt_args(p, *names: str, helps: dict | None = None, optional: bool = False) -> None:
    """Positional prompt arguments, each also accepted as --name (the older spelling)."""
    for name in names:
        text = (helps or {}).get(name, PROMPT_HELP)
        p.add_argument(name, nargs="?", default=None, help=f"{text} (or --{name})")
        p.add_argument(f"--{name}", dest=f"{name}_flag", default=None, metavar=name.upper(),
                       help=f"the same as the positional {name}")
    p.set_defaults(_prompts=[(name, not optional) for name in names], _parser=p)


def _model_args(p) -> None:
    """--model and --device, for every command that loads a model (_load reads both)."""
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N or mps")


def _common(p, out_default: str | None = None) -> None:
    _model_args(p)
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True, help=BOS_HELP)
    if out_default is not None:
        p.add_argument("--out", default=None, help=f"PNG to write, or a folder to write it into (default: "
                                                   f"{out_default} in the current directory)")


def args_download(p) -> None:
    p.add_argument("name", help="hub id, e.g. gpt2, gpt2-medium, distilgpt2, openai-community/gpt2")
    p.add_argument("--revision", default="main", help="branch, tag or commit of the hub repository")


def args_verify(p) -> None:
    p.add_argument("model", help="hub id, checkpoint directory or .safetensors file")
    p.add_argument("--tolerance", type=_tolerance, default=1e-4,
                   help="largest allowed difference from transformers, a finite number > 0")
    p.add_argument("--source", default=None, help="for a processed model (minitx.processing): the raw checkpoint it "
                                                  "came from; each row then checks one invariant of the processing "
                                                  "against it (default: compare with transformers)")


def args_generate(p) -> None:
    _prompt_args(p, "prompt")
    _model_args(p)
    p.add_argument("--ignore-eos", action="store_true", help="keep going after <|endoftext|> (default: stop there)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="tokens to add after the prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens (default: all)")
    p.add_argument("--seed", type=_seed, default=None, help="seed of the sampling (default: none, not reproducible)")
    p.add_argument("--prepend-bos", action="store_true", help="start the prompt with <|endoftext|> (default: no BOS)")


def args_attention(p) -> None:
    _common(p, "attention-layerL.png, or attention-L.H.png with --head")
    _prompt_args(p, "prompt")
    p.add_argument("--layer", type=int, required=True, help="the layer whose heads to show (required)")
    p.add_argument("--head", type=int, default=None, help="one head (default: every head of the layer)")


def args_heads(p) -> None:
    _common(p, "heads.png")
    _prompt_args(p, "prompt", helps={"prompt": PROMPT_HELP + "; default: repeated random tokens"}, optional=True)
    p.add_argument("--n", type=int, default=20, help="random tokens per copy of r")
    p.add_argument("--batch", type=int, default=8, help="random sequences averaged over")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random tokens")
    p.add_argument("--max-offset", type=int, default=4, help="largest offset k in the offset argmax")


PAIR_HELP = dict(clean="the prompt whose behaviour is measured", corrupted="same token count, with the information "
                 "removed (e.g. a name swapped)")


def _pair_args(p) -> None:
    _prompt_args(p, "clean", "corrupted", helps=PAIR_HELP, optional=True)
    p.add_argument("--answer", default=None, help=f"the clean answer token (required unless --pairs; {TOKEN_HELP})")
    p.add_argument("--wrong", default=None, help="the competing token, e.g. the corrupted answer (required unless "
                                                 "--pairs)")
    p.add_argument("--pairs", default=None, metavar="FILE",
                   help="JSONL prompt pairs (clean, corrupted, answer, wrong per row; same token length) instead of "
                        "one pair; see minitx.datasets (default: one pair from the arguments)")
    p.add_argument("--pos", type=int, default=-1, help="position the logit difference is read at")


def args_patch(p) -> None:
    from minitx.engine import DIRECTIONS, HEAD_LIKE, RESID_LIKE
    _common(p, "patch.png")
    _pair_args(p)
    p.add_argument("--point", default="resid_pre", choices=RESID_LIKE + HEAD_LIKE, help="activation to patch")
    p.add_argument("--direction", default="denoising", choices=DIRECTIONS,
                   help="denoising: run corrupted, patch in clean; noising: run clean, patch in corrupted")
    p.add_argument("--by", default=None, choices=("pos", "all"),
                   help="per position, or all positions at once (default: pos for residual points, all for heads)")


def args_path_patch(p) -> None:
    _common(p, "path-patch.png")
    _pair_args(p)
    p.add_argument("--receiver", required=True, nargs="+",
                   help="one or more of logits, q:L.H, k:L.H, v:L.H (e.g. k:1.0), mlp_in:L, patched together "
                        "(required)")
    p.add_argument("--sender", default=None, help="one sender L.H, mlp:L or embed: its path to each receiver "
                                                  "(default: every head, one at a time, as a [layer, head] map)")
    p.add_argument("--freeze-mlps", action="store_true",
                   help="MLPs keep their clean values, so a path to the logits is direct only (default: MLPs "
                        "recomputed, so 'direct' includes paths through them)")


def args_lens(p) -> None:
    _common(p, "lens.png")
    _prompt_args(p, "prompt")
    p.add_argument("--target", default=None, help=f"token whose probability and rank to show ({TOKEN_HELP})")
    p.add_argument("--pos", type=int, default=-1, help="position the table shows; the figure shows all")
    p.add_argument("--incl-mid", action="store_true", help="also read each block's resid_mid (between attention "
                                                           "and MLP; logit lens only) (default: resid_pre and the "
                                                           "final stream only)")
    p.add_argument("--lens", choices=["logit", "tuned", "jacobian"], default="logit",
                   help="which lens reads the streams: the logit lens, or the tuned / Jacobian lens shipped in the "
                        "model's lenses/ folder (docs/methods.md §13)")
    p.add_argument("--lens-path", default=None, help="a tuned-lens folder or a Jacobian-lens .pt file for --lens "
                                                      "(default: <model>/lenses/tuned or <model>/lenses/jacobian.pt)")
    p.add_argument("--compare", action="store_true", help="instead of the table figure, draw the three lenses' KL "
                                                          "to the final distribution, top-1 agreement and p(--target) "
                                                          "per stream on this prompt")


def args_circuits(p) -> None:
    _common(p, "composition-K.png, copying.png and split.png (--out: a folder)")
    _prompt_args(p, "prompt", helps={"prompt": PROMPT_HELP + " for the positional/token split; default: random "
                                     "sequences of trained tokens"}, optional=True)
    p.add_argument("--mode", choices=["Q", "K", "V", "all"], default="K", help="which composition to score")
    p.add_argument("--embedding", choices=["raw", "normalised", "processed"], default="normalised",
                   help="how the copying scores read W_E and W_U (docs/methods.md §10.1)")
    p.add_argument("--processed", action="store_true", help="score the processed weights (minitx.processing.process, "
                                                            "as TransformerLens does) (default: the weights as stored)")
    p.add_argument("--samples", type=int, default=200, help="random factor pairs in the composition baseline")
    p.add_argument("--top", type=_count, default=10, help="composition pairs listed")
    p.add_argument("--copy-tokens", type=int, default=2000, help="size of the token set of the argmax test (a seeded "
                                                                 "sample of the trained tokens when there are more)")
    p.add_argument("--batch", type=int, default=16, help="random prompts of the positional/token split")
    p.add_argument("--n-pos", type=int, default=24, help="tokens per random prompt (BOS not counted)")
    p.add_argument("--exclude-bos", action="store_true", help="leave key 0 out of the score variation (an attention "
                                                              "sink's outlier score)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random prompts, token set and baseline")


def args_dla(p) -> None:
    _common(p, "dla.png")
    _prompt_args(p, "prompt")
    p.add_argument("--answer", required=True, help=f"the token whose logit is split into components (required; "
                                                   f"{TOKEN_HELP})")
    p.add_argument("--wrong", default=None, help="a competing token: attribute logit[answer] - logit[wrong]")
    p.add_argument("--pos", type=int, default=-1, help="position whose logits are read")
    p.add_argument("--top", type=_count, default=20, help="how many components (largest first) the table and figure show")


def args_role_swap(p) -> None:
    _common(p, "role-swap.png")
    _prompt_args(p, "prompt", "swapped", helps={"prompt": PROMPT_HELP, "swapped": "the same prompt with two words "
                                                "swapped, e.g. 'The mouse chased the cat'"})


def args_attribution(p) -> None:
    from minitx.patching import HEAD_LIKE, RESID_LIKE
    _common(p, "attribution.png")
    _pair_args(p)
    p.add_argument("--point", default="z", choices=[x for x in HEAD_LIKE + RESID_LIKE if x != "pattern"],
                   help="activation whose patching effect is estimated")


def args_demo(p) -> None:
    from minitx.stats import MIN_PROMPTS  # a verdict's least number of prompts (the parser already loads torch)
    _model_args(p)
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True, help=BOS_HELP)
    p.add_argument("--out", default="minitx-demo", help="folder for report.md and the PNGs; a previous demo's "
                                                        "folder is replaced, any other non-empty folder refused")
    p.add_argument("--n", type=int, default=12, help="random tokens per copy, fixture tour")
    p.add_argument("--batch", type=int, default=50, help="random sequences, fixture tour (intervals are over these; "
                                                         f"verdicts need at least {MIN_PROMPTS} sequences)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random tokens")
    p.add_argument("--n-pairs", type=int, default=None,
                   help="prompt pairs per dataset, GPT-2 tour (default: 64, or 8 for a model over 30M parameters; "
                        f"at least {MIN_PROMPTS}; more pairs = narrower intervals, slower)")
    p.add_argument("--pairs", default=None, metavar="FILE",
                   help="your own JSONL pairs for the patching sections, GPT-2 tour (default: the built-in dataset)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write one self-contained HTML page to FILE (minitx view): attention, logit lens, and "
                        "for a text model patching and circuit scores on the role-swap story")


def args_circuit(p) -> None:
    from minitx.engine import ABLATIONS
    from minitx.stats import MIN_PROMPTS
    _common(p, "circuit.png")
    _pair_args(p)
    p.add_argument("--method", default="eap-ig-activations", choices=("eap", "eap-ig-inputs", "eap-ig-activations"),
                   help="edge scores: EAP (2 forwards, 1 backward) or EAP-IG on the input embeddings or on each "
                        "reader's input (more exact, slower)")
    p.add_argument("--steps", type=_count, default=5, help="EAP-IG: points on each integration path")
    p.add_argument("--ablation", default="resample", choices=ABLATIONS,
                   help="what a patched edge carries: the corrupted run's value, the mean over the corrupted "
                        "prompts (position by position), or zero")
    p.add_argument("--ks", default="5,10,20,50", help="circuit sizes (top-k edges by |score|) for the curve")
    p.add_argument("--target", type=float, default=0.8,
                   help="the faithfulness the chosen circuit must be shown to exceed: the smallest size whose 95%% "
                        f"interval over prompts lies above it (needs at least {MIN_PROMPTS} pairs, --pairs)")
    p.add_argument("--top", type=_count, default=15, help="edges listed")


def args_view(p) -> None:
    _common(p)
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt to show (repeat for several; default with a pair: the clean and corrupted prompts)")
    for name, text in (("clean", "the clean prompt of a patching pair"), ("corrupted", "its corrupted twin, same "
                       "length"), ("answer", "the clean answer token"), ("wrong", "the competing token")):
        p.add_argument(f"--{name}", default=None, help=f"{text} (optional; with all four, patching is shown)")
    p.add_argument("--pos", type=int, default=-1, help="position the logit difference is read at")
    p.add_argument("--out", default="minitx-view.html", help="the HTML file to write")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str | None
    add_arguments: Callable
    run: Callable


DEMO_DESCRIPTION = (
    "Writes report.md and PNGs into --out and prints a summary. With the default English model "
    f"({DEFAULT_MODEL}) or any GPT-2-vocabulary model (--model gpt2): the logit lens on 'The cat sat on the' and "
    "over a dataset, head roles, which heads follow a role, a position or a word (one prompt family per pair), and "
    "activation and path patching over --n-pairs role-swap pairs testing 'head L.H carries the subject-object "
    "relation', each verdict from 95% bootstrap intervals. With the induction fixture (--model "
    "weights/induction-2l): head roles, noising and path patching of the layer-0 head into the induction head over "
    "--batch random sequences, and the logit lens.")

COMMANDS = [
    Command("download", "fetch a GPT-2 checkpoint into the Hugging Face cache ahead of time", None,
            args_download, cmd_download),
    Command("verify", "compare every activation point with HF transformers (needs transformers)", None,
            args_verify, cmd_verify),
    Command("generate", "continue a prompt (greedy unless --temperature > 0)", None, args_generate, cmd_generate),
    Command("attention", "one layer's attention patterns on a prompt (a table and a PNG)",
            "Attention patterns of one layer (or one head): for each query, the key it attends to most, and a "
            "heatmap with the tokens on both axes.", args_attention, cmd_attention),
    Command("heads", "score every head: previous-token, offset, induction, duplicate, BOS",
            "Head-role scores as a [layer, head] table and figure (minitx.heads). Without a prompt, every score is "
            "computed on repeated random tokens [BOS] + r + r, r drawn from the tokens the model trained (those "
            "with non-blank embeddings); with one, all but induction (always on r + r) use the prompt.",
            args_heads, cmd_heads),
    Command("patch", "activation patching: which layer/position/head restores the answer",
            "Activation patching (minitx.patching.activation_patching) with the logit difference answer - wrong as "
            "metric. Score = (patched - corrupted) / (clean - corrupted): 1 = clean behaviour, 0 = corrupted, in "
            "both directions.", args_patch, cmd_patch),
    Command("path-patch", "path patching: each head's effect through the receivers only",
            "Path patching (Wang et al. 2022, App. B; minitx.path_patching) of every head (or one --sender) into "
            "the receivers. score 1 = undamaged, 0 = as on the corrupted prompt; the table also shows removed = "
            "1 - score and the relative change of the logit difference.", args_path_patch, cmd_path_patch),
    Command("lens", "the logit lens: each layer's prediction, as a table and the classic figure",
            "Logit lens (minitx.lens.logit_lens): every resid_pre (and resid_mid with --incl-mid) and the final "
            "residual read through ln_final and the unembedding.", args_lens, cmd_lens),
    Command("circuits", "weight circuits: composition against a random baseline, copying, positional vs token heads",
            "Circuits read from the weights (minitx.circuits, docs/methods.md §10): Q/K/V-composition of every earlier "
            "head into every later one against the scores of random matrices of the same shapes, copying scores of "
            "each head's full OV circuit, and the exact split of each head's attention scores into position x "
            "position and token-carrying terms on prompts.", args_circuits, cmd_circuits),
    Command("dla", "direct logit attribution: each head's and MLP's direct share of a logit",
            "Direct logit attribution (minitx.dla): the final residual at one position split into the embeddings, "
            "every head, every attention bias and MLP, each read through the final layer norm (its scale frozen at "
            "this run's) and the unembedding; the parts sum to the logit.", args_dla, cmd_dla),
    Command("role-swap", "how each head's attention changes when two words swap roles",
            "The role-swap test (minitx.heads.role_swap) on one minimal pair: TV_pos, TV_tok and R = TV_tok - "
            "TV_pos for every head.", args_role_swap, cmd_role_swap),
    Command("attribution", "attribution patching (AtP): a gradient estimate of every head's patching score",
            "Attribution patching (minitx.attribution.attribution_patching): 2 forwards and 1 backward estimate "
            "what `minitx patch` measures, normalised the same way.", args_attribution, cmd_attribution),
    Command("demo", "a first tour, offline: report.md and figures from the library's own numbers", DEMO_DESCRIPTION,
            args_demo, cmd_demo),
    Command("circuit", "circuit discovery: score every edge (EAP / EAP-IG), faithfulness of the top-k circuits",
            "Circuit discovery by edge patching (minitx.discovery, docs/methods.md §12): every edge between the "
            "input, heads, MLPs and the logits is scored (EAP or EAP-IG), the top-k edges (pruned to input -> "
            "logits paths) form circuits, and each circuit's faithfulness F and its complement's are measured by "
            "exact edge patching under the named ablation.", args_circuit, cmd_circuit),
    Command("view", "one self-contained HTML page: attention, logit lens, patching (offline, interactive)",
            "Writes one .html file (minitx.view) that opens in any browser without network: every layer x head "
            "attention pattern with a token view (hover a token), the logit-lens table (top-k on hover) and, with "
            "--clean/--corrupted/--answer/--wrong, activation patching of resid_pre by position and z by head and "
            "the circuit graph of EAP edge scores (minitx.discovery.eap).",
            args_view, cmd_view),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and --help points the way), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help unless the text already says its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "default" not in text and "required" not in text
                and not text.startswith("the same as") and action.default is not argparse.SUPPRESS
                and not action.required and not isinstance(action.default, bool)):
            text += " (default: none)" if action.default is None else " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minitx", description="A small GPT-2 you can see inside.")
    parser.add_argument("--version", action="version", version=f"minitx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description,
                           formatter_class=_HelpFormatter)
        command.add_arguments(p)
        p.set_defaults(func=command.run, _parser=p)
    return parser


def _merge_prompts(args) -> None:
    """Each prompt given positionally or as --name (not both, differently); a required one must be given."""
    for name, required in getattr(args, "_prompts", []):
        positional, flag = getattr(args, name), getattr(args, f"{name}_flag")
        if positional is not None and flag is not None and positional != flag:
            args._parser.error(f"{name} given twice ({positional!r} and --{name} {flag!r}); give it once")
        value = positional if positional is not None else flag
        if value is None and required:
            args._parser.error(f"the following arguments are required: {name}")
        setattr(args, name, value)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("minitx: interrupted", file=sys.stderr)
        return 130


def _main(argv) -> int:
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the command's own parser, so the error names it and its --help
            getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
        _merge_prompts(args)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed): return it, for in-process calls
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        with warnings.catch_warnings():  # a library warning is one line too, not a file:line plus a line of source
            warnings.showwarning = lambda message, *_, **__: _warn(args, message)
            return args.func(args)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 -- no traceback ever reaches a command-line user
        if os.environ.get("MINITX_DEBUG"):
            raise
        print(f"minitx {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """An exception as one line: our own messages as they are, anything else with its type and a hint."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    first = str(message).strip().splitlines()[0] if str(message).strip() else ""
    expected = (ValueError, KeyError, TypeError, OSError, FloatingPointError, MemoryError, ImportError)
    if isinstance(error, expected) and first:
        return first
    return f"{type(error).__name__}: {first or 'no message'} (set MINITX_DEBUG=1 to see where)"


if __name__ == "__main__":
    sys.exit(main())

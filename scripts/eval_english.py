"""Held-out evaluation of `weights/english-6l` (or any GPT-2-vocabulary checkpoint) on make_corpus's tasks.

Every prompt comes from combinations held out of training (make_corpus.eval_sets), each with and
without a leading <|endoftext|> and after 0..3 filler sentences. Logits are the loaded checkpoint's
own full-vocabulary logits (50,257 entries) at the last prompt position; top-1 means the argmax
over the whole vocabulary equals the answer token.

    python scripts/eval_english.py weights/english-6l [--json out.json]

Reports, per task: top-1 overall, by <|endoftext|> and by preamble length; for "fixed", the logit
lens probability of the answer at each readout (resid_pre and resid_mid of each layer, then the
final residual; LN_f on each state's own statistics, then W_U); for "role", twin accuracy (a prompt AND its role-swapped
twin both right), accuracy per follow-up form and story voice, and position checks: how often the
top-1 is the token at absolute position 1 when that is not the answer (the old shortcut), and how
often a prompt's answer is the same under all of its preamble/<|endoftext|> variants.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_corpus  # noqa: E402
import minitx  # noqa: E402
from minitx.heads import attention_patterns, duplicate_token_scores, previous_token_scores  # noqa: E402
from minitx.lens import logit_lens  # noqa: E402
from minitx.tokenizer import Tokenizer  # noqa: E402


@torch.no_grad()
def last_position_readout(model: minitx.Transformer, items: list[dict], lens: bool = False, chunk: int = 256):
    """-> (top-1 ids [n], answer ids [n], answer probs per lens readout [n, 2*layer+1] or None, pos-1 ids [n]).

    Prompts are left-padded with a mask (positions count real tokens only, so each row sees what it
    sees alone); only the last position is unembedded."""
    tok = Tokenizer.default()
    top, answers, probs, first = [], [], [], []
    L = model.cfg.n_layer
    names = [f"blocks.{l}.hook_resid_{w}" for l in range(L) for w in ("pre", "mid")]
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        rows = [([tok.bos_token_id] if it["bos"] else []) + tok.encode(it["prompt"]) for it in part]
        n = max(map(len, rows))
        tokens = torch.full((len(rows), n), tok.eos_token_id, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for b, r in enumerate(rows):
            tokens[b, n - len(r):], mask[b, n - len(r):] = torch.tensor(r), 1
        ans = torch.tensor([tok.to_single_token(it["answer"]) for it in part])
        if lens:
            final, cache = model.run_with_cache(tokens, mask, names_filter=names, stop_at_layer=L)
            states = torch.stack([cache[nm][:, -1] for nm in names] + [final[:, -1]])  # [2*layer+1, batch, d_model]
            p = model.unembed(states).softmax(-1)  # [layer+1, batch, d_vocab]
            probs.append(p[:, torch.arange(len(part)), ans].T)
            logits = model.unembed(final[:, -1])
        else:
            logits = model.unembed(model(tokens, mask, stop_at_layer=L)[:, -1])  # [batch, d_vocab]
        top.append(logits.argmax(-1))
        answers.append(ans)
        first.append(torch.tensor([r[1] if len(r) > 1 else -1 for r in rows]))
    return (torch.cat(top), torch.cat(answers), torch.cat(probs) if lens else None, torch.cat(first))


def _by(items, correct, key) -> dict:
    groups = defaultdict(list)
    for it, c in zip(items, correct.tolist()):
        groups[str(it[key])].append(c)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}


@torch.no_grad()
def head_scores(model: minitx.Transformer, n: int = 8, batch: int = 32, seed: int = 0) -> dict:
    """Induction, previous-token and duplicate-token scores [layer][head] on [BOS] + r + r, r = n distinct
    corpus words (random GPT-2 ids would have blank embeddings here). Induction: mean_i A[n+i, i+1]
    (minitx.heads.induction_scores's index set, with corpus words instead of random ids)."""
    tok = Tokenizer.default()
    ids = torch.tensor([tok.to_single_token(" " + w) for w in make_corpus.REPEAT_WORDS])
    generator = torch.Generator().manual_seed(seed)
    halves = torch.stack([ids[torch.randperm(len(ids), generator=generator)[:n]] for _ in range(batch)])
    tokens = torch.cat([torch.full((batch, 1), tok.bos_token_id), halves, halves], 1)
    patterns = attention_patterns(model, tokens)  # [layer, batch, head, q_pos, k_pos]
    i = torch.arange(1, n + 1)
    scores = {"induction": patterns[..., n + i, i + 1].mean((1, 3)),
              "previous_token": previous_token_scores(model, tokens),
              "duplicate_token": duplicate_token_scores(model, tokens, exclude_bos=True)}
    return {k: [[round(x, 3) for x in row] for row in v.tolist()] for k, v in scores.items()}


def evaluate(model: minitx.Transformer, sets: dict | None = None) -> dict:
    sets = sets or make_corpus.eval_sets()
    tok = Tokenizer.default()
    out = {}
    for task, items in sets.items():
        top, ans, probs, pos1 = last_position_readout(model, items, lens=task == "fixed")
        correct = top == ans
        res = {"n": len(items), "top1": round(correct.float().mean().item(), 4), "by_bos": _by(items, correct, "bos"),
               "by_preamble": _by(items, correct, "preamble")}
        if task == "fixed":
            labels = [f"{l}_{w}" for l in range(model.cfg.n_layer) for w in ("pre", "mid")] + ["final"]
            res["lens_mean_prob"] = dict(zip(labels, [round(x, 4) for x in probs.mean(0).tolist()]))
            res["lens_frac_over_half"] = dict(zip(labels, [round(x, 4) for x in (probs > 0.5).float().mean(0).tolist()]))
        if task == "role":
            res["by_form"] = {make_corpus.ROLE_FORMS[int(k)][0]: v for k, v in _by(items, correct, "form").items()}
            res["by_passive_story"] = _by(items, correct, "passive")
            pairs = defaultdict(list)
            for it, c in zip(items, correct.tolist()):
                pairs[(it["twin"], it["bos"], it["preamble"])].append(c)
            res["twin_both_correct"] = round(sum(all(v) for v in pairs.values()) / len(pairs), 4)
            not_answer = pos1 != ans
            res["top1_is_abs_pos1_token_when_wrong_answer"] = round(
                ((top == pos1) & not_answer).float().sum().item() / max(1, int(not_answer.sum())), 4)
            same = defaultdict(set)
            for it, t in zip(items, top.tolist()):
                same[(it["twin"], it["swap"])].add(t)
            res["same_answer_across_preamble_and_bos"] = round(sum(len(s) == 1 for s in same.values()) / len(same), 4)
        if task == "repeat":
            res["by_k"] = _by(items, correct, "k")
        out[task] = res
    # The demo prompt, through the logit lens.
    tokens = tok.to_tokens("The cat sat on the", prepend_bos=False)
    result = logit_lens(model, tokens, targets=torch.tensor([[tok.to_single_token(" mat")]]),
                                    positions=[-1])
    out["demo_lens_p_mat"] = [round(x, 4) for x in result.target_probs[:, 0, 0].tolist()]
    out["head_scores"] = head_scores(model)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="weights/english-6l")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    metrics = evaluate(minitx.load(args.model))
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return metrics


if __name__ == "__main__":
    main()

"""Train `weights/english-6l`: a 6-layer GPT-2 (d_model 128, 4 heads, 128 positions, tied embeddings,
the full 50,257-token GPT-2 vocabulary) on the synthetic corpus of scripts/make_corpus.py.

Only the corpus's few hundred vocabulary rows are trained; every other row of W_E stays exactly zero.
With tied embeddings and no unembedding bias each unused logit is then exactly 0, so the exact
full-vocabulary cross-entropy costs no more than the small one:

    log Z = logaddexp(logsumexp(logits over used ids), log(number of unused ids))

Training keeps W_E as the full [50257, d] parameter (frozen, for export) and trains a small
[n_used, d] table instead; the blocks, W_pos and ln_final are minitx's own (the model is run with
`start_at_layer=0, stop_at_layer=n_layer` on the table's embeddings). On saving, the table is
scattered into W_E and the model is written in float16 with `minitx.save_pretrained`.

    python scripts/train_english.py --minutes 30 --out weights/english-6l     # the shipped model
    python scripts/train_english.py --smoke --out /tmp/english-smoke          # a few steps, seconds
    python scripts/train_english.py --steps 8000 --out /tmp/english-6l        # step budget: exactly repeatable

With --minutes the learning-rate schedule and the repeats-first data mixture follow elapsed wall-clock
time, so the number of steps (and which step gets which rate) depends on the machine's speed.

A loss line every --log-every steps; every --probe-every steps a held-out probe (top-1 on each
task of make_corpus.eval_sets, first few items); the checkpoint is saved every --save-minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_corpus  # noqa: E402
import minitx  # noqa: E402
from minitx.tokenizer import Tokenizer  # noqa: E402


def model_config(smoke: bool = False, n_layer: int = 6) -> minitx.Config:
    if smoke:
        return minitx.Config(n_layer=1, n_head=2, n_embd=32, n_positions=32, vocab_size=50257)
    return minitx.Config(n_layer=n_layer, n_head=4, n_embd=128, n_positions=128, vocab_size=50257)


class UsedVocab:
    """The ids the corpus uses: full id <-> row of the small table, and the count of the rest."""

    def __init__(self, ids, vocab_size: int):
        self.ids = torch.as_tensor(sorted(ids), dtype=torch.long)  # [n_used]
        self.local = torch.full((vocab_size,), -1, dtype=torch.long)
        self.local[self.ids] = torch.arange(len(self.ids))
        self.n_unused = vocab_size - len(self.ids)

    def to_local(self, tokens: Tensor) -> Tensor:
        local = self.local[tokens]
        if bool((local < 0).any()):
            raise ValueError("a token outside the corpus vocabulary: its embedding row is not trained")
        return local


def exact_full_vocab_loss(model: minitx.Transformer, table: Tensor, vocab: UsedVocab, tokens: Tensor,
                          reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy over the FULL vocabulary, exactly, computed from the used rows only.

    tokens: [batch, pos] full GPT-2 ids; table: [n_used, d_model] (the used rows of W_E; every
    other row must be zero). Returns the mean over the batch's batch*(pos-1) predictions (or them all)."""
    local = vocab.to_local(tokens)
    x, target = local[:, :-1], local[:, 1:]  # [batch, pos-1]
    resid = table[x] + model.W_pos[: x.shape[1]]  # [batch, pos-1, d_model]
    resid = model(resid, start_at_layer=0, stop_at_layer=model.cfg.n_layer)
    ln = model.ln_final
    normalized = F.layer_norm(resid, resid.shape[-1:], ln.w, ln.b, ln.eps)
    logits = normalized @ table.T  # [batch, pos-1, n_used]; every unused logit is exactly 0
    log_z = torch.logaddexp(logits.logsumexp(-1), torch.tensor(math.log(vocab.n_unused)))
    loss = log_z - logits.gather(-1, target[..., None])[..., 0]
    return loss.mean() if reduction == "mean" else loss


def batch_tokens(rng: random.Random, batch: int, length: int, progress: float) -> Tensor:
    return torch.tensor([make_corpus.row_tokens(rng, length, progress) for _ in range(batch)], dtype=torch.long)


def export(model: minitx.Transformer, table: Tensor, vocab: UsedVocab, out: Path) -> None:
    """Scatter the table into W_E (zeros elsewhere) and save the model in float16."""
    with torch.no_grad():
        model.W_E.zero_()
        model.W_E[vocab.ids] = table.detach()
    half = minitx.Transformer(model.cfg)
    half.load_state_dict(model.state_dict())
    minitx.save_pretrained(half.half(), out)


@torch.no_grad()
def probe(model: minitx.Transformer, table: Tensor, vocab: UsedVocab, sets: dict) -> dict:
    """Held-out top-1 per task, read from the used logits (an unused token wins only if all used < 0)."""
    tok, out = Tokenizer.default(), {}
    for task, items in sets.items():
        correct = 0
        for item in items:
            ids = ([tok.bos_token_id] if item["bos"] else []) + tok.encode(item["prompt"] + item["answer"])
            local = vocab.to_local(torch.tensor([ids]))
            resid = model(table[local[:, :-1]] + model.W_pos[: len(ids) - 1], start_at_layer=0,
                          stop_at_layer=model.cfg.n_layer)
            ln = model.ln_final
            logits = F.layer_norm(resid[0, -1], resid.shape[-1:], ln.w, ln.b, ln.eps) @ table.T
            target = int(local[0, -1])
            correct += int(logits.argmax()) == target and float(logits[target]) > 0
        out[task] = correct / max(1, len(items))
    return out


def probe_sets(n: int) -> dict:
    sets = make_corpus.eval_sets(seed=99, n_role=24, n_ioi=24, n_repeat=12)
    rng = random.Random(0)
    return {k: rng.sample(v, min(n, len(v))) for k, v in sets.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for config.json + model.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-layer", type=int, default=6, help="blocks (the shipped model: 6)")
    parser.add_argument("--minutes", type=float, default=35.0, help="wall-clock training budget")
    parser.add_argument("--max-steps", type=int, default=10**9)
    parser.add_argument("--steps", type=int, default=None, help="a step budget instead of --minutes: the "
                        "schedule and data mixture then follow step / steps, so a run repeats exactly")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--decay-from", type=float, default=0.75, help="fraction of the budget after which "
                        "the learning rate falls linearly to 10%%")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--probe-every", type=int, default=500)
    parser.add_argument("--save-minutes", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a tiny model (CI): seconds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.smoke:
        args.max_steps, args.batch, args.log_every, args.probe_every = 6, 4, 2, 6

    cfg = model_config(args.smoke, args.n_layer)
    vocab = UsedVocab(make_corpus.used_ids(), cfg.vocab_size)
    model = minitx.Transformer(cfg).init_weights(args.seed)
    model.W_E.requires_grad_(False)
    table = nn.Parameter(model.W_E[vocab.ids].clone())  # [n_used, d_model], the trained rows
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay + [table], "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    rng = random.Random(args.seed + 1000)  # the data stream, separate from the init seed
    sets = probe_sets(8 if args.smoke else 48)
    budget = args.minutes * 60
    print(f"model {cfg.n_layer}L d{cfg.d_model} h{cfg.n_head} ctx{cfg.n_ctx}; {len(vocab.ids)} used ids of "
          f"{cfg.vocab_size}; batch {args.batch}x{cfg.n_ctx}; budget {args.minutes} min; seed {args.seed}", flush=True)
    start = last_save = time.time()
    history, running, n_running, step = [], 0.0, 0, 0
    model.train()
    while step < args.max_steps:
        elapsed = time.time() - start
        progress = elapsed / budget if args.steps is None else step / args.steps
        if progress >= 1:
            break
        step += 1
        warm = min(1.0, step / args.warmup)
        fall = 1.0 if progress < args.decay_from else 1 - 0.9 * (progress - args.decay_from) / (1 - args.decay_from)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * fall
        tokens = batch_tokens(rng, args.batch, cfg.n_ctx, progress)
        loss = exact_full_vocab_loss(model, table, vocab, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*decay, *no_decay, table], 1.0)
        optimizer.step()
        running, n_running = running + loss.item(), n_running + 1
        if step % args.log_every == 0:
            print(f"step {step:6d}  loss {running / n_running:.4f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                  f"({elapsed / 60:.1f} min, {step * args.batch * cfg.n_ctx / max(elapsed, 1e-9):.0f} tok/s)",
                  flush=True)
            history.append({"step": step, "minutes": round(elapsed / 60, 2), "loss": round(running / n_running, 4)})
            running, n_running = 0.0, 0
        if step % args.probe_every == 0:
            model.eval()
            acc = probe(model, table, vocab, sets)
            model.train()
            history.append({"step": step, "minutes": round(elapsed / 60, 2), "probe": acc})
            print(f"probe step {step}: " + "  ".join(f"{k} {v:.2f}" for k, v in acc.items()), flush=True)
        if time.time() - last_save > args.save_minutes * 60:
            export(model, table, vocab, args.out)
            last_save = time.time()
            print(f"saved {args.out} at step {step}", flush=True)
    model.eval()
    minutes = (time.time() - start) / 60
    export(model, table, vocab, args.out)
    summary = {"seed": args.seed, "steps": step, "train_minutes": round(minutes, 2), "batch": args.batch,
               "tokens": step * args.batch * cfg.n_ctx, "n_used": len(vocab.ids), "lr": args.lr,
               "final_probe": probe(model, table, vocab, sets), "history": history}
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}), flush=True)
    return summary


if __name__ == "__main__":
    main()

"""Train the known-answer fixture: a 2-layer, attention-only-in-effect GPT-2 that does induction.

Recipe: METHODS.md section 9.3. n_layer=2, n_head=2, n_embd=64, vocab 64 tokens + BOS (id 64),
n_positions=48, pre-LN blocks and a final LN as in GPT-2, untied unembedding. Every MLP weight and
bias (and ln2, which feeds only the MLP) is zero/identity and frozen, so each MLP adds exactly 0 and
the model is attention-only in effect while staying a plain GPT-2 checkpoint.

Data: [BOS] + A + A + fresh uniform tokens to length 48, where A is a block of L ~ U{8..20}
distinct tokens. Varying L keeps the task from being solved by a fixed positional offset.

    python scripts/train_induction.py --out weights/induction-2l          # ~6000 steps, 1-2 min
    python scripts/train_induction.py --smoke --out /tmp/induction-smoke  # a few steps, seconds

Output: config.json + model.safetensors in HF's GPT2LMHeadModel layout (minitx.save_pretrained);
the config's bos_token_id is null there (GPT-2's 50256 is outside this vocabulary): BOS is id 64.
References: Olsson et al. 2022, "In-context Learning and Induction Heads"; Elhage et al. 2021.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import minitx

N_TOKENS, BOS, SEQ_LEN = 64, 64, 48
L_RANGE = (8, 20)


def model_config(tied: bool = False) -> minitx.Config:
    return minitx.Config(n_layer=2, n_head=2, n_embd=64, n_positions=SEQ_LEN, vocab_size=N_TOKENS + 1,
                         tie_word_embeddings=tied)


def make_batch(n: int, generator: torch.Generator, L: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """-> (clean [batch, pos], corrupted [batch, pos], L [batch]).

    clean = [BOS] + A + A + uniform tail; corrupted replaces the first copy A by a block A' of
    distinct tokens disjoint from A (second copy, tail and positions unchanged). L=None draws
    L ~ U{8..20} per sequence; an int fixes it, so that positions line up across the batch."""
    clean = torch.randint(0, N_TOKENS, (n, SEQ_LEN), generator=generator)
    corrupted = clean.clone()
    lengths = (torch.randint(L_RANGE[0], L_RANGE[1] + 1, (n,), generator=generator) if L is None
               else torch.full((n,), L))
    for b, length in enumerate(lengths.tolist()):
        perm = torch.randperm(N_TOKENS, generator=generator)
        block, other = perm[:length], perm[length:2 * length]  # A and a disjoint A'
        clean[b, 1:1 + length] = block
        clean[b, 1 + length:1 + 2 * length] = block
        corrupted[b, 1:1 + 2 * length] = torch.cat([other, block])
    clean[:, 0] = corrupted[:, 0] = BOS
    return clean, corrupted, lengths


def second_copy_mask(lengths: Tensor) -> Tensor:
    """-> bool [batch, pos]: the query positions L+1 .. 2L-1, whose next token is predictable
    (the second copy's token at q+1 repeats the first copy's token at q+1-L)."""
    q = torch.arange(SEQ_LEN)[None, :]
    return (q >= lengths[:, None] + 1) & (q <= 2 * lengths[:, None] - 1)


def second_copy_logprob(logits: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
    """Mean log-prob of the correct next token over second-copy positions -> [batch]."""
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos-1]
    mask = second_copy_mask(lengths)[:, :-1].to(logprobs.dtype)
    return (logprobs * mask).sum(1) / mask.sum(1)


def second_copy_logit_diff(logits: Tensor, clean: Tensor, corrupted: Tensor, lengths: Tensor) -> Tensor:
    """Mean over second-copy positions of logit[clean answer] - logit[the answer the corrupted first
    copy suggests] -> [batch]. At query L+i the clean answer is A[i] (position L+i+1); the corrupted
    run's first copy holds A'[i] at position i+1, which an induction head there would copy."""
    q = torch.arange(SEQ_LEN - 1)[None, :]
    wrong = corrupted.gather(1, (q + 1 - lengths[:, None]).clamp(min=0))  # [batch, pos-1]
    x = logits[:, :-1]
    diff = x.gather(-1, clean[:, 1:, None])[..., 0] - x.gather(-1, wrong[..., None])[..., 0]
    mask = second_copy_mask(lengths)[:, :-1].to(diff.dtype)
    return (diff * mask).sum(1) / mask.sum(1)


def build_model(seed: int, tied: bool, std: float = 0.02) -> minitx.Transformer:
    """GPT-2 init (seeded; N(0, std)), then every MLP weight/bias zeroed and frozen, ln2 frozen at identity."""
    model = minitx.Transformer(model_config(tied)).init_weights(seed, std=std)
    with torch.no_grad():
        for block in model.blocks:
            for param in block.mlp.parameters():
                param.zero_()
            for param in (*block.mlp.parameters(), *block.ln2.parameters()):
                param.requires_grad_(False)
    return model


def train(model: minitx.Transformer, steps: int, seed: int, batch: int = 32, lr: float = 1e-3,
          weight_decay: float = 0.01, log_every: int = 250) -> list[tuple[int, float]]:
    """AdamW on next-token cross-entropy at every position. Returns [(step, mean loss since last log)]."""
    generator = torch.Generator().manual_seed(seed + 1000)  # data stream, separate from the init seed
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    history, running, start = [], 0.0, time.time()
    for step in range(1, steps + 1):
        tokens, _, _ = make_batch(batch, generator)
        logits = model(tokens)  # [batch, pos, d_vocab]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            history.append((step, running / n))
            print(f"step {step:5d}  loss {running / n:.4f}  ({time.time() - start:.1f} s)", flush=True)
            running = 0.0
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: minitx.Transformer, n: int = 256, seed: int = 12345) -> dict:
    """The section 9.3 preconditions, computed straight from the model API on a held-out batch."""
    clean, corrupted, lengths = make_batch(n, torch.Generator().manual_seed(seed))
    pattern_names = [minitx.get_act_name("pattern", layer) for layer in range(model.cfg.n_layer)]
    logits, cache = model.run_with_cache(clean, names_filter=pattern_names + ["blocks.0.attn.hook_z"])
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted, names_filter="blocks.0.attn.hook_z")
    m_clean = second_copy_logprob(logits, clean, lengths).mean().item()
    m_corr = second_copy_logprob(corrupted_logits, corrupted, lengths).mean().item()

    # Induction score (section 5.3): mean over i = 1..L of A[L+i, i+1], per head of layer 1.
    rows = torch.arange(n)[:, None]
    i = torch.arange(1, L_RANGE[1] + 1)[None, :]  # [1, i]
    valid = (i <= lengths[:, None]).float()  # [batch, i]
    A1 = cache["pattern", 1]  # [batch, head, q_pos, k_pos]
    ind = [((A1[rows, h, (lengths[:, None] + i).clamp(max=SEQ_LEN - 1), (i + 1).clamp(max=SEQ_LEN - 1)] * valid)
            .sum(1) / valid.sum(1)).mean().item() for h in range(model.cfg.n_head)]
    # Offset profile (section 5.1), BOS excluded from the queries: off_d = mean_{q >= max(d, 1)} A[q, q-d].
    A0 = cache["pattern", 0]
    offsets = [[A0[:, h].diagonal(-d, dim1=-2, dim2=-1)[:, max(0, 1 - d):].mean().item() for d in range(5)]
               for h in range(model.cfg.n_head)]
    bos_mass = [A0[:, h, 1:, 0].mean().item() for h in range(model.cfg.n_head)]

    # Noising each layer-0 head (clean run, that head's z from the corrupted run), normalised: 1 = undamaged.
    noised = []
    for h in range(model.cfg.n_head):
        def patch(z, hook, h=h):
            z = z.clone()
            z[:, :, h] = corrupted_cache["blocks.0.attn.hook_z"][:, :, h]
            return z
        patched = model.run_with_hooks(clean, fwd_hooks=[("blocks.0.attn.hook_z", patch)])
        noised.append((second_copy_logprob(patched, clean, lengths).mean().item() - m_corr) / (m_clean - m_corr))
    h0 = min(range(model.cfg.n_head), key=lambda h: noised[h])
    return {"second_copy_logprob": m_clean, "corrupted_logprob": m_corr, "induction_L1": ind,
            "offsets_L0": offsets, "bos_mass_L0": bos_mass, "noising_L0": noised, "main_L0_head": h0,
            "main_L0_offset_argmax_1to4": 1 + max(range(4), key=lambda d: offsets[h0][d + 1])}


def preconditions_hold(metrics: dict) -> bool:
    """METHODS 9.3 AC 1-3: the checkpoint is a valid fixture only if all three hold."""
    return (metrics["second_copy_logprob"] >= -0.5 and max(metrics["induction_L1"]) >= 0.8
            and metrics["main_L0_offset_argmax_1to4"] == 1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for config.json + model.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--tied", action="store_true", help="tie the unembedding to the embedding")
    parser.add_argument("--init-std", type=float, default=0.02, help="std of the N(0, std) initial weights")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a small batch (CI): seconds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    start = time.time()
    model = build_model(args.seed, args.tied, args.init_std)
    steps, batch, log_every = (20, 8, 10) if args.smoke else (args.steps, 32, 250)
    train(model, steps, args.seed, batch=batch, log_every=log_every)
    minutes = (time.time() - start) / 60
    metrics = evaluate(model, n=32 if args.smoke else 256)
    metrics.update(seed=args.seed, steps=steps, tied=args.tied, init_std=args.init_std, train_minutes=round(minutes, 2),
                   preconditions_hold=preconditions_hold(metrics))
    minitx.save_pretrained(model, args.out)  # config.json + model.safetensors, HF GPT-2 names
    print(json.dumps(metrics, indent=1))
    return metrics


if __name__ == "__main__":
    main()

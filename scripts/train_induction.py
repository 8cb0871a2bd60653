"""Train the known-answer fixture: a 2-layer, attention-only-in-effect GPT-2 that does induction.

Recipe: docs/methods.md §9.3. n_layer=2, n_head=2, n_embd=64, vocab 64 tokens + BOS (id 64),
n_positions=48, pre-LN blocks and a final LN as in GPT-2, untied unembedding. Every MLP weight and
bias (and ln2, which feeds only the MLP) is zero/identity and frozen, so each MLP adds exactly 0 and
the model is attention-only in effect while staying a plain GPT-2 checkpoint.

Data: [BOS] + A + A + fresh uniform tokens to length 48, where A is a block of L ~ U{8..20}
distinct tokens. Varying L keeps the task from being solved by a fixed positional offset.
AdamW (lr 1e-3, weight decay 0.01), batch 32, 6000 steps, one CPU thread. Init: GPT-2's scheme with
std 0.1 (TransformerLens's 0.8/sqrt(d_model)); with minitx's default 0.02 no seed tried grew induction
heads. Seeds differ in the circuit they find; seed 5 passes every check of docs/methods.md §9.3 (see
weights/induction-2l/MODEL_CARD.md for the seeds tried).

    python scripts/train_induction.py --out weights/induction-2l          # 6000 steps, 3-5 min
    python scripts/train_induction.py --smoke --out /tmp/induction-smoke  # a few steps, seconds
    python scripts/train_induction.py --evaluate weights/induction-2l     # the measurements of the card

Output: config.json + model.safetensors in HF's GPT2LMHeadModel layout (minitx.save_pretrained),
bos_token_id 64.
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
                         tie_word_embeddings=tied, bos_token_id=BOS)


def make_batch(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """-> (clean [batch, pos], corrupted [batch, pos], L [batch]).

    clean = [BOS] + A + A + uniform tail, L ~ U{8..20} per sequence; corrupted replaces the first
    copy A by a block A' of distinct tokens disjoint from A (second copy, tail and positions unchanged)."""
    clean = torch.randint(0, N_TOKENS, (n, SEQ_LEN), generator=generator)
    corrupted = clean.clone()
    lengths = torch.randint(L_RANGE[0], L_RANGE[1] + 1, (n,), generator=generator)
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


def build_model(seed: int, tied: bool, std: float = 0.1) -> minitx.Transformer:
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


def evaluate(model: minitx.Transformer, n: int = 64, seed: int = 2024) -> dict:
    """The docs/methods.md §9.3 measurements on a held-out batch, through the library's analysis functions.

    Normalised scores: 1 = clean, 0 = corrupted. h0 (main_L0_head) = the layer-0 head whose noising
    damages the log-prob most (9.3 item 3); prev_L0_head = the layer-0 head with the largest off_1."""
    from minitx import dla, heads, lens
    from minitx.attribution import atp_star_qk_fix, attribution_patching
    from minitx.patching import activation_patching
    from minitx.path_patching import path_patch

    clean, corrupted, lengths = make_batch(n, torch.Generator().manual_seed(seed))
    logprob = lambda logits: second_copy_logprob(logits, clean, lengths)  # noqa: E731
    logit_diff = lambda logits: second_copy_logit_diff(logits, clean, corrupted, lengths)  # noqa: E731
    H, out = model.cfg.n_head, {}
    with torch.no_grad():
        m_clean, m_corr = logprob(model(clean)).mean().item(), logprob(model(corrupted)).mean().item()
    out.update(second_copy_logprob=m_clean, corrupted_logprob=m_corr)

    induction = torch.stack([heads.induction_scores(model, n=k, batch=32, seed=k) for k in (8, 14, 20)]).mean(0)
    offsets = heads.offset_scores(model, clean, max_offset=4)  # [layer, head, offset]
    noising = activation_patching(model, clean, corrupted, logprob, "z", by="all", direction="noising").scores
    denoising = activation_patching(model, clean, corrupted, logprob, "z", by="all").scores
    h0, prev = int(noising[0].argmin()), int(offsets[0, :, 1].argmax())
    out.update(induction_L1=induction[1].tolist(), induction_L0=induction[0].tolist(),
               offsets_L0=offsets[0].tolist(), bos_mass_L0=heads.bos_attention_scores(model, clean)[0].tolist(),
               noising_heads=noising.tolist(), denoising_heads=denoising.tolist(), main_L0_head=h0,
               prev_L0_head=prev, main_L0_offset_argmax_1to4=int(heads.argmax_offset(offsets, 1)[0, h0]))

    # Path patching (noising convention, 1 = undamaged) from each layer-0 head.
    out["path_L0"] = {h: {"k": [float(path_patch(model, clean, corrupted, (0, h), ("k", 1, r), logprob).scores)
                                for r in range(H)],
                          **{kind: float(path_patch(model, clean, corrupted, (0, h), [(kind, 1, r) for r in range(H)],
                                                    logprob).scores) for kind in ("q", "v")},
                          "logits": float(path_patch(model, clean, corrupted, (0, h), "logits", logprob).scores)}
                      for h in range(H)}

    # Denoising resid_pre[1] at all first-copy positions together, then at all second-copy positions.
    q = torch.arange(SEQ_LEN)
    name = "blocks.1.hook_resid_pre"
    _, cache = model.run_with_cache(clean, names_filter=name)
    for label, where in (("first", (q >= 1) & (q <= lengths[:, None])),
                         ("second", (q > lengths[:, None]) & (q <= 2 * lengths[:, None]))):
        hook = [(name, lambda x, _, w=where: torch.where(w[..., None], cache[name], x))]
        with torch.no_grad():
            patched = logprob(model.run_with_hooks(corrupted, fwd_hooks=hook)).mean().item()
        out[f"resid_pre1_{label}_copy"] = (patched - m_corr) / (m_clean - m_corr)

    # DLA of the correct-token logit at second-copy positions L+1 .. L+7 (L >= 8), final-LN scale frozen.
    parts = []
    for i in range(1, 8):
        result = dla.direct_logit_attribution(model, clean, clean[torch.arange(n), lengths + i + 1], pos=lengths + i)
        parts.append(torch.stack([result.heads[1].sum(0), result.heads[0].sum(0), result.target,
                                  (result.total - result.target).abs()]).mean(1))
    dla_l1, dla_l0, logit, err = torch.stack(parts).mean(0).tolist()
    out.update(dla_L1_share=dla_l1 / logit, dla_L0_share=dla_l0 / logit, dla_logit=logit, dla_sum_error=err)

    # Logit lens: median rank of the correct next token at second-copy positions (0 = top-1).
    result = lens.logit_lens(model, clean, targets="next", positions=list(range(SEQ_LEN - 1)))
    mask = second_copy_mask(lengths)[:, :-1]
    out["lens_median_rank"] = dict(zip(result.labels, (float(r[mask].float().median()) for r in result.target_ranks)))

    # AtP and AtP*'s QK fix against activation patching: denoising, logit difference (clean answer
    # minus the token the corrupted first copy suggests), normalised.
    exact = activation_patching(model, clean, corrupted, logit_diff, "z", by="all").scores
    out.update(ld_denoising_heads=exact.tolist(),
               ld_atp_heads=attribution_patching(model, clean, corrupted, logit_diff).normalized("z").tolist(),
               ld_atp_star_heads=atp_star_qk_fix(model, clean, corrupted, logit_diff).normalized("z").tolist())
    return out


def preconditions_hold(metrics: dict) -> bool:
    """docs/methods.md §9.3 items 1-3: the checkpoint is a valid fixture only if all three hold."""
    return (metrics["second_copy_logprob"] >= -0.5 and max(metrics["induction_L1"]) >= 0.8
            and metrics["main_L0_offset_argmax_1to4"] == 1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="directory for config.json + model.safetensors")
    parser.add_argument("--evaluate", type=Path, metavar="DIR", help="measure a saved checkpoint; no training")
    parser.add_argument("--seed", type=int, default=5, help="init seed (data: seed + 1000); 5 is the shipped fixture")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--tied", action="store_true", help="tie the unembedding to the embedding")
    parser.add_argument("--init-std", type=float, default=0.1,
                        help="std of the N(0, std) initial weights; 0.1 = TransformerLens's 0.8/sqrt(d_model)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a small batch (CI): seconds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.evaluate:
        metrics = evaluate(minitx.load(args.evaluate))
        metrics["preconditions_hold"] = preconditions_hold(metrics)
        print(json.dumps(metrics, indent=1))
        return metrics
    if args.out is None:
        parser.error("--out DIR is needed to train (or --evaluate DIR to measure a checkpoint)")

    start = time.time()
    model = build_model(args.seed, args.tied, args.init_std)
    steps, batch, log_every = (20, 8, 10) if args.smoke else (args.steps, 32, 250)
    train(model, steps, args.seed, batch=batch, log_every=log_every)
    minutes = (time.time() - start) / 60
    metrics = evaluate(model, n=16 if args.smoke else 64)
    metrics.update(seed=args.seed, steps=steps, tied=args.tied, init_std=args.init_std, train_minutes=round(minutes, 2),
                   preconditions_hold=preconditions_hold(metrics))
    minitx.save_pretrained(model, args.out)  # config.json + model.safetensors, HF GPT-2 names
    print(json.dumps(metrics, indent=1))
    return metrics


if __name__ == "__main__":
    main()

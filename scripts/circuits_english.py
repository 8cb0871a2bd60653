"""Positional or token-pair heads in weights/english-6l, two ways (issue 14):

  * from the weights and the prompt (minitx.circuits.positional_token_split, docs/methods.md §10.4): the
    share of each head's score variation over keys that comes from position x position terms, and from
    terms with a token-carrying side, on a batch of role stories;
  * from the patterns (minitx.heads.role_swap, docs/methods.md §5.5): TV_pos, TV_tok and R = TV_tok - TV_pos
    when the two animals of the same stories swap places.

    python scripts/circuits_english.py [--model weights/english-6l] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minitx  # noqa: E402
from minitx import circuits, heads, prompts  # noqa: E402

ANIMALS = [" cat", " mouse", " dog", " fox", " bird", " cow", " horse", " duck", " frog", " owl", " bear", " sheep"]
VERBS = [" chased", " bit", " saw", " pushed"]
STORY = "The{S}{V} the{O}. The one who{V} was the"  # BOS + The S V the O . The one who V was the
SWAP = (2, 5)  # positions of S and O, BOS at 0


def stories(tok, pairs, verbs):
    a = [tok.to_tokens(STORY.format(S=s, O=o, V=v), prepend_bos=True)[0] for (s, o), v in zip(pairs, verbs)]
    b = [tok.to_tokens(STORY.format(S=o, O=s, V=v), prepend_bos=True)[0] for (s, o), v in zip(pairs, verbs)]
    return torch.stack(a), torch.stack(b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="weights/english-6l")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = minitx.load(args.model), minitx.Tokenizer.default()
    pairs = list(itertools.permutations(ANIMALS, 2))
    g = torch.Generator().manual_seed(0)
    chosen = [pairs[i] for i in torch.randperm(len(pairs), generator=g)[:32].tolist()]
    verbs = [VERBS[i % len(VERBS)] for i in range(len(chosen))]
    a, b = stories(tok, chosen, verbs)
    split = {bos: circuits.positional_token_split(model, a, exclude_bos=bos) for bos in (False, True)}
    known = prompts.known_token_ids(model)  # random trained tokens: no token shared at a position
    random = known[torch.randint(len(known), (32, a.shape[1] - 1), generator=g)]
    random = circuits.positional_token_split(model, torch.cat([torch.full((32, 1), model.cfg.bos_token_id), random], 1))
    swap = heads.role_swap(model, a, b, SWAP)
    copying = circuits.copying_scores(model, embedding="normalised", tokens=prompts.known_token_ids(model))
    prev = heads.previous_token_scores(model, a, exclude_bos=True)
    print(f"{len(a)} role stories like {STORY.format(S=' cat', O=' mouse', V=' chased')!r} (BOS first); "
          "shares of the score variance over keys (mean ± std over prompts)")
    print(f"{'head':>5} {'pos x pos':>14} {'token':>14} {'kind':>11} | {'pos x pos*':>14} {'kind*':>11} | "
          f"{'TV_pos':>6} {'TV_tok':>6} {'R':>6} | {'prev':>5} {'copy':>6} | {'pos x pos':>9} {'same':>5} {'kind':>11}")
    rows = []
    for l, h in itertools.product(range(model.cfg.n_layer), range(model.cfg.n_head)):
        s, x = split[False], split[True]
        row = dict(head=f"{l}.{h}", pos=float(s.scores[l, h, 0]), pos_std=float(s.std[l, h, 0]),
                   token=float(s.scores[l, h, 1]), token_std=float(s.std[l, h, 1]), kind=s.kind[l][h],
                   pos_no_bos=float(x.scores[l, h, 0]), pos_no_bos_std=float(x.std[l, h, 0]), kind_no_bos=x.kind[l][h],
                   tv_pos=float(swap.tv_pos[l, h]), tv_tok=float(swap.tv_tok[l, h]), R=float(swap.scores[l, h]),
                   prev=float(prev[l, h]), copying=float(copying.scores[l, h]),
                   same_random=float(random.same_in_every_prompt[l, h]), kind_random=random.kind[l][h],
                   pos_random=float(random.scores[l, h, 0]))
        rows.append(row)
        print(f"{row['head']:>5} {row['pos']:6.2f} ± {row['pos_std']:4.2f} {row['token']:6.2f} ± {row['token_std']:4.2f} "
              f"{row['kind']:>11} | {row['pos_no_bos']:6.2f} ± {row['pos_no_bos_std']:4.2f} {row['kind_no_bos']:>11} | "
              f"{row['tv_pos']:6.2f} {row['tv_tok']:6.2f} {row['R']:+6.2f} | {row['prev']:5.2f} {row['copying']:+6.2f} | "
              f"{row['pos_random']:9.2f} {row['same_random']:5.2f} {row['kind_random']:>11}")
    print("* keys after BOS only (exclude_bos=True). kind: positional / token-pair (layer 0) / indirect (later "
          "layers) when that share minus two standard errors is above 0.5, else mixed. "
          "R > 0: attends by slot (role), R < 0: by token. Last three columns: on 32 prompts of random trained "
          "tokens of the same length; same = share of the score variation the other prompts' mean explains.")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

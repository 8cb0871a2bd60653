"""Role, position or word: what a head's attention follows, over families of prompts that move roles, positions
and words apart, with bootstrap intervals over families (docs/methods.md §14 and §5.5).

A family is one base prompt and variants of it, each a labelled prompt (a label per token: "S", "O", "verb",
"BOS", ...). Three kinds of variant:
- "swap":  the two nouns exchange places ("The cat chased the mouse" / "The mouse chased the cat"): roles and
           positions stay, the words move;
- "move":  the roles stay with their words but move in position, both absolute and relative to the query
           (the passive "The mouse was chased by the cat"; an insertion);
- "shift": everything shifts by k (a filler sentence before the story): only absolute positions change.
For a head, the query row of its pattern in the base prompt, A[q, :], is compared with the variant's, A'[q', :],
through a map of keys for each hypothesis:
    role      the key with the same label (the subject slot stays the subject slot);
    word      the key holding the same token (its i-th occurrence from the end);
    position  the key at the same absolute position, or at the same offset from the query, whichever keeps more
              (BOS maps to BOS under every hypothesis: a sink is not a role).
overlap_X = sum_k min(A[q, k], A'[q', pi_X(k)]) in [0, 1] (1 - total variation when pi_X is a bijection; for a
swap, 1 - overlap_word and 1 - overlap_role are §5.5's TV_tok and TV_pos). Contrasts, per family:
    role - word       on swap variants (positions fixed: a role or position head keeps, a word head moves);
    role - position   on move variants (words fixed: a role or word head follows, a position head stays);
    role - absolute   on shift variants (a head reading absolute positions stays).
Classification (`classify`), each bound the interval's, never the mean's (tau = threshold):
    position   role - position < -tau or role - absolute < -tau, and not role - position > tau;
    role       role - position > tau and role - word > tau;
    word       role - position > tau and role - word < -tau;
    otherwise  "not established" (including a head that looks mostly at BOS: every hypothesis keeps it);
    and over fewer than stats.MIN_PROMPTS families no class at all, only stats.too_few's "too few prompts (n = 3;
    at least 8 needed to decide)" (the intervals are still reported).

References: Wang et al. 2022 (IOI: role-swapped minimal pairs); Olsson et al. 2022 (positional heads);
docs/methods.md §14 (position-shifted families, intervals).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from minitx import datasets as D
from minitx.heads import attention_patterns
from minitx.results import Result
from minitx.stats import NOT_ESTABLISHED, Interval, bootstrap, too_few

KINDS = ("swap", "move", "shift")
SHIFT_FILLER = D.FILLERS[7]  # "It was late.": the sentence a shift variant puts before the story
CONTRASTS = ("role - word", "role - position", "role - absolute")  # measured on swap, move, shift variants
CLASSES = ("role", "position", "word", NOT_ESTABLISHED)


@dataclass(frozen=True)
class Labelled:
    """One prompt: token ids and a unique label per token; query: the label of the query position."""

    tokens: tuple
    labels: tuple
    query: str

    def __post_init__(self):
        if len(self.tokens) != len(self.labels) or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"a labelled prompt needs one unique label per token; got {len(self.tokens)} tokens and "
                             f"labels {list(self.labels)}")
        if self.query not in self.labels:
            raise ValueError(f"query label {self.query!r} is not among the labels {list(self.labels)}")

    @property
    def q(self) -> int:
        return self.labels.index(self.query)


@dataclass(frozen=True)
class Variant:
    kind: str  # "swap", "move" or "shift"
    base: Labelled
    variant: Labelled


# ---------------------------------------------------------------------------------------------
# Key maps and overlaps


def key_maps(base: Labelled, variant: Labelled) -> dict[str, list[tuple[int, int]]]:
    """For each hypothesis (role, word, absolute, relative), the (base key, variant key) pairs it maps, keys up to
    each query only (causal attention), one to one."""
    q, q2 = base.q, variant.q
    keys, keys2 = range(q + 1), range(q2 + 1)

    def occurrence_from_end(tokens, end):  # position -> (token, how many later copies before the query)
        seen, out = {}, {}
        for k in reversed(range(end + 1)):
            out[k] = (tokens[k], seen.get(tokens[k], 0))
            seen[tokens[k]] = seen.get(tokens[k], 0) + 1
        return out

    where2 = {lab: k for k, lab in enumerate(variant.labels[:q2 + 1])}
    occ, occ2 = occurrence_from_end(base.tokens, q), occurrence_from_end(variant.tokens, q2)
    by_occurrence = {v: k for k, v in occ2.items()}
    base_bos = base.labels.index("BOS") if "BOS" in base.labels[:q + 1] else None
    variant_bos = where2.get("BOS")
    maps = {"role": [(k, where2[base.labels[k]]) for k in keys if base.labels[k] in where2],
            "word": [(k, by_occurrence[occ[k]]) for k in keys if occ[k] in by_occurrence],
            "absolute": [(k, k) for k in keys if k in keys2],
            "relative": [(k, k + q2 - q) for k in keys if 0 <= k + q2 - q <= q2]}
    if base_bos is not None and variant_bos is not None:  # BOS -> BOS everywhere, and nothing else onto BOS
        for name in ("absolute", "relative"):
            maps[name] = [(base_bos, variant_bos)] + [(k, k2) for k, k2 in maps[name]
                                                      if k != base_bos and k2 != variant_bos]
    return maps


def overlap(row: Tensor, row2: Tensor, pairs: list[tuple[int, int]]) -> Tensor:
    """sum over mapped keys of min(A[..., k], A'[..., k']): rows [..., key] -> [...]."""
    if not pairs:
        return row.new_zeros(row.shape[:-1])
    k, k2 = (torch.tensor(x) for x in zip(*pairs))
    return torch.minimum(row[..., k], row2[..., k2]).sum(-1)


def query_rows(model, prompts: list[Labelled], batch_size: int = 64) -> list[Tensor]:
    """Each prompt's query row of every head's pattern, [layer, head, key], prompts of one length run together."""
    rows: list = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p.tokens), []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            tokens = torch.tensor([prompts[i].tokens for i in chunk])
            with torch.no_grad():
                patterns = attention_patterns(model, tokens)  # [layer, batch, head, q, k]
            for b, i in enumerate(chunk):
                rows[i] = patterns[:, b, :, prompts[i].q].float().cpu()
    return rows


def pair_overlaps(row: Tensor, row2: Tensor, base: Labelled, variant: Labelled) -> dict[str, Tensor]:
    """{role, word, position}: overlaps [layer, head] of one base/variant pair; position is the better of the
    absolute and the relative map."""
    maps = key_maps(base, variant)
    out = {name: overlap(row, row2, maps[name]) for name in maps}
    return {"role": out["role"], "word": out["word"], "position": torch.maximum(out["absolute"], out["relative"]),
            "absolute": out["absolute"]}


# ---------------------------------------------------------------------------------------------
# Classification


def classify(role_vs_word: Interval | None, role_vs_position: Interval | None, role_vs_absolute: Interval | None = None,
             threshold: float = 0.1) -> str:
    """"role", "position", "word" or "not established", from the contrasts' intervals (module docstring); over fewer
    than stats.MIN_PROMPTS families, "too few prompts (...)" whatever the intervals. A contrast that was not measured
    (None) supports nothing."""
    measured = [iv for iv in (role_vs_word, role_vs_position, role_vs_absolute) if iv is not None]
    if measured and (reason := too_few(min(iv.n for iv in measured))):
        return reason

    def above(iv):
        return iv is not None and float(iv.low) > threshold

    def below(iv):
        return iv is not None and float(iv.high) < -threshold

    follows_role = above(role_vs_position)  # follows the words' roles rather than their positions
    positional = below(role_vs_position) or below(role_vs_absolute)
    if positional and not follows_role:
        return "position"
    if follows_role and not positional:
        if above(role_vs_word):
            return "role"
        if below(role_vs_word):
            return "word"
    return NOT_ESTABLISHED


@dataclass(kw_only=True, repr=False)
class HeadRoles(Result):
    """scores [contrast, layer, head]: mean over families of role - word, role - position, role - absolute
    (NaN where no family has that kind of variant); per_prompt [contrast, layer, head, family].
    overlaps: {kind: {hypothesis: [layer, head]}} mean overlaps; classes[layer][head]: "role", "position",
    "word" or "not established" (over fewer than stats.MIN_PROMPTS families: "too few prompts (...)");
    intervals: one Interval per contrast ([layer, head] each) or None."""

    overlaps: dict = field(default_factory=dict)
    intervals: tuple = ()
    classes: list = field(default_factory=list)
    threshold: float = 0.1
    n_families: int = 0
    kinds: dict = field(default_factory=dict)  # kind -> variants of that kind per family

    def heads(self, cls: str) -> list[tuple[int, int]]:
        return [(l, h) for l, row in enumerate(self.classes) for h, c in enumerate(row) if c == cls]


def head_roles(model, families: list[list[Variant]], *, threshold: float = 0.1, resamples: int = 2000,
               seed: int = 0, level: float = 0.95) -> HeadRoles:
    """Returns HeadRoles: each head's contrasts per family, their bootstrap intervals over families, and its class.
    families: lists of Variants (each family has at least one; a family's contrast of a kind averages its variants
    of that kind). Every family must hold the same kinds, so that each contrast has one value per family."""
    if not families or not all(families):
        raise ValueError("give at least one family, each with at least one variant")
    kinds = [sorted({v.kind for v in fam}) for fam in families]
    if any(k not in KINDS for ks in kinds for k in ks) or any(ks != kinds[0] for ks in kinds):
        raise ValueError(f"every family must hold the same kinds of variant, from {KINDS}; got {kinds[0]} and "
                         f"{next(ks for ks in kinds if ks != kinds[0])}")
    prompts = list(dict.fromkeys(p for fam in families for v in fam for p in (v.base, v.variant)))
    index = {p: i for i, p in enumerate(prompts)}
    rows = query_rows(model, prompts)
    L, H = model.cfg.n_layer, model.cfg.n_head
    hypotheses = {"swap": ("role", "word"), "move": ("role", "position"), "shift": ("role", "absolute")}
    per_family = torch.full((len(CONTRASTS), L, H, len(families)), float("nan"))
    sums = {k: {h: torch.zeros(L, H) for h in ("role", "word", "position", "absolute")} for k in kinds[0]}
    for f, fam in enumerate(families):
        for c, kind in enumerate(KINDS):
            variants = [v for v in fam if v.kind == kind]
            if not variants:
                continue
            contrast = torch.zeros(L, H)
            for v in variants:
                o = pair_overlaps(rows[index[v.base]], rows[index[v.variant]], v.base, v.variant)
                contrast += o[hypotheses[kind][0]] - o[hypotheses[kind][1]]
                for h in sums[kind]:
                    sums[kind][h] += o[h] / (len(variants) * len(families))
            per_family[c, ..., f] = contrast / len(variants)
    measured = [KINDS[c] in kinds[0] for c in range(len(CONTRASTS))]
    intervals = tuple(bootstrap(per_family[c], level=level, resamples=resamples, seed=seed) if measured[c] else None
                      for c in range(len(CONTRASTS)))
    classes = [[classify(*(iv[l, h] if iv is not None else None for iv in intervals), threshold=threshold)
                for h in range(H)] for l in range(L)]
    return HeadRoles(scores=per_family.mean(-1), axes=("contrast", "layer", "head"), per_prompt=per_family,
                     metric="attention overlap contrasts " + ", ".join(CONTRASTS), overlaps=sums, intervals=intervals,
                     classes=classes, threshold=threshold, n_families=len(families),
                     kinds={k: sum(v.kind == k for v in families[0]) for k in kinds[0]})


# ---------------------------------------------------------------------------------------------
# Families from role-swap datasets (minitx.datasets)


def _labelled(pair, tokenizer, prepend_bos: bool, corrupted: bool = False) -> Labelled:
    ids, labels = D.labelled_tokens(pair, tokenizer, prepend_bos, corrupted)
    return Labelled(tuple(ids), tuple(labels), labels[-1])


def story_families(pairs, tokenizer, prepend_bos: bool = True,
                   filler: str | None = SHIFT_FILLER) -> list[list[Variant]]:
    """One family per generated active pair with no filler: its swap (the corrupted prompt), the same story in the
    passive voice (move), and the same prompt after `filler` (shift; None: no shift variant). The query is the last
    token of the question ("... was the"), where the answer is read."""
    families = []
    for pair in pairs:
        if not pair.generated or pair.voice != "active" or pair.filler:
            raise ValueError(f"story_families takes generated active pairs without a filler; got {pair.clean!r}")
        base = _labelled(pair, tokenizer, prepend_bos)
        passive = D.make_pair(pair.template, "passive", pair.S, pair.O, pair.verb)
        fam = [Variant("swap", base, _labelled(pair, tokenizer, prepend_bos, corrupted=True)),
               Variant("move", base, _labelled(passive, tokenizer, prepend_bos))]
        if filler:
            shifted = D.make_pair(pair.template, "active", pair.S, pair.O, pair.verb, filler)
            fam.append(Variant("shift", base, _labelled(shifted, tokenizer, prepend_bos)))
        families.append(fam)
    return families


__all__ = ["Labelled", "Variant", "KINDS", "SHIFT_FILLER", "CONTRASTS", "CLASSES", "key_maps", "overlap",
           "pair_overlaps", "query_rows", "classify", "HeadRoles", "head_roles", "story_families"]

"""Datasets of prompt pairs: clean and corrupted prompts with the answer each one expects.

    pairs = role_swap_pairs(n=64, templates=("who", "who_was"), voices=("active", "passive"))
    batch = to_batch(pairs, Tokenizer.default(), prepend_bos=True)   # one length; else to_batches
    activation_patching(model, batch.clean, batch.corrupted, batch.metric(), ...)
    write_jsonl(pairs, "pairs.jsonl"); read_jsonl("pairs.jsonl")

A pair is a role swap (a symmetric token replacement, docs/methods.md §1.2 and §5.5): the story
"The cat chased the mouse." against "The mouse chased the cat.", followed by a question whose
answer is one of the two animals ("The one who chased was the" -> " cat"). The corrupted prompt is
the clean one with the two nouns exchanged everywhere, so both have the same length and the
corrupted prompt's answer is the clean prompt's wrong token. Metric: logit(answer) - logit(wrong).

Pairs come from templates x word pairs x verbs x voices x fillers (docs/methods.md §14):
- templates (`TEMPLATES`): questions that name neither animal, so only who-did-what in the story
  decides the answer ("who": the doer; "who_was": the one it was done to);
- voices: active "The {S} {verb} the {O}." or passive "The {O} was {verb} by the {S}." (the doer
  comes second: the roles stay, the positions move);
- fillers (`FILLERS`): sentences before the story, which shift every position.
The words are single GPT-2 tokens with a leading space. The defaults are the role-tracking nouns
and verbs of the shipped model's corpus (`scripts/make_corpus.py`), on which `weights/english-6l`
answers every template in both voices (held-out top-1 0.99, MODEL_CARD.md); a GPT-2 model can take
any single-token words, and `known_words` drops the words a model never trained (blank embedding).

Every generated pair also knows which token of each prompt plays which part (`labelled_tokens`:
"S", "O", "verb", "story.the", "q.was", "filler.3", ...), which `minitx.roles` uses to follow a
head's attention by role, by position and by word.

A JSONL row holds clean, corrupted, answer and wrong (text; answers with their leading space) plus
the optional fields of `PromptPair`. Wang et al. 2022 (IOI) build their datasets the same way.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from minitx.checks import check_choice, check_count
from minitx.metrics import Metric, logit_diff_metric

# The role-tracking words of weights/english-6l's corpus (scripts/make_corpus.py ROLE_NOUNS, ROLE_VERBS):
# each is one GPT-2 token after a space.
NOUNS = ("cat", "mouse", "dog", "fox", "bird", "frog", "duck", "owl", "bear", "wolf", "lion", "pig", "goat",
         "rabbit")
VERBS = ("chased", "followed", "scared", "watched", "pushed", "helped", "kicked", "pulled", "attacked", "called")
# Sentences of the same corpus that carry no role (scripts/make_corpus.py FILLER): put before a story,
# they shift every position by their length.
FILLERS = ("It was a sunny day.", "The sky was grey.", "The wind was cold.", "It was quiet.", "The sun was warm.",
           "It rained all night.", "The day was long.", "It was late.", "The road was empty.", "It was very cold.")
STORIES = {"active": "The {S} {verb} the {O}.", "passive": "The {O} was {verb} by the {S}."}
# question -> who answers it ("S" the doer, "O" the one it was done to); neither names an animal
TEMPLATES = {"who": ("The one who {verb} was the", "S"), "who_was": ("The one who was {verb} was the", "O")}


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted pair: the clean prompt expects `answer`, the corrupted one `wrong`.

    template, voice, filler, S, O, verb: how a generated pair was built (empty for a pair read from a
    file that does not say); they let `labelled_tokens` name every token's part."""

    clean: str
    corrupted: str
    answer: str
    wrong: str
    template: str = ""
    voice: str = ""
    filler: str = ""
    S: str = ""
    O: str = ""
    verb: str = ""

    @property
    def generated(self) -> bool:
        return bool(self.template and self.voice and self.S and self.O and self.verb)


def _pieces(text: str, part: str) -> list[tuple[str, str]]:
    """'The {S} {verb} the {O}.' -> [(word or '{slot}', label)]: a slot is labelled by its name, a literal
    word by part.word (part.word#2 for its second occurrence); a final '.' is a piece of its own."""
    out = []
    for word in text.split():
        tail = word.endswith(".") and len(word) > 1
        word = word[:-1] if tail else word
        out.append((word, word[1:-1] if word.startswith("{") else f"{part}.{word}"))
        if tail:
            out.append((".", f"{part}.."))
    seen: dict[str, int] = {}
    for i, (word, label) in enumerate(out):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            out[i] = (word, f"{label}#{seen[label]}")
    return out


def _prompt_pieces(template: str, voice: str, filler: str, S: str, O: str, verb: str) -> list[tuple[str, str]]:
    """[(text piece with its leading space, label)] of one prompt; the first piece has no leading space."""
    words = {"S": S, "O": O, "verb": verb}
    pieces = []
    for i, word in enumerate(filler.split()):
        pieces.append((word, f"filler.{i}"))
    for word, label in _pieces(STORIES[voice], "story") + _pieces(TEMPLATES[template][0], "q"):
        slot = word[1:-1] if word.startswith("{") else None
        text = words[slot] if slot else word
        pieces.append((text, ("q.verb" if label == "verb" and pieces and pieces[-1][1].startswith("q.")
                              else label)))
    return [(text if i == 0 or text == "." else " " + text, label) for i, (text, label) in enumerate(pieces)]


def _text(pieces) -> str:
    return "".join(text for text, _ in pieces)


def make_pair(template: str, voice: str, S: str, O: str, verb: str, filler: str = "") -> PromptPair:
    """The pair whose clean story has doer S and object O, and whose corrupted story exchanges them."""
    check_choice(template, "template", tuple(TEMPLATES))
    check_choice(voice, "voice", tuple(STORIES))
    if S == O:
        raise ValueError(f"the two nouns must differ, got {S!r} twice")
    who = TEMPLATES[template][1]
    answer, wrong = (S, O) if who == "S" else (O, S)
    clean = _text(_prompt_pieces(template, voice, filler, S, O, verb))
    corrupted = _text(_prompt_pieces(template, voice, filler, O, S, verb))
    return PromptPair(clean, corrupted, " " + answer, " " + wrong, template, voice, filler, S, O, verb)


def role_swap_pairs(n: int | None = None, *, nouns=NOUNS, verbs=VERBS, templates=tuple(TEMPLATES),
                    voices=("active",), fillers=("",), seed: int = 0) -> list[PromptPair]:
    """Returns role-swap pairs from every (noun pair, verb, template, voice, filler), shuffled by seed, the first n
    (None: all). Each unordered noun pair appears in one order per combination (the swap gives the other), so
    the clean prompts name both orders equally often over the dataset."""
    nouns, verbs = list(dict.fromkeys(nouns)), list(dict.fromkeys(verbs))
    if len(nouns) < 2 or not verbs:
        raise ValueError(f"need at least 2 nouns and 1 verb, got {len(nouns)} nouns and {len(verbs)} verbs")
    rng = random.Random(seed)
    combos = list(itertools.product(itertools.combinations(nouns, 2), verbs, templates, voices, fillers))
    rng.shuffle(combos)
    if n is not None:
        check_count(n, "n", "the number of pairs (None: all of them)")
        if n > len(combos):
            raise ValueError(f"n={n} pairs asked for, but these words, templates, voices and fillers give only "
                             f"{len(combos)}")
        combos = combos[:n]
    out = []
    for (a, b), verb, template, voice, filler in combos:
        S, O = (a, b) if rng.random() < 0.5 else (b, a)  # which noun is the clean prompt's doer
        out.append(make_pair(template, voice, S, O, verb, filler))
    return out


def replacement_pairs(pairs, nouns=NOUNS, seed: int = 0) -> list[PromptPair]:
    """A second corruption for generated pairs: the same clean prompts, the corrupted story told with two other
    nouns (neither S nor O), so the corrupted prompt holds neither answer (IOI's p_ABC; docs/methods.md §2.5).
    answer and wrong stay the clean pair's; the metric then measures how much of the preference survives."""
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        if not pair.generated:
            raise ValueError(f"pair {pair.clean!r} was not generated from a template, so its nouns cannot be replaced")
        others = [n for n in nouns if n not in (pair.S, pair.O)]
        if len(others) < 2:
            raise ValueError(f"need two nouns other than {pair.S!r} and {pair.O!r}, got {others}")
        S, O = rng.sample(others, 2)
        corrupted = make_pair(pair.template, pair.voice, S, O, pair.verb, pair.filler).clean
        out.append(PromptPair(pair.clean, corrupted, pair.answer, pair.wrong, pair.template, pair.voice,
                              pair.filler, pair.S, pair.O, pair.verb))
    return out


def known_words(words, tokenizer, model=None) -> list[str]:
    """The words that are one token after a space and, given a model, whose embedding row is not blank (all
    zero: a token the model never trained, e.g. every GPT-2 token outside weights/english-6l's corpus)."""
    out = []
    for word in words:
        ids = tokenizer.encode(" " + word)
        if len(ids) != 1:
            continue
        if model is not None and not bool(model.W_E.detach()[ids[0]].any()):
            continue
        out.append(word)
    return out


# ---------------------------------------------------------------------------------------------
# Tokens


@dataclass
class PairBatch:
    """A dataset as tensors every analysis takes: clean and corrupted [batch, pos] of the same shape,
    answer and wrong ids [batch] (the clean prompt's answer and the corrupted prompt's)."""

    clean: Tensor
    corrupted: Tensor
    answer: Tensor
    wrong: Tensor
    pairs: list
    prepend_bos: bool

    def __len__(self) -> int:
        return len(self.pairs)

    def metric(self, pos: int | Tensor = -1) -> Metric:
        """logit(answer) - logit(wrong) at pos, one value per prompt (positive: the clean answer wins)."""
        return logit_diff_metric(self.answer, self.wrong, pos)


def pair_tokens(pair: PromptPair, tokenizer, prepend_bos: bool) -> tuple[list[int], list[int], int, int]:
    """(clean ids, corrupted ids, answer id, wrong id); ValueError naming the pair unless both answers are one
    token and the prompts have the same number of tokens."""
    ids = []
    for what in ("answer", "wrong"):
        try:
            ids.append(tokenizer.to_single_token(getattr(pair, what)))
        except ValueError as error:
            raise ValueError(f"pair {pair.clean!r}: {what} {error} (mind the leading space)") from None
    clean = tokenizer.to_tokens(pair.clean, prepend_bos=prepend_bos)[0].tolist()
    corrupted = tokenizer.to_tokens(pair.corrupted, prepend_bos=prepend_bos)[0].tolist()
    if len(clean) != len(corrupted):
        raise ValueError(f"pair {pair.clean!r} / {pair.corrupted!r}: {len(clean)} and {len(corrupted)} tokens; a "
                         "pair must have the same length to patch position by position")
    return clean, corrupted, ids[0], ids[1]


def to_batch(pairs, tokenizer, prepend_bos: bool) -> PairBatch:
    """One PairBatch; ValueError when the pairs have different token lengths (use to_batches)."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs given")
    rows = [pair_tokens(p, tokenizer, prepend_bos) for p in pairs]
    lengths = sorted({len(r[0]) for r in rows})
    if len(lengths) > 1:
        raise ValueError(f"the pairs have {len(lengths)} different lengths ({', '.join(map(str, lengths))} "
                         "tokens); use to_batches to group them by length")
    clean, corrupted, answer, wrong = zip(*rows)
    return PairBatch(torch.tensor(clean), torch.tensor(corrupted), torch.tensor(answer), torch.tensor(wrong),
                     pairs, prepend_bos)


def to_batches(pairs, tokenizer, prepend_bos: bool) -> list[PairBatch]:
    """PairBatches of equal-length pairs, in order of each length's first pair."""
    groups: dict[int, list] = {}
    for pair in pairs:
        groups.setdefault(len(pair_tokens(pair, tokenizer, prepend_bos)[0]), []).append(pair)
    return [to_batch(group, tokenizer, prepend_bos) for group in groups.values()]


def load_pairs(path, tokenizer, prepend_bos: bool) -> PairBatch:
    """The pairs of a JSONL file as one PairBatch (all pairs must tokenize to the same length): what a command
    taking `--pairs FILE` runs instead of one clean/corrupted pair. FileNotFoundError / ValueError in one line,
    worded for the command line (a file of several lengths: each length, its pair count and an example)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--pairs {path}: no such file (JSONL rows with clean, corrupted, answer, wrong)")
    batches = to_batches(read_jsonl(path), tokenizer, prepend_bos)
    if len(batches) > 1:
        found = "; ".join(f"{b.clean.shape[1]} tokens in {len(b)} pair{'s' * (len(b) > 1)}, e.g. {b.pairs[0].clean!r}"
                          for b in sorted(batches, key=lambda b: b.clean.shape[1]))
        raise ValueError(f"--pairs {path}: the pairs have {len(batches)} token lengths: {found}. The prompts are "
                         "compared position by position, so keep pairs of one token length per file (split this one "
                         "by length) and run the command once per file")
    return batches[0]


def is_swap(clean: Tensor, corrupted: Tensor, answer: int, wrong: int) -> bool:
    """corrupted [pos] is clean [pos] with the tokens answer and wrong exchanged everywhere, and both occur."""
    swapped = clean.clone()
    swapped[clean == answer], swapped[clean == wrong] = wrong, answer
    return bool((clean == answer).any() and (clean == wrong).any() and torch.equal(swapped, corrupted))


def labelled_tokens(pair: PromptPair, tokenizer, prepend_bos: bool,
                    corrupted: bool = False) -> tuple[list[int], list[str]]:
    """(ids, one label per id) of a generated pair's clean (or corrupted) prompt: "BOS", "S", "O", "verb",
    "story.<word>", "q.<word>", "q.verb", "filler.<i>" (a filler word of several tokens repeats its label
    with .1, .2 for the later pieces). The ids equal tokenizer.to_tokens of the prompt (checked)."""
    if not pair.generated:
        raise ValueError(f"pair {pair.clean!r} was not generated from a template, so its tokens have no labels")
    S, O = (pair.O, pair.S) if corrupted else (pair.S, pair.O)
    ids, labels = ([tokenizer.bos_token_id], ["BOS"]) if prepend_bos else ([], [])
    for text, label in _prompt_pieces(pair.template, pair.voice, pair.filler, S, O, pair.verb):
        piece = tokenizer.encode(text)
        ids += piece
        labels += [label] + [f"{label}.{j}" for j in range(1, len(piece))]
    expected = tokenizer.to_tokens(pair.corrupted if corrupted else pair.clean, prepend_bos=prepend_bos)[0].tolist()
    if ids != expected:  # the pieces must tokenize as the whole prompt does
        raise ValueError(f"pair {pair.clean!r}: its pieces tokenize differently from the whole prompt")
    if len(set(labels)) != len(labels):
        raise ValueError(f"pair {pair.clean!r}: a label repeats ({labels})")
    return ids, labels


# ---------------------------------------------------------------------------------------------
# JSONL


def write_jsonl(pairs, path) -> Path:
    """One JSON object per line: clean, corrupted, answer, wrong, and the non-empty optional fields."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps({k: v for k, v in asdict(pair).items() if v != ""}) + "\n")
    return path


def read_jsonl(path) -> list[PromptPair]:
    """PromptPairs from a JSONL file; ValueError naming the line when a row is not an object with string
    fields clean, corrupted, answer and wrong (other known fields optional, unknown ones refused)."""
    path = Path(path)
    known = {f.name for f in fields(PromptPair)}
    required = ("clean", "corrupted", "answer", "wrong")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with {', '.join(required)}")
        missing = [k for k in required if k not in row]
        unknown = sorted(set(row) - known)
        if missing or unknown:
            raise ValueError(f"{where}: " + (f"missing {', '.join(missing)}" if missing else
                                             f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(known))}"))
        if not all(isinstance(v, str) for v in row.values()):
            raise ValueError(f"{where}: every field must be a string")
        out.append(PromptPair(**row))
    if not out:
        raise ValueError(f"{path}: no pairs in the file")
    return out


__all__ = ["PromptPair", "PairBatch", "NOUNS", "VERBS", "FILLERS", "STORIES", "TEMPLATES", "make_pair",
           "role_swap_pairs", "replacement_pairs", "known_words", "pair_tokens", "to_batch", "to_batches", "load_pairs",
           "is_swap", "labelled_tokens", "write_jsonl", "read_jsonl"]

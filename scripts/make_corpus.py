"""A small synthetic English corpus in GPT-2 tokenization, for the `weights/english-6l` model.

Deterministic from a seed. Every noun, name and verb below is ONE GPT-2 token with its leading space
(checked by `check_vocabulary` with `Tokenizer.to_single_token`). A training row is an optional
leading <|endoftext|> (probability 1/2) followed by episodes joined by single spaces, cut to the
row length; so whatever precedes an episode (nothing, the BOS token, 1..n earlier episodes) varies,
and no absolute position carries an answer.

Grammar (each line is one episode; {x} is drawn uniformly unless said otherwise):

  filler   := one of FILLER ("It was a sunny day." ...)
  fixed    := {Opening} {animal} {rest_verb} on the {PLACE[animal]}.
              The place depends on the subject only: cat->mat, dog->rug, bird->branch, ...
              Opening in OPENINGS ("The", "Then the", "Today the", ...; capitalised).
  role     := story follow-up
     story    := {Opening} {S} {verb} the {O}.            (active, 3/4)
               | {Opening} {O} was {verb} by the {S}.     (passive, 1/4; the doer comes second)
     follow-up (answer after the last "the"/"to"), ROLE_FORMS:
               The {O} ran from the {S}.           The {O} was {verb} by the {S}.
               The {S} {verb} the {O}.             Then the {S} looked at the {O}.
               The one who {verb} was the {S}.     The one who was {verb} was the {O}.
     S != O from ROLE_NOUNS; every story occurs with S and O swapped (its role-swapped twin) at
     the same rate, so only who-did-what decides the answer.
  ioi      := {Intro} {A} and {B} {went} to the {place}, {X} {give} the {object} to {Y}.
              Intro in ("When", "After", "While"); {X} is A or B (1/2 each), {Y} the other one.
  repeat   := k distinct words from REPEAT_WORDS (k in 3..8), written r times (r in 2..4), then "."

Mixture: filler 0.08, fixed 0.17, role 0.35, ioi 0.20, repeat 0.20 (`mixture(progress)`; during
the first `REPEAT_WARMUP` of training, repeat is 0.50, the others scaled down: repeats first).

Held out (never in training, in either order): HELD_OUT_REST pairs (animal, rest_verb),
HELD_OUT_NOUN_PAIRS (unordered role-noun pairs), HELD_OUT_NAME_PAIRS (unordered name pairs).
`eval_sets(seed)` builds evaluation prompts from held-out combinations only, each with and without
a leading <|endoftext|> and with 0..3 filler sentences before it.

    python scripts/make_corpus.py --rows 5 --seed 0     # print a few rows
"""

from __future__ import annotations

import argparse
import random
import sys
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
from minitx.tokenizer import ENDOFTEXT, Tokenizer

FILLER = ["It was a sunny day.", "The sky was grey.", "The wind was cold.", "It was quiet.",
          "The sun was warm.", "It rained all night.", "The day was long.", "It was late.",
          "The road was empty.", "It was very cold."]
OPENINGS = ["The", "Then the", "Today the", "Yesterday the", "Later the", "At night the",
            "In the morning the", "Once the"]
PLACE = {"cat": "mat", "dog": "rug", "bird": "branch", "cow": "grass", "horse": "hay", "duck": "pond",
         "frog": "rock", "owl": "roof", "bear": "log", "sheep": "hill"}
REST_VERBS = ["sat", "slept", "lay", "rested", "stood", "waited", "sits", "sleeps"]
HELD_OUT_REST = {("cat", "lay"), ("cat", "waited"), ("dog", "sat"), ("dog", "stood"), ("bird", "slept"),
                 ("bird", "rested"), ("cow", "sits"), ("horse", "sleeps"), ("duck", "stood"),
                 ("frog", "waited"), ("owl", "sleeps"), ("bear", "sat"), ("sheep", "rested"),
                 ("cow", "lay"), ("frog", "slept"), ("owl", "stood")}

ROLE_NOUNS = ["cat", "mouse", "dog", "fox", "bird", "frog", "duck", "owl", "bear", "wolf", "lion",
              "pig", "goat", "rabbit"]
ROLE_VERBS = ["chased", "followed", "scared", "watched", "pushed", "helped", "kicked", "pulled",
              "attacked", "called"]
ROLE_FORMS = [  # (text before the answer, who the answer is)
    ("The {O} ran from the", "S"), ("The {O} was {verb} by the", "S"), ("The {S} {verb} the", "O"),
    ("Then the {S} looked at the", "O"), ("The one who {verb} was the", "S"),
    ("The one who was {verb} was the", "O")]
HELD_OUT_NOUN_PAIRS = {frozenset(p) for p in [("cat", "mouse"), ("dog", "fox"), ("bird", "owl"), ("wolf", "pig"),
                                              ("lion", "goat"), ("bear", "rabbit"), ("frog", "duck"),
                                              ("cat", "wolf"), ("mouse", "lion"), ("fox", "goat"),
                                              ("dog", "bear"), ("owl", "rabbit")]}

NAMES = ["Mary", "John", "Tom", "Anna", "Paul", "Sarah", "James", "Emma", "David", "Lisa", "Mark", "Kate",
         "Peter", "Amy", "Jack", "Sam", "Ben", "Max", "Lucy", "Alice"]
IOI_INTROS = ["When", "After", "While"]
IOI_WENT = ["went", "ran", "walked"]
IOI_PLACES = ["store", "park", "school", "beach", "shop", "market", "office", "garden"]
IOI_OBJECTS = ["drink", "book", "ball", "gift", "letter", "cake", "apple", "key", "pen", "cup", "hat", "map"]
IOI_GIVE = ["gave", "handed", "threw", "brought", "showed", "passed", "sold"]
HELD_OUT_NAME_PAIRS = {frozenset(p) for p in [("Mary", "John"), ("Tom", "Anna"), ("Paul", "Sarah"),
                                              ("James", "Emma"), ("David", "Lisa"), ("Mark", "Kate"),
                                              ("Peter", "Amy"), ("Jack", "Sam"), ("Ben", "Max"),
                                              ("Lucy", "Alice"), ("Mary", "Ben"), ("John", "Lucy"),
                                              ("Emma", "Jack"), ("Kate", "Paul")]}

REPEAT_WORDS = ["river", "stone", "king", "tree", "door", "fish", "star", "moon", "boat", "car", "road",
                "house", "lamp", "bell", "horn", "shell", "cloud", "song", "milk", "bread", "egg", "salt",
                "gold", "wood", "glass", "paper", "clock", "rose", "corn", "forest", "lake", "box", "wall",
                "chair", "coin", "ring", "bag", "leaf", "nest", "snow", "rain", "sky", "night", "day"]

MIXTURE = {"filler": 0.08, "fixed": 0.17, "role": 0.35, "ioi": 0.20, "repeat": 0.20}
REPEAT_WARMUP = 0.15  # fraction of training with repeats at 0.50


def mixture(progress: float = 1.0) -> dict[str, float]:
    """Episode-type weights at this fraction of training (repeats first, then MIXTURE)."""
    if progress >= REPEAT_WARMUP:
        return dict(MIXTURE)
    rest = {k: v for k, v in MIXTURE.items() if k != "repeat"}
    total = sum(rest.values())
    return {**{k: 0.5 * v / total for k, v in rest.items()}, "repeat": 0.5}


def _cap(opening: str) -> str:
    return opening[0].upper() + opening[1:]


# ---- episodes -----------------------------------------------------------------------------------

def fixed_prompt(opening: str, animal: str, verb: str) -> tuple[str, str]:
    return f"{opening} {animal} {verb} on the", " " + PLACE[animal]


def role_prompt(S: str, O: str, verb: str, form: int, passive: bool = False, opening: str = "The") -> tuple[str, str]:
    story = f"{opening} {O} was {verb} by the {S}." if passive else f"{opening} {S} {verb} the {O}."
    text, who = ROLE_FORMS[form]
    return story + " " + text.format(S=S, O=O, verb=verb), " " + (S if who == "S" else O)


def ioi_prompt(A: str, B: str, subject_first: bool, intro: str, went: str, place: str, give: str,
               obj: str) -> tuple[str, str]:
    """subject_first: the giver is A (the first name), so the answer is B; else the giver is B."""
    X, Y = (A, B) if subject_first else (B, A)
    return f"{intro} {A} and {B} {went} to the {place}, {X} {give} the {obj} to", " " + Y


def repeat_words(rng: random.Random, k: int, r: int) -> list[str]:
    words = rng.sample(REPEAT_WORDS, k)
    return words * r


def episode(kind: str, rng: random.Random) -> str:
    if kind == "filler":
        return rng.choice(FILLER)
    if kind == "fixed":
        while (pair := (rng.choice(list(PLACE)), rng.choice(REST_VERBS))) in HELD_OUT_REST:
            pass
        text, ans = fixed_prompt(_cap(rng.choice(OPENINGS)), *pair)
        return text + ans + "."
    if kind == "role":
        while frozenset(pair := rng.sample(ROLE_NOUNS, 2)) in HELD_OUT_NOUN_PAIRS:
            pass
        text, ans = role_prompt(pair[0], pair[1], rng.choice(ROLE_VERBS), rng.randrange(len(ROLE_FORMS)),
                                passive=rng.random() < 0.25, opening=_cap(rng.choice(OPENINGS)))
        return text + ans + "."
    if kind == "ioi":
        while frozenset(pair := rng.sample(NAMES, 2)) in HELD_OUT_NAME_PAIRS:
            pass
        text, ans = ioi_prompt(pair[0], pair[1], rng.random() < 0.5, rng.choice(IOI_INTROS), rng.choice(IOI_WENT),
                               rng.choice(IOI_PLACES), rng.choice(IOI_GIVE), rng.choice(IOI_OBJECTS))
        return text + ans + "."
    if kind == "repeat":
        return " ".join(repeat_words(rng, rng.randint(3, 8), rng.randint(2, 4))) + "."
    raise ValueError(f"unknown episode kind {kind!r}")


@lru_cache(maxsize=200_000)
def _encode(text: str) -> tuple[int, ...]:
    return tuple(Tokenizer.default().encode(text))


def row_tokens(rng: random.Random, length: int, progress: float = 1.0) -> list[int]:
    """One training row of exactly `length` GPT-2 ids: [BOS?] episode episode ... (cut at `length`)."""
    weights = mixture(progress)
    kinds, probs = list(weights), list(weights.values())
    ids = [Tokenizer.default().bos_token_id] if rng.random() < 0.5 else []
    first = True
    while len(ids) < length:
        text = episode(rng.choices(kinds, probs)[0], rng)
        ids.extend(_encode(text if first else " " + text))
        first = False
    return ids[:length]


def row_text(rng: random.Random, length: int, progress: float = 1.0) -> str:
    return Tokenizer.default().decode(row_tokens(rng, length, progress))


# ---- vocabulary ---------------------------------------------------------------------------------

def all_words() -> list[str]:
    """Every content word of the grammar (each must be one GPT-2 token after a space)."""
    words = [*PLACE, *PLACE.values(), *REST_VERBS, *ROLE_NOUNS, *ROLE_VERBS, *NAMES, *IOI_PLACES,
             *IOI_OBJECTS, *IOI_GIVE, *IOI_WENT, *REPEAT_WORDS]
    return list(dict.fromkeys(words))


def check_vocabulary() -> None:
    tok = Tokenizer.default()
    for word in all_words():
        tok.to_single_token(" " + word)  # raises, naming the pieces, if not one token


@lru_cache(maxsize=1)
def used_ids() -> tuple[int, ...]:
    """Sorted ids of every token the corpus can produce (BOS included): the rows trained."""
    tok = Tokenizer.default()
    texts = [*FILLER, ENDOFTEXT, ".", ","]
    for opening in OPENINGS:
        texts += [opening, " " + opening, _cap(opening), " " + _cap(opening)]
    texts += [f" {t}" for t in ("on the", "was by the", "ran from the", "looked at the", "one who was",
                                "and to the", "went", ",")]
    texts += [" " + w for w in all_words()] + REPEAT_WORDS + IOI_INTROS + [" " + w for w in IOI_INTROS]
    texts += [" " + f for f in FILLER]
    ids = {i for t in texts for i in tok.encode(t)}
    # Everything a generated row can contain must be in the table: check on a sample.
    rng = random.Random(0)
    for _ in range(300):
        missing = set(row_tokens(rng, 128)) - ids
        assert not missing, f"corpus tokens missing from used_ids: {[tok.decode([i]) for i in missing]}"
    for items in eval_sets(n_role=12, n_ioi=12, n_repeat=4).values():
        for item in items:
            missing = set(tok.encode(item["prompt"] + item["answer"])) - ids
            assert not missing, f"eval tokens missing from used_ids: {[tok.decode([i]) for i in missing]}"
    return tuple(sorted(ids))


# ---- held-out evaluation sets -------------------------------------------------------------------

def preamble(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def _variants(rng: random.Random, text: str, answer: str, base: dict, preambles=(0, 1, 2, 3)) -> list[dict]:
    """The prompt with each preamble length, each with and without a leading <|endoftext|>."""
    out = []
    for n in preambles:
        pre = preamble(rng, n)
        for bos in (False, True):
            out.append({**base, "prompt": (pre + " " + text) if n else text, "answer": answer, "bos": bos,
                        "preamble": n})
    return out


def eval_sets(seed: int = 1234, n_role: int = 120, n_ioi: int = 120, n_repeat: int = 64) -> dict[str, list[dict]]:
    """Held-out prompts by task. Each item: prompt (text, no BOS), answer (' word'), bos, preamble,
    and for role items `twin` (a key shared by a prompt and its role-swapped twin)."""
    rng = random.Random(seed)
    sets: dict[str, list[dict]] = {"fixed": [], "role": [], "ioi": [], "repeat": []}
    for i, (animal, verb) in enumerate(sorted(HELD_OUT_REST)):
        opening = _cap(OPENINGS[i % len(OPENINGS)])
        text, ans = fixed_prompt(opening, animal, verb)
        sets["fixed"] += _variants(rng, text, ans, {"pair": f"{animal}/{verb}"})
    pairs = sorted(tuple(sorted(p)) for p in HELD_OUT_NOUN_PAIRS)
    for i in range(n_role):
        a, b = pairs[i % len(pairs)]
        verb, form = rng.choice(ROLE_VERBS), rng.randrange(len(ROLE_FORMS))
        passive, opening = rng.random() < 0.25, _cap(rng.choice(OPENINGS))
        for swap, (S, O) in enumerate([(a, b), (b, a)]):
            text, ans = role_prompt(S, O, verb, form, passive, opening)
            sets["role"] += _variants(rng, text, ans, {"twin": i, "swap": swap, "form": form, "passive": passive,
                                                       "S": S, "O": O}, preambles=(0, 1, 3))
    name_pairs = sorted(tuple(sorted(p)) for p in HELD_OUT_NAME_PAIRS)
    for i in range(n_ioi):
        a, b = name_pairs[i % len(name_pairs)]
        A, B = (a, b) if rng.random() < 0.5 else (b, a)
        text, ans = ioi_prompt(A, B, rng.random() < 0.5, rng.choice(IOI_INTROS), rng.choice(IOI_WENT),
                               rng.choice(IOI_PLACES), rng.choice(IOI_GIVE), rng.choice(IOI_OBJECTS))
        sets["ioi"] += _variants(rng, text, ans, {"pair": f"{A}/{B}"}, preambles=(0, 2))
    for i in range(n_repeat):
        k = rng.randint(4, 8)
        words = rng.sample(REPEAT_WORDS, k)
        # Predict each word of the second copy after its first word: prompt ends just before it.
        for j in range(1, k):
            text = " ".join(words + words[:j])
            sets["repeat"] += _variants(rng, text, " " + words[j], {"seq": i, "k": k, "j": j}, preambles=(0, 2))
    return sets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args(argv)
    check_vocabulary()
    rng = random.Random(args.seed)
    for _ in range(args.rows):
        print(repr(row_text(rng, args.length)))
    print(f"{len(used_ids())} token ids used; eval sizes:",
          {k: len(v) for k, v in eval_sets().items()})


if __name__ == "__main__":
    main()

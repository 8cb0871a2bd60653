"""Role, position or word (minitx.roles): known answers on hand-built models, the key maps, the classification
rule, and families built from role-swap datasets."""

import pytest
import torch

from minitx import datasets as D
from minitx import roles as R
from minitx.stats import MIN_PROMPTS, Interval
from minitx.tokenizer import Tokenizer
from tests import handbuilt as HB


def _iv(low, high):
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    return Interval(t((low + high) / 2), t(low), t(high), n=30)


def _prompt(tokens, labels, query=None):
    return R.Labelled(tuple(int(t) for t in tokens), tuple(labels), query or labels[-1])


def induction_families(n_families: int = 24, seed: int = 0, lexical: int | None = None):
    """Families on [BOS] + A + A[:m] (labels BOS, a0..a11, b0..b(m-1); the query is the last token).
    swap: two first-copy tokens exchange places: the one after the query's earlier occurrence (the lexical
    token when given) and the last; move: a spare token z1 after BOS and z2 before the query (every key moves in absolute
    position and relative to the query; the labels stay with their tokens)."""
    g = torch.Generator().manual_seed(seed)
    families = []
    for _ in range(n_families):
        order = torch.randperm(HB.BOS, generator=g)
        if lexical is not None:  # the lexical token in the first copy only, at a slot >= m
            order = torch.cat([order[order != lexical][:HB.N - 1], torch.tensor([lexical]), order[order != lexical][HB.N - 1:]])
        A, spare = order[:HB.N].tolist(), order[HB.N:].tolist()
        m = int(torch.randint(3, 9, (1,), generator=g))
        labels = ["BOS"] + [f"a{i}" for i in range(HB.N)] + [f"b{i}" for i in range(m)]
        base = _prompt([HB.BOS] + A + A[:m], labels)
        i, j = (m, HB.N - 1) if lexical is None else (HB.N - 1, m + 1)  # swap slots i and j of the first copy
        swapped = list(A)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        swap = _prompt([HB.BOS] + swapped + A[:m], labels)
        z1, z2 = spare[:2]
        moved = _prompt([HB.BOS, z1] + A + A[:m - 1] + [z2, A[m - 1]],
                        ["BOS", "z1"] + labels[1:-1] + ["z2", labels[-1]])
        families.append([R.Variant("swap", base, swap), R.Variant("move", base, moved)])
    return families


def lexical_model(token: int):
    """The hand-built model with layer 0's head replaced by one that attends to `token` wherever it is: a
    constant query (b_Q) against a key reading only that token's embedding, score 30 * 1[t_k = token]."""
    model = HB.model()
    with torch.no_grad():
        W = model.blocks[0].attn.W_QKV.view(HB.D_MODEL, 3, HB.D_MODEL)
        b = model.blocks[0].attn.b_QKV.view(3, HB.D_MODEL)
        W[:, 0], W[:, 1] = 0.0, 0.0
        b[0, 0] = HB.C
        W[HB.TOK + token, 1, 0] = 1.0
    return model


def test_handbuilt_previous_token_head_is_positional_and_induction_head_follows_the_slot():
    result = R.head_roles(HB.model(), induction_families(), resamples=1000)
    assert result.classes == [["position"], ["role"]]
    rw, rp, _ = result.intervals
    # by construction: L0.0 attends to q - 1 (z2 in the moved prompt), L1.0 to the slot after the earlier copy
    assert float(rp[0, 0].high) < -0.95 and float(rp[1, 0].low) > 0.95
    assert float(rw[1, 0].low) > 0.95 and abs(float(rw[0, 0].estimate)) < 0.05  # the swap is not near q - 1
    assert result.intervals[2] is None and result.n_families == 24


def test_lexical_head_follows_its_word():
    token = 5
    result = R.head_roles(lexical_model(token), induction_families(lexical=token), resamples=1000)
    rw, rp, _ = result.intervals
    assert result.classes[0][0] == "word"
    assert float(rw[0, 0].high) < -0.95 and float(rp[0, 0].low) > 0.95


def test_key_maps_of_a_passive_and_a_swap():
    tok = Tokenizer.default()
    pair = D.make_pair("who", "active", "cat", "mouse", "chased")
    fam = R.story_families([pair], tok, prepend_bos=True)[0]
    swap, move, shift = fam
    maps = R.key_maps(swap.base, swap.variant)
    S, O = swap.base.labels.index("S"), swap.base.labels.index("O")
    assert (S, S) in maps["role"] and (S, O) in maps["word"] and (O, S) in maps["word"]
    maps = R.key_maps(move.base, move.variant)
    S2 = move.variant.labels.index("S")
    assert (S, S2) in maps["role"] and (S, S2) in maps["word"] and (S, S) in maps["absolute"]
    assert (S, S + move.variant.q - move.base.q) in maps["relative"] and (0, 0) in maps["relative"]  # BOS stays
    maps = R.key_maps(shift.base, shift.variant)
    k = shift.variant.q - shift.base.q
    assert maps["role"][1:] == [(a, b) for a, b in maps["relative"] if a != 0]  # all shift by k, BOS stays
    assert k == len(tok.encode(D.FILLERS[7]))
    for name, pairs in maps.items():  # one to one
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs}), name


def test_overlap_is_one_minus_total_variation_for_a_bijection():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 6, generator=g).softmax(-1), torch.rand(3, 6, generator=g).softmax(-1)
    perm = [(k, (k + 2) % 6) for k in range(6)]
    tv = 0.5 * (a - b[:, [(k + 2) % 6 for k in range(6)]]).abs().sum(-1)
    torch.testing.assert_close(R.overlap(a, b, perm), 1 - tv)


@pytest.mark.parametrize("rw, rp, ra, expected", [
    ((0.3, 0.6), (0.2, 0.5), None, "role"),
    ((-0.6, -0.3), (0.2, 0.5), None, "word"),
    ((-0.1, 0.1), (-0.9, -0.5), None, "position"),
    ((-0.1, 0.1), (-0.05, 0.05), (-0.8, -0.4), "position"),  # absolute position: only the shift shows it
    ((0.3, 0.6), (0.05, 0.5), None, "not established"),      # role - position straddles the threshold
    ((0.05, 0.6), (0.2, 0.5), None, "not established"),      # role - word straddles it
    ((0.3, 0.6), (0.2, 0.5), (-0.8, -0.4), "not established"),  # follows the role, yet stays in place: conflict
    ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), "not established"),  # e.g. a BOS sink: every hypothesis keeps it
])
def test_classify(rw, rp, ra, expected):
    assert R.classify(_iv(*rw), _iv(*rp), None if ra is None else _iv(*ra), threshold=0.1) == expected


def test_classify_needs_enough_families():
    """Below stats.MIN_PROMPTS families no class is drawn, even from intervals that would decide; at it, one is."""
    clear = lambda low, high, n: Interval(torch.tensor((low + high) / 2), torch.tensor(low), torch.tensor(high), n=n)
    few = "too few prompts (n = 7; at least 8 needed to decide)"
    assert MIN_PROMPTS == 8
    assert R.classify(clear(0.3, 0.6, 7), clear(0.2, 0.5, 7)) == few
    assert R.classify(None, clear(-0.9, -0.5, 7)) == few  # the contrasts measured decide n
    assert R.classify(clear(0.3, 0.6, 8), clear(0.2, 0.5, 8)) == "role"
    assert R.classify(None, clear(-0.9, -0.5, 8)) == "position"
    assert R.classify(None, None) == "not established"  # nothing measured: nothing to count


def test_head_roles_over_too_few_families_print_no_class():
    """The hand-built heads over 3 families: intervals as clear as over 24, yet no class; over 8, their classes."""
    few = R.head_roles(HB.model(), induction_families(3), resamples=200)
    assert few.classes == [["too few prompts (n = 3; at least 8 needed to decide)"]] * 2 and few.heads("role") == []
    assert float(few.intervals[1][0, 0].high) < -0.95 and float(few.intervals[1][1, 0].low) > 0.95  # still shown
    enough = R.head_roles(HB.model(), induction_families(MIN_PROMPTS), resamples=200)
    assert enough.classes == [["position"], ["role"]]


def test_families_must_match():
    fams = induction_families(2)
    with pytest.raises(ValueError, match="same kinds"):
        R.head_roles(HB.model(), [fams[0], fams[1][:1]])
    with pytest.raises(ValueError, match="unique label"):
        R.Labelled((1, 2), ("a", "a"), "a")


ENGLISH = __import__("pathlib").Path(__file__).resolve().parents[1] / "weights" / "english-6l"


@pytest.mark.skipif(not ENGLISH.is_dir(), reason="weights/english-6l is not present")
def test_shipped_model_heads():
    """Measured on the shipped model (64 families, BOS; scripts/head_roles.py prints the table): head 5.1 follows
    the role (role - word 0.95 [0.93, 0.97], role - position 0.44 [0.32, 0.56]); heads 2.0, 2.1, 3.2 and 4.1
    follow the word; no head reads absolute positions."""
    import minitx
    model = minitx.load(ENGLISH)
    pairs = D.role_swap_pairs(64, seed=0)
    result = R.head_roles(model, R.story_families(pairs, Tokenizer.default()), resamples=1000)
    assert result.heads("role") == [(5, 1)]
    assert {(2, 0), (2, 1), (3, 2), (4, 1)} <= set(result.heads("word"))
    assert result.heads("position") == [] and float(result.intervals[2].low.min()) > 0

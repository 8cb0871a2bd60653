"""Prompt-pair datasets (minitx.datasets): well-formed role-swap pairs for the shipped model, batches, labels,
JSONL round trip and its errors."""

import json
import sys
from pathlib import Path

import pytest
import torch

import minitx
from minitx import datasets as D
from minitx.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
ENGLISH = ROOT / "weights" / "english-6l"
sys.path.insert(0, str(ROOT / "scripts"))
import make_corpus  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.default()


def test_words_are_the_corpus_role_words():
    assert list(D.NOUNS) == make_corpus.ROLE_NOUNS
    assert list(D.VERBS) == make_corpus.ROLE_VERBS
    assert list(D.FILLERS) == make_corpus.FILLER


def test_make_pair_is_the_corpus_prompt():
    for template, form in (("who", 4), ("who_was", 5)):
        for passive in (False, True):
            pair = D.make_pair(template, "passive" if passive else "active", "cat", "mouse", "chased")
            text, answer = make_corpus.role_prompt("cat", "mouse", "chased", form, passive)
            assert (pair.clean, pair.answer) == (text, answer)
            twin, twin_answer = make_corpus.role_prompt("mouse", "cat", "chased", form, passive)
            assert (pair.corrupted, pair.wrong) == (twin, twin_answer)


@pytest.mark.skipif(not ENGLISH.is_dir(), reason="weights/english-6l is not present")
def test_at_least_50_well_formed_pairs_that_the_shipped_model_answers(tok):
    model = minitx.load(ENGLISH)
    assert D.known_words(D.NOUNS, tok, model) == list(D.NOUNS)  # every default word was trained
    assert D.known_words(["cat", "zebra", "hippopotamus"], tok, model) == ["cat"]  # blank / several tokens
    pairs = D.role_swap_pairs(64, voices=("active", "passive"), fillers=("", "It was late."), seed=3)
    assert len(pairs) == 64 and len({p.clean for p in pairs}) == 64
    batches = D.to_batches(pairs, tok, prepend_bos=True)
    assert sum(len(b) for b in batches) == 64
    for batch in batches:
        assert batch.clean.shape == batch.corrupted.shape and batch.clean[:, 0].eq(tok.bos_token_id).all()
        for clean, corrupted, answer, wrong in zip(batch.clean, batch.corrupted, batch.answer, batch.wrong):
            assert answer != wrong
            assert D.is_swap(clean, corrupted, int(answer), int(wrong))
        with torch.no_grad():
            m = batch.metric()
            clean_ld, corrupted_ld = m(model(batch.clean)), m(model(batch.corrupted))
        # the model does the task on every pair: the clean answer wins on clean, the other on corrupted
        assert bool((clean_ld > 0).all()) and bool((corrupted_ld < 0).all()), (clean_ld, corrupted_ld)


def test_swap_check(tok):
    clean, corrupted, a, w = D.pair_tokens(D.make_pair("who", "active", "cat", "dog", "helped"), tok, False)
    clean, corrupted = torch.tensor(clean), torch.tensor(corrupted)
    assert D.is_swap(clean, corrupted, a, w)
    assert not D.is_swap(clean, clean, a, w)
    assert not D.is_swap(clean, corrupted, a, tok.to_single_token(" fox"))  # fox occurs nowhere


def test_batches_group_by_length_and_to_batch_refuses_mixed_lengths(tok):
    pairs = D.role_swap_pairs(12, voices=("active", "passive"), fillers=("", "It was quiet."))
    lengths = {len(D.pair_tokens(p, tok, False)[0]) for p in pairs}
    batches = D.to_batches(pairs, tok, prepend_bos=False)
    assert sorted(b.clean.shape[1] for b in batches) == sorted(lengths)
    for batch in batches:  # each group keeps the dataset's order
        assert batch.pairs == [p for p in pairs if len(D.pair_tokens(p, tok, False)[0]) == batch.clean.shape[1]]
    if len(lengths) > 1:
        with pytest.raises(ValueError, match="different lengths"):
            D.to_batch(pairs, tok, False)


def test_bad_pairs_are_refused_with_the_reason(tok):
    with pytest.raises(ValueError, match="3 tokens, not 1"):
        D.pair_tokens(D.PromptPair("The cat", "The dog", " hippopotamus", " cat"), tok, False)
    with pytest.raises(ValueError, match="same length"):
        D.pair_tokens(D.PromptPair("The cat sat", "The cat", " cat", " dog"), tok, False)
    with pytest.raises(ValueError, match="differ"):
        D.make_pair("who", "active", "cat", "cat", "chased")
    with pytest.raises(ValueError, match="template"):
        D.make_pair("what", "active", "cat", "dog", "chased")
    with pytest.raises(ValueError, match="give only"):
        D.role_swap_pairs(10_000, nouns=("cat", "dog"))


def test_bad_arguments_name_what_is_allowed():
    """The argument checks of minitx.checks: one line naming the argument and what it may be."""
    with pytest.raises(ValueError, match=r"^template=\['who'\]; allowed: 'who', "):  # a list: not a TypeError
        D.make_pair(["who"], "active", "cat", "dog", "chased")
    with pytest.raises(ValueError, match=r"^voice='middle'; allowed: 'active', "):
        D.make_pair("who", "middle", "cat", "dog", "chased")
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=r"^n=.*: the number of pairs \(None: all of them\), an int >= 1$"):
            D.role_swap_pairs(bad)


def test_labels_name_every_token(tok):
    pair = D.make_pair("who_was", "passive", "cat", "mouse", "chased", filler="It was late.")
    ids, labels = D.labelled_tokens(pair, tok, prepend_bos=True)
    assert ids == tok.to_tokens(pair.clean, prepend_bos=True)[0].tolist() and len(labels) == len(set(labels))
    words = dict(zip(labels, tok.to_str_tokens(ids)))
    assert (words["BOS"], words["S"], words["O"], words["verb"], words["q.verb"]) == (
        "<|endoftext|>", " cat", " mouse", " chased", " chased")
    assert labels.index("O") < labels.index("S")  # passive: the doer comes second
    ids2, labels2 = D.labelled_tokens(pair, tok, prepend_bos=True, corrupted=True)
    assert labels2 == labels and dict(zip(labels2, tok.to_str_tokens(ids2)))["S"] == " mouse"
    with pytest.raises(ValueError, match="not generated"):
        D.labelled_tokens(D.PromptPair("a", "b", " c", " d"), tok, True)


def test_jsonl_round_trip_and_errors(tmp_path):
    pairs = D.role_swap_pairs(5, voices=("passive",)) + [D.PromptPair("The cat", "The dog", " sat", " ran")]
    path = D.write_jsonl(pairs, tmp_path / "pairs.jsonl")
    assert D.read_jsonl(path) == pairs
    assert set(json.loads(path.read_text().splitlines()[-1])) == {"clean", "corrupted", "answer", "wrong"}
    bad = tmp_path / "bad.jsonl"
    for text, message in (('{"clean": "a", "corrupted": "b", "answer": " c"}', "line 1: missing wrong"),
                          ('\n[1, 2]', "line 2: expected an object"),
                          ('{"clean": "a", "corrupted": "b", "answer": " c", "wrong": " d", "x": "1"}', "unknown field"),
                          ('{"clean": 1, "corrupted": "b", "answer": " c", "wrong": " d"}', "must be a string"),
                          ('{not json', "not JSON"), ("", "no pairs")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            D.read_jsonl(bad)

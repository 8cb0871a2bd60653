"""Tests for minitx.tokenizer: published ids, id-for-id parity with transformers, BOS helpers."""

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minitx.tokenizer as tokmod
from minitx.tokenizer import DATA_DIR, Tokenizer

EOT = 50256

# Varied text: prose, code, accents, CJK, emoji, whitespace runs, digits, contractions, EOT.
CORPUS = [
    "Hello world",
    "When Mary and John went to the store, John gave a drink to",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))\n",
    "class A:\n\tpass\r\n",
    "Café naïve résumé Ångström façade",
    "日本語のテキスト、中文文本。한국어",
    "emoji 🤗🎉👍🏽 and flags 🇫🇷 and ZWJ 👨‍👩‍👧",
    "   leading spaces, trailing spaces   ",
    "tabs\t\tand\n\n\nnewlines \n \n  x",
    "1234567890 3.14159 1,000,000 0x1F",
    "I'm, you're, he's, we've, they'd, I'll, can't; I'S I'M YOU'RE 'tis",
    "text<|endoftext|>more text",
    " <|endoftext|> spaced <|endoftext|><|endoftext|>",
    "<|endoftext|>",
    "<|endoftext",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.default()


@pytest.fixture(scope="module", params=["GPT2Tokenizer", "GPT2TokenizerFast"])
def hf(request, tmp_path_factory):
    """transformers' GPT-2 tokenizer built offline from the shipped files."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf_gpt2")
    shutil.copy(DATA_DIR / "encoder.json", d / "vocab.json")
    shutil.copy(DATA_DIR / "vocab.bpe", d / "merges.txt")
    # from_pretrained on a local folder works in transformers 4 and 5. (In 5,
    # GPT2Tokenizer(vocab_file=..., merges_file=...) silently ignores both files.)
    hf_tok = getattr(transformers, request.param).from_pretrained(str(d), local_files_only=True)
    assert hf_tok.encode("Hello world") == [15496, 995]  # guard against an empty vocabulary
    return hf_tok


def test_shipped_files_match_sha256sums():
    assert DATA_DIR.parent.parent == Path(tokmod.__file__).parent  # read from the package
    lines = (DATA_DIR / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split()) for line in lines if line.strip())
    assert set(sums) == {"encoder.json", "vocab.bpe"}
    for name, digest in sums.items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest


def test_vocabulary_and_special_ids(tok):
    assert tok.vocab_size == 50257
    assert tok.bos_token_id == tok.eos_token_id == EOT
    assert Tokenizer.default() is tok  # cached


@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [15496, 995]),  # the published example
        (" Hello world", [18435, 995]),
        ("When Mary and John went to the store, John gave a drink to",
         [2215, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284]),
        ("I'm here, they're THERE'S", [40, 1101, 994, 11, 484, 821, 34702, 6, 50]),
        ("  x\n\n\ty", [220, 2124, 628, 197, 88]),
        ("2024 = 1234567", [1238, 1731, 796, 17031, 2231, 3134]),
        ("héllo 日本語 🤗", [71, 2634, 18798, 10545, 245, 98, 17312, 105, 45739, 252, 12520, 97, 245]),
        ("a<|endoftext|>b", [64, EOT, 65]),
        ("", []),
    ],
)
def test_known_ids(tok, text, ids):  # pins computed with transformers 5.24
    assert tok.encode(text) == ids


@pytest.mark.parametrize("text", CORPUS)
def test_matches_transformers_and_round_trips(tok, hf, text):
    ids = tok.encode(text)
    assert ids == hf.encode(text)
    assert tok.decode(ids) == text == hf.decode(ids)


def test_decode_partial_utf8_like_transformers(tok, hf):
    ids = tok.encode("🤗")  # one character, three tokens of partial UTF-8
    assert len(ids) == 3
    for i in range(1, 4):
        assert tok.decode(ids[:i]) == hf.decode(ids[:i])
    assert tok.to_str_tokens(ids) == ["\ufffd"] * 3


# Characters unassigned in Python's Unicode tables (Cn) are left out: `regex` and the Rust
# tokenizer behind transformers use different Unicode versions, so a character added since
# (e.g. U+324DA, CJK Extension J) is a letter for one and not for the other.
text_pieces = st.one_of(
    st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=12),
    st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "'s", "'S", "'ll", " 42", "<|endoftext|>"]),
)


@settings(max_examples=200, deadline=None)
@given(text=st.lists(text_pieces, max_size=8).map("".join))
def test_random_text_matches_transformers(tok, hf, text):
    ids = tok.encode(text)
    assert ids == hf.encode(text)
    assert tok.decode(ids) == text


def merge_by_the_rule(tok, word: str) -> tuple:
    """GPT-2's BPE as its definition reads: merge every occurrence of the lowest-ranked pair, left to right,
    until no pair was ever merged in training (quadratic in the word's length)."""
    parts = list(word)
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda pair: tok.ranks.get(pair, float("inf")))
        if best not in tok.ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if tuple(parts[i:i + 2]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return tuple(tok.encoder[p] for p in parts)


@settings(max_examples=300, deadline=None)
@given(word=st.text(st.sampled_from(list("aab eéACGT0\u00e9\u6f22")), min_size=1, max_size=80))
def test_bpe_merges_as_the_rule_says(tok, word):
    """The heap-ordered merge (O(n log n), for long unbroken words) gives the rule's tokens."""
    chars = "".join(tok.byte_encoder[b] for b in word.encode())
    tok.cache.clear()
    assert tok._bpe(chars) == merge_by_the_rule(tok, chars)


def test_long_unbroken_words_match_transformers(tok, hf):
    import random
    rng = random.Random(1)
    for alphabet in ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/", "ACGT", "ab"):
        text = "".join(rng.choice(alphabet) for _ in range(3000))
        assert tok.encode(text) == hf.encode(text)


def test_from_directory_reads_checkpoint_layout(tmp_path):
    shutil.copy(DATA_DIR / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(DATA_DIR / "vocab.bpe", tmp_path / "merges.txt")
    t = Tokenizer.from_directory(tmp_path)
    assert t.encode(CORPUS[1]) == Tokenizer.default().encode(CORPUS[1])
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        Tokenizer.from_directory(tmp_path / "missing")


def test_from_files(tok):
    t = Tokenizer.from_files(DATA_DIR / "encoder.json", DATA_DIR / "vocab.bpe")
    assert t.encode(CORPUS[2]) == tok.encode(CORPUS[2])


def test_decode_rejects_unknown_id(tok):
    with pytest.raises(ValueError, match="50257"):
        tok.decode([50257])


def test_to_tokens_bos(tok):
    assert tok.to_tokens("Hello world", prepend_bos=False).tolist() == [[15496, 995]]
    out = tok.to_tokens(["Hello world", " Hello world"], prepend_bos=True)
    assert out.dtype == torch.long
    assert out.tolist() == [[EOT, 15496, 995], [EOT, 18435, 995]]
    assert tok.to_tokens("", prepend_bos=True).tolist() == [[EOT]]


def test_to_tokens_errors(tok):
    with pytest.raises(TypeError):
        tok.to_tokens("Hello")  # the BOS convention must be stated
    with pytest.raises(TypeError, match="prepend_bos"):
        tok.to_tokens("Hello", prepend_bos=None)
    with pytest.raises(ValueError, match="empty prompt"):
        tok.to_tokens("", prepend_bos=False)
    with pytest.raises(ValueError, match=r"different lengths \[2, 3\].*to_tokens_padded"):
        tok.to_tokens(["Hello world", "Hello world!"], prepend_bos=False)
    with pytest.raises(ValueError, match="no prompts"):
        tok.to_tokens([], prepend_bos=True)


@pytest.mark.parametrize("side", ["right", "left"])
def test_to_tokens_padded(tok, side):
    tokens, mask = tok.to_tokens_padded(["Hello world!", "Hi"], prepend_bos=True, padding_side=side)
    long_row, short_row = [EOT, 15496, 995, 0], [EOT, 17250]
    pad = [EOT, EOT]
    assert tokens.tolist()[0] == long_row
    assert tokens.tolist()[1] == (short_row + pad if side == "right" else pad + short_row)
    assert mask.dtype == torch.long
    assert mask.tolist()[1] == ([1, 1, 0, 0] if side == "right" else [0, 0, 1, 1])
    assert mask.tolist()[0] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="padding_side"):
        tok.to_tokens_padded(["Hi"], prepend_bos=True, padding_side="middle")


def test_to_string(tok):
    assert tok.to_string([15496, 995]) == "Hello world"
    assert tok.to_string(torch.tensor([15496, 995])) == "Hello world"
    batch = torch.tensor([[EOT, 15496], [EOT, 18435]])  # [batch, pos] -> one string per row
    assert tok.to_string(batch) == ["<|endoftext|>Hello", "<|endoftext|> Hello"]


def test_to_str_tokens(tok):
    assert tok.to_str_tokens(" Hello world", prepend_bos=True) == ["<|endoftext|>", " Hello", " world"]
    assert tok.to_str_tokens(" Hello world", prepend_bos=False) == [" Hello", " world"]
    assert tok.to_str_tokens([18435, 995]) == [" Hello", " world"]  # ids: prepend_bos not needed
    assert tok.to_str_tokens(torch.tensor([[18435, 995]])) == [" Hello", " world"]
    with pytest.raises(TypeError, match="prepend_bos"):
        tok.to_str_tokens("Hello")
    with pytest.raises(ValueError, match="batch of 2"):
        tok.to_str_tokens(torch.tensor([[1, 2], [3, 4]]))


def test_to_single_token(tok):
    assert tok.to_single_token(" Mary") == 5335
    assert tok.to_single_token("Mary") == 24119
    with pytest.raises(ValueError, match=r"' Hello world' is 2 tokens, not 1: \[' Hello', ' world'\]"):
        tok.to_single_token(" Hello world")
    with pytest.raises(ValueError, match="0 tokens"):
        tok.to_single_token("")


def test_word_cache_is_bounded_and_answers_stay_the_same(monkeypatch):
    tok = Tokenizer.from_directory(DATA_DIR)
    monkeypatch.setattr(tokmod, "CACHE_WORDS", 50)
    words = " ".join(f"w{i}x" for i in range(400))
    first = tok.encode(words)
    assert len(tok.cache) == 50  # the least recently used words went
    assert tok.encode(words) == first == Tokenizer.from_directory(DATA_DIR).encode(words)


def small_files(tmp_path, vocab, merges) -> tuple[Path, Path]:
    import json
    (tmp_path / "vocab.json").write_text(json.dumps(vocab) if not isinstance(vocab, str) else vocab)
    (tmp_path / "merges.txt").write_text(merges)
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


def byte_vocab() -> dict:
    vocab = {c: i for i, c in enumerate(tokmod.bytes_to_unicode().values())}
    return {**vocab, "ab": 256, "<|endoftext|>": 257}


@pytest.mark.parametrize("vocab, merges, message", [
    ("{not json", "#version: 0.2\n", "cannot read the tokenizer files"),
    ([1, 2], "#version: 0.2\n", "the vocabulary must be a JSON object of token string -> id"),
    ({**byte_vocab(), "ab": 3}, "#version: 0.2\n", "two tokens share an id"),
    ({k: v for k, v in byte_vocab().items() if k != "<|endoftext|>"}, "#version: 0.2\n", "has no '<|endoftext|>'"),
    (byte_vocab(), "#version: 0.2\na b\nb c\n", "merge 1 ('b' 'c') makes 'bc', which is not in the vocabulary"),
    (byte_vocab(), "#version: 0.2\na b c\n", "line 2: 'a b c' is not a merge 'left right'"),
])
def test_corrupt_tokenizer_files_name_the_problem(tmp_path, vocab, merges, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Tokenizer.from_files(*small_files(tmp_path, vocab, merges))


def test_small_valid_tokenizer_files_work(tmp_path):
    tok = Tokenizer.from_files(*small_files(tmp_path, byte_vocab(), "#version: 0.2\na b\n"))
    assert tok.encode("ab a") == [256, tok.encoder["Ġ"], tok.encoder["a"]]
    partial = Tokenizer.from_files(*small_files(tmp_path, {"a": 0, "<|endoftext|>": 1}, "#version: 0.2\n"))
    assert partial.encode("aa") == [0, 0] and partial.decode([0, 1]) == "a<|endoftext|>"
    with pytest.raises(ValueError, match="vocabulary has no token for 'b', so it cannot encode 'ab'"):
        partial.encode("ab")


@pytest.mark.parametrize("bad, exc, message", [
    ("x\ud800y", ValueError, r"lone surrogate '\\ud800' at index 1"),
    (None, TypeError, "text must be a str, got NoneType"),
    (b"bytes", TypeError, "text must be a str, got bytes"),
])
def test_encode_refuses_what_is_not_text(tok, bad, exc, message):
    with pytest.raises(exc, match=message):
        tok.encode(bad)


def test_to_string_of_one_id(tok):
    assert tok.to_string(256) == tok.decode([256]) and tok.to_string(torch.tensor(5)) == tok.decode([5])
    with pytest.raises(TypeError, match="to_string takes token ids"):
        tok.to_string(2.5)

"""GPT-2's byte-level BPE tokenizer, written from scratch, plus BOS-explicit tensor helpers.

What is in it:
- ``bytes_to_unicode``: the reversible byte <-> printable-character table BPE runs on.
- ``Tokenizer``: loads ``encoder.json`` + ``vocab.bpe`` (or a checkpoint's ``vocab.json`` +
  ``merges.txt``), ``encode``/``decode`` id-for-id as GPT-2 and ``transformers.GPT2Tokenizer``,
  and the helpers ``to_tokens``, ``to_tokens_padded``, ``to_string``, ``to_str_tokens`` and
  ``to_single_token``. Every helper that builds tokens from text takes a required keyword
  ``prepend_bos``: whether position 0 is ``<|endoftext|>`` changes attention and positions, so
  each caller must say which convention it uses.

The shipped files (``minitx/data/gpt2/``) are OpenAI's GPT-2 release, checked by SHA256SUMS.

References: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"
(section 2.2, byte-level BPE); OpenAI's ``gpt-2/src/encoder.py``, whose algorithm this follows.
"""

from __future__ import annotations

import collections
import functools
import heapq
import json
import numbers
from pathlib import Path

import regex
import torch

DATA_DIR = Path(__file__).parent / "data" / "gpt2"
ENDOFTEXT = "<|endoftext|>"
CACHE_WORDS = 20_000  # the word cache keeps this many recent words (about 4 MB), however much text passes

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs and punctuation runs, each with
# at most one leading space. `\s+(?!\S)` leaves the last space of a run to the next word, so
# " world" stays one token after several spaces. `regex` is needed for \p{L} / \p{N}.
PRETOKENIZE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte 0..255 to a printable character; printable Latin-1 bytes map to themselves.

    BPE merges are stored as text, so every byte needs a visible, non-space stand-in (a space
    becomes 'Ġ' = chr(256 + 32)). The other bytes take chr(256), chr(257), ... in byte order.
    """
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


class Tokenizer:
    """GPT-2 byte-level BPE. ``encode`` and ``decode`` match ``transformers.GPT2Tokenizer``."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]], source: str = "the tokenizer"):
        """encoder: token string -> id; merges: BPE pairs, earliest learned first. Checked: every id is a
        distinct int >= 0 and every merge's product is in the vocabulary."""
        check_vocabulary(encoder, merges, source)
        self.encoder = encoder
        self.decoder = {i: s for s, i in encoder.items()}
        # A merge learned earlier has a lower rank and is applied first.
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # Same ids, one per word: text repeats words, and BPE on a word is the slow part. Least recently
        # used words go first, so memory stays bounded over any amount of text.
        self.cache: collections.OrderedDict[str, tuple[int, ...]] = collections.OrderedDict()
        self.bos_token_id = self.eos_token_id = encoder[ENDOFTEXT]
        # Like HF, the special token is cut out of the text before pre-tokenizing, as is.
        self.special_split = regex.compile(f"({regex.escape(ENDOFTEXT)})")

    @classmethod
    def from_files(cls, encoder_json_path: str | Path, merges_path: str | Path) -> Tokenizer:
        try:
            encoder = json.loads(Path(encoder_json_path).read_text(encoding="utf-8"))
            lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the tokenizer files {encoder_json_path}, {merges_path}: "
                             f"{str(e).splitlines()[0][:100]}") from None
        # First line is "#version: 0.2"; each other line is "left right" (BPE tokens have no spaces).
        merges = []
        for number, line in enumerate(lines, 1):
            if line and not line.startswith("#version"):
                if len(pair := tuple(line.split())) != 2:
                    raise ValueError(f"{merges_path} line {number}: {line[:40]!r} is not a merge 'left right'")
                merges.append(pair)
        return cls(encoder, merges, f"{encoder_json_path} + {merges_path}")

    @classmethod
    def from_directory(cls, directory: str | Path) -> Tokenizer:
        """Read ``vocab.json`` + ``merges.txt`` (HF checkpoint), else ``encoder.json`` + ``vocab.bpe``."""
        d = Path(directory)
        for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (d / vocab).is_file() and (d / merges).is_file():
                return cls.from_files(d / vocab, d / merges)
        raise FileNotFoundError(f"{d} holds neither vocab.json + merges.txt nor encoder.json + vocab.bpe")

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> Tokenizer:
        """The GPT-2 tokenizer shipped with minitx, loaded once per process."""
        return cls.from_directory(DATA_DIR)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenized word (already in byte-characters)."""
        if (ids := self.cache.get(word)) is not None:
            self.cache.move_to_end(word)
            return ids
        # GPT-2's rule: repeatedly merge every occurrence of the lowest-ranked adjacent pair, left to right.
        # A pair that contains a merged symbol was learned after that merge, so it always ranks higher:
        # taking pairs from a heap by (rank, position) gives the same order, in O(n log n) rather than
        # O(n^2) for a long unbroken word. parts[i] is None once merged into its left neighbour. (A merges
        # file that broke that order, which GPT-2's never does, would get the order of transformers' fast
        # tokenizer, not of the slow one.)
        parts, n = list(word), len(word)
        following = list(range(1, n + 1))  # the next live position (n: none)
        preceding = list(range(-1, n - 1))
        heap = []

        def push(i: int, j: int) -> None:
            if (rank := self.ranks.get((parts[i], parts[j]))) is not None:
                heapq.heappush(heap, (rank, i, parts[i], parts[j]))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, i, left, right = heapq.heappop(heap)
            j = following[i]
            if parts[i] != left or j == n or parts[j] != right:
                continue  # stale: one of the two has been merged since
            parts[i], parts[j] = left + right, None
            following[i] = following[j]
            if following[i] < n:
                preceding[following[i]] = i
                push(i, following[i])
            if preceding[i] >= 0:
                push(preceding[i], i)
        try:
            ids = tuple(self.encoder[p] for p in parts if p is not None)
        except KeyError as e:  # a vocabulary without all 256 byte tokens
            raise ValueError(f"this tokenizer's vocabulary has no token for {e.args[0]!r}, so it cannot encode "
                             f"{bytes(self.byte_decoder[c] for c in word).decode('utf-8', 'replace')!r}") from None
        self.cache[word] = ids
        if len(self.cache) > CACHE_WORDS:
            self.cache.popitem(last=False)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no BOS; ``<|endoftext|>`` in the text becomes its single id."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__} {text!r:.40}")
        if bad := regex.search(r"[\ud800-\udfff]", text):  # UTF-8 cannot encode a lone surrogate
            if "\udc80" <= bad.group() <= "\udcff":  # how Python passes on a byte that is not UTF-8 (argv, files)
                raise ValueError(f"the text is not valid UTF-8: byte 0x{ord(bad.group()) - 0xDC00:02x} at index "
                                 f"{bad.start()} (a lone surrogate {bad.group()!a}); give UTF-8 text, or decode the "
                                 "source with errors='replace' first")
            raise ValueError(f"the text holds a lone surrogate {bad.group()!a} at index {bad.start()}, which is not "
                             "a Unicode character; decode the source with errors='replace' first")
        ids: list[int] = []
        for chunk in self.special_split.split(text):
            if chunk == ENDOFTEXT:
                ids.append(self.eos_token_id)
                continue
            for word in PRETOKENIZE.findall(chunk):
                ids.extend(self._bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8"))))
        return ids

    def decode(self, ids) -> str:
        """Text of a sequence of ids; bytes that are not valid UTF-8 become U+FFFD, as in HF."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"token ids must be integers, got {type(i).__name__} {i!r:.40}")
        try:
            chars = "".join(self.decoder[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in the vocabulary of {self.vocab_size}") from None
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")

    # ---- helpers with an explicit BOS convention --------------------------------------------

    def _encode_prompts(self, texts: str | list[str], prepend_bos: bool) -> list[list[int]]:
        if not isinstance(prepend_bos, bool):
            raise TypeError(f"prepend_bos must be True or False, got {prepend_bos!r}")
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (list, tuple)):
            texts = list(texts)
        else:
            raise TypeError(f"the prompt must be a string or a list of strings, got {type(texts).__name__}"
                            + (" (a tensor of ids is already tokens)" if isinstance(texts, torch.Tensor) else ""))
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"prompt {i} is {type(t).__name__} {t!r:.40}, not a string; every prompt must be text")
        if not texts:
            raise ValueError("no prompts given: expected a string or a non-empty list of strings")
        bos = [self.bos_token_id] if prepend_bos else []
        rows = [bos + self.encode(t) for t in texts]
        for t, row in zip(texts, rows):
            if not row:  # a model cannot run on zero positions
                raise ValueError(f"empty prompt {t!r} gives zero tokens; use prepend_bos=True or non-empty text")
        return rows

    def to_tokens(self, text: str | list[str], *, prepend_bos: bool) -> torch.Tensor:
        """Returns [batch, pos] token ids; a list of prompts must all have the same length."""
        rows = self._encode_prompts(text, prepend_bos)
        lengths = [len(r) for r in rows]
        if len(set(lengths)) > 1:
            raise ValueError(
                f"prompts tokenize to different lengths {lengths}; use to_tokens_padded for a batch with a mask"
            )
        return torch.tensor(rows, dtype=torch.long)

    def to_tokens_padded(
        self, texts: list[str], *, prepend_bos: bool, padding_side: str = "right"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns [batch, pos] ids padded with eos, and a [batch, pos] attention mask (1 = real token)."""
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        rows = self._encode_prompts(texts, prepend_bos)
        n_pos = max(len(r) for r in rows)
        tokens = torch.full((len(rows), n_pos), self.eos_token_id, dtype=torch.long)  # [batch, pos]
        mask = torch.zeros((len(rows), n_pos), dtype=torch.long)  # [batch, pos]
        for b, row in enumerate(rows):
            span = slice(0, len(row)) if padding_side == "right" else slice(n_pos - len(row), n_pos)
            tokens[b, span] = torch.tensor(row, dtype=torch.long)
            mask[b, span] = 1
        return tokens, mask

    def to_string(self, tokens) -> str | list[str]:
        """Text of [pos] ids (one string) or of [batch, pos] ids (one string per row)."""
        if isinstance(tokens, torch.Tensor) and tokens.dim() > 2:
            raise ValueError(f"to_string takes ids [pos] or [batch, pos], got shape {tuple(tokens.shape)}")
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens
        if isinstance(ids, numbers.Integral) and not isinstance(ids, bool):  # one id: to_string(256)
            return self.decode([ids])
        if not isinstance(ids, (list, tuple, range)):
            raise TypeError(f"to_string takes token ids (an int, a list or a tensor), got {type(ids).__name__}")
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            return [self.decode(row) for row in ids]
        return self.decode(ids)

    def to_str_tokens(self, text_or_ids, *, prepend_bos: bool | None = None) -> list[str]:
        """Each token as its own string. ``prepend_bos`` is required for text, ignored for ids."""
        if isinstance(text_or_ids, str):
            if prepend_bos is None:
                raise TypeError("to_str_tokens(text) needs prepend_bos=True or False")
            ids = self._encode_prompts(text_or_ids, prepend_bos)[0]
        else:
            if not isinstance(text_or_ids, (torch.Tensor, list, tuple, range)):
                raise TypeError(f"to_str_tokens takes text or token ids (a list or a tensor), got "
                                f"{type(text_or_ids).__name__}")
            if isinstance(text_or_ids, torch.Tensor) and text_or_ids.dim() > 2:
                raise ValueError(f"to_str_tokens takes one sequence of ids, [pos] or [1, pos]; got shape "
                                 f"{tuple(text_or_ids.shape)}")
            ids = text_or_ids.tolist() if isinstance(text_or_ids, torch.Tensor) else list(text_or_ids)
            if ids and isinstance(ids[0], (list, tuple)):  # [1, pos] -> [pos]
                if len(ids) != 1:
                    raise ValueError(f"to_str_tokens takes one sequence, got a batch of {len(ids)}")
                ids = ids[0]
            if any(isinstance(i, (list, tuple)) for i in ids):
                raise ValueError("to_str_tokens takes one sequence of ids, [pos] or [1, pos]; got deeper nesting")
        # One token can hold part of a UTF-8 character; it then shows as U+FFFD, as in HF.
        return [self.decode([i]) for i in ids]

    def to_single_token(self, word: str) -> int:
        """The id of ``word`` if it is exactly one token (mind the leading space: ' Mary')."""
        ids = self.encode(word)
        if len(ids) != 1:
            pieces = [self.decode([i]) for i in ids]
            raise ValueError(f"{word!r} is {len(ids)} tokens, not 1: {pieces} (ids {ids})")
        return ids[0]


def check_vocabulary(encoder, merges, source: str) -> None:
    """ValueError naming `source` unless the vocabulary and merges make a working byte-level BPE."""
    if not isinstance(encoder, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                and v >= 0 for k, v in encoder.items()):
        raise ValueError(f"{source}: the vocabulary must be a JSON object of token string -> id (an int >= 0)")
    if len(set(encoder.values())) != len(encoder):
        raise ValueError(f"{source}: two tokens share an id; every id must be distinct")
    if ENDOFTEXT not in encoder:
        raise ValueError(f"{source}: the vocabulary has no {ENDOFTEXT!r} token")
    for rank, (left, right) in enumerate(merges):
        if left + right not in encoder:
            raise ValueError(f"{source}: merge {rank} ({left!r} {right!r}) makes {left + right!r}, which is not "
                             "in the vocabulary")

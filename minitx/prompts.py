"""Prompts for any model: how text (or a list of ids) becomes token ids, and which tokens a model knows.

    vocab = Vocab.for_model(model, "weights/english-6l")   # the checkpoint's own tokenizer if it has one
    tokens = vocab.tokens("The cat sat on the", prepend_bos=True)   # [1, pos]
    known_token_ids(model)                                  # ids whose embedding is not blank

A model whose vocabulary is GPT-2's (50257 ids), or whose checkpoint folder holds its own
vocab.json + merges.txt, reads text. Any other vocabulary has no tokenizer: a prompt is a space- (or
comma-) separated list of integer ids.

Used by the command line and the demo; `ROLE_WORDS` are single GPT-2 tokens that a small English
model has seen, for head-role scores on repeated words rather than on ids such a model never saw.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from minitx.checks import check_token_ids

GPT2_VOCAB = 50257

ROLE_WORDS = [" river", " stone", " king", " tree", " door", " fish", " star", " moon", " boat", " car", " road",
              " house", " lamp", " bell", " shell", " cloud", " song", " milk", " bread", " egg", " salt",
              " gold", " wood", " glass", " paper", " clock", " rose", " corn", " lake", " box", " wall"]


class Vocab:
    """How prompts and single tokens become ids for this model, and ids become labels.

    With a tokenizer (GPT-2's shipped one for a 50257-id vocabulary, or the checkpoint's own), prompts
    are text. Otherwise a prompt is a space- (or comma-) separated list of integer ids, and BOS is
    cfg.bos_token_id when it lies in the vocabulary, else the last id (d_vocab - 1, the convention of
    `heads.repeated_tokens` and of the fixture, whose BOS is 64)."""

    def __init__(self, cfg, tokenizer=None):
        self.d_vocab = cfg.d_vocab
        self.tokenizer = tokenizer
        if tokenizer is None and cfg.d_vocab == GPT2_VOCAB:
            from minitx.tokenizer import Tokenizer
            self.tokenizer = Tokenizer.default()
        self.is_text = self.tokenizer is not None
        bos = cfg.bos_token_id
        self.bos = bos if isinstance(bos, int) and 0 <= bos < cfg.d_vocab else cfg.d_vocab - 1

    @classmethod
    def for_model(cls, model, path=None) -> Vocab:
        """The Vocab of a model loaded from `path`: the folder's own vocab.json + merges.txt when present."""
        folder = Path(path) if path is not None else None
        if folder is not None and folder.is_file():
            folder = folder.parent
        if folder is not None and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            from minitx.tokenizer import Tokenizer
            tokenizer = Tokenizer.from_directory(folder)
            if tokenizer.vocab_size > model.cfg.d_vocab:
                raise ValueError(f"{folder / 'vocab.json'} has {tokenizer.vocab_size} tokens but the model's "
                                 f"vocabulary has {model.cfg.d_vocab}; the tokenizer does not belong to this model")
            return cls(model.cfg, tokenizer)
        return cls(model.cfg)

    def describe(self) -> str:
        if self.is_text:
            return "text prompts (GPT-2 byte-level BPE)"
        return f"vocabulary of {self.d_vocab} ids (BOS = {self.bos}): prompts are space-separated ids"

    def _ids(self, text: str, what: str) -> list[int]:
        parts = text.replace(",", " ").split()
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"{what} {text!r}: this model's vocabulary has {self.d_vocab} ids, not GPT-2's "
                             f"{GPT2_VOCAB}, so there is no text tokenizer; give space-separated token ids "
                             f"0..{self.d_vocab - 1}, e.g. '3 17 5 3 17'") from None
        check_token_ids(ids, self.d_vocab, f"{what}: token")
        return ids

    def tokens(self, prompt: str, *, prepend_bos: bool, what: str = "prompt") -> Tensor:
        """Returns [1, pos] token ids of one prompt, BOS first iff prepend_bos."""
        if self.is_text and not prompt and not prepend_bos:
            raise ValueError(f"{what} is empty; give some text (or use --prepend-bos)")
        if self.is_text:
            return self.tokenizer.to_tokens(prompt, prepend_bos=prepend_bos)
        ids = ([self.bos] if prepend_bos else []) + self._ids(prompt, what)
        if not ids:
            raise ValueError(f"{what} is empty; give at least one token id (or use --prepend-bos)")
        return torch.tensor([ids], dtype=torch.long)

    def token(self, text: str, what: str = "token") -> int:
        """One token's id: a single GPT-2 token (mind the leading space: ' mat') or one integer id."""
        if self.is_text:
            try:
                return self.tokenizer.to_single_token(text)
            except ValueError as error:
                hint = ""
                if not text.startswith(" ") and _is_single(self.tokenizer, " " + text):
                    hint = (f"; did you mean {' ' + text!r} with a leading space? A word after another word is "
                            "one token with its space")
                raise ValueError(f"{what}: {error}{hint}") from None
        ids = self._ids(text, what)
        if len(ids) != 1:
            raise ValueError(f"{what} {text!r} must be exactly one token id, got {len(ids)}")
        return ids[0]

    def decode(self, token_id: int) -> str:
        if self.is_text:
            return self.tokenizer.decode([int(token_id)])
        return "BOS" if int(token_id) == self.bos else str(int(token_id))

    def str_tokens(self, tokens: Tensor) -> list[str]:
        """Labels of one sequence [pos] (or [1, pos])."""
        ids = tokens.reshape(-1).tolist()
        return [self.decode(i) for i in ids]


def _is_single(tokenizer, text: str) -> bool:
    try:
        tokenizer.to_single_token(text)
    except ValueError:
        return False
    return True


def known_token_ids(model) -> Tensor:
    """LongTensor [k]: the ids whose embedding row W_E[t] is not blank (all zeros), i.e. tokens the model
    was trained on. A model trained on a small corpus with GPT-2's vocabulary leaves the others at zero."""
    norms = model.W_E.detach().norm(dim=-1)  # [d_vocab]
    return (norms > 0).nonzero()[:, 0]


def blank_tokens(model, tokens: Tensor) -> list[int]:
    """The ids in tokens [batch, pos] whose embedding is blank (never trained), in order of first use."""
    blank = (model.W_E.detach().norm(dim=-1) == 0)
    seen: list[int] = []
    for t in tokens.reshape(-1).tolist():
        if blank[t] and t not in seen:
            seen.append(t)
    return seen


__all__ = ["Vocab", "GPT2_VOCAB", "ROLE_WORDS", "known_token_ids", "blank_tokens"]

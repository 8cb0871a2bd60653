"""TransformerLens 4.3 booted on minitx's own weights, for the optional parity tests (run in .venv-peers)."""

import json
import shutil
from pathlib import Path

import torch

import minitx


def tl_bridge(model, directory: Path):
    """TransformerLens's bridge over transformers' GPT-2, booted from the checkpoint minitx saves in `directory`
    (with GPT-2's tokenizer files beside it under transformers' names), so both run exactly the same weights."""
    from transformer_lens.model_bridge import TransformerBridge
    model.save_pretrained(directory)
    source = Path(minitx.__file__).parent / "data" / "gpt2"
    shutil.copy(source / "encoder.json", directory / "vocab.json")
    shutil.copy(source / "vocab.bpe", directory / "merges.txt")
    special = dict.fromkeys(["bos_token", "eos_token", "unk_token"], "<|endoftext|>")
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", **special}))
    return TransformerBridge.boot_transformers(str(directory), device="cpu", dtype=torch.float32).eval()

"""minitx.checks, the one home of argument checks: positions, token ids, counts, integers, seeds."""

import numpy as np
import pytest
import torch

from minitx import checks


def test_describe_is_one_short_line():
    assert checks.describe(2.5) == "float 2.5"
    assert checks.describe(torch.zeros(2, 3)) == "a torch.float32 tensor of shape (2, 3)"
    assert checks.describe(torch.tensor(4)) == "a torch.int64 tensor 4"
    long = checks.describe(list(range(100)))
    assert long.startswith("list [0, 1, 2") and long.endswith("…") and len(long) < 50 and "\n" not in long


@pytest.mark.parametrize("value", [3, [1, 2], (4,), range(3), np.array([1, 2]), torch.tensor([1, 2]), [],
                                   torch.tensor(5, dtype=torch.int16)])
def test_check_integers_accepts_integers(value):
    checks.check_integers(value, "x", "ints")


@pytest.mark.parametrize("value", [True, 2.0, "3", None, [1, 2.5], torch.tensor([1.0]), torch.tensor([True]),
                                   np.array([0.5]), [[1], "a"]])
def test_check_integers_refuses_everything_else(value):
    with pytest.raises(TypeError, match="^x must be ints, got "):
        checks.check_integers(value, "x", "ints")


def test_check_count():
    checks.check_count(1, "n", "a count")
    for bad in (0, -1, 2.0, "2", True, None):
        with pytest.raises(ValueError, match=r"n=.*: a count, an int >= 1"):
            checks.check_count(bad, "n", "a count")
    checks.check_count(0, "skip", "positions left out", minimum=0)
    checks.check_count(8, "n_pairs", "prompt pairs", minimum=8)
    with pytest.raises(ValueError, match=r"^n_pairs=7: prompt pairs, an int >= 8$"):
        checks.check_count(7, "n_pairs", "prompt pairs", minimum=8)


def test_check_positions_any_shape_and_per_prompt():
    assert checks.check_positions(-1, 5).tolist() == 4
    assert checks.check_positions([0, -5, 4], 5).tolist() == [0, 0, 4]
    assert checks.check_positions(torch.tensor([[1, -2]]), 5).tolist() == [[1, 3]]
    assert checks.check_positions(-1, 5, batch=3).tolist() == [4, 4, 4]
    assert checks.check_positions(torch.tensor([0, -1]), 5, batch=2).tolist() == [0, 4]
    assert checks.check_positions([1, 2], 5, batch=2).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"^position 5 is out of range for prompts of 5 tokens; allowed: -5\.\.4$"):
        checks.check_positions([1, 5], 5)
    with pytest.raises(ValueError, match=r"^swap_positions: position -6 is out of range"):
        checks.check_positions((-6, 1), 5, "swap_positions")
    with pytest.raises(ValueError, match=r"pos must be an int or one of positions per prompt, of shape \[batch\]=\[2\]"):
        checks.check_positions(torch.tensor([1, 2, 3]), 5, batch=2)
    with pytest.raises(ValueError, match=r"pos as a tensor must be integer positions of shape \[batch\]=\[2\], got "
                                         r"torch.float32"):
        checks.check_positions(torch.tensor([1.0, 2.0]), 5, batch=2)
    with pytest.raises(TypeError, match="pos must be an int or a LongTensor"):
        checks.check_positions(1.5, 5, batch=2)


def test_check_token_ids():
    assert checks.check_token_ids([0, 9], 10).tolist() == [0, 9]
    assert checks.check_token_ids(3, 10, "answer", batch=2).tolist() == [3, 3]
    with pytest.raises(ValueError, match=r"^answer id 10 is outside the vocabulary; allowed ids are 0\.\.9$"):
        checks.check_token_ids(torch.tensor([1, 10]), 10, "answer", batch=2)
    with pytest.raises(ValueError, match="^token id -1 is outside"):
        checks.check_token_ids([-1], 10)
    with pytest.raises(TypeError, match="answer must be an int or a LongTensor"):
        checks.check_token_ids(3.7, 10, "answer", batch=1)


def test_check_seed():
    for good in (0, 2 ** 64 - 1, np.int64(3)):
        checks.check_seed(good)
    with pytest.raises(ValueError, match=r"seed=18446744073709551616 is not allowed: an int from 0 to 2\*\*64-1"):
        checks.check_seed(2 ** 64)
    with pytest.raises(ValueError, match="seed=-1"):
        checks.check_seed(-1)
    for bad in (None, "a", 1.0, True, [1, 2], torch.tensor(3)):  # one int, not a list or a tensor
        with pytest.raises(TypeError, match="seed must be an int from 0 to 2"):
            checks.check_seed(bad)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16,
                                   torch.uint32])
def test_check_tokens_takes_every_integer_dtype(dtype):
    tokens = checks.check_tokens(torch.tensor([[1, 2, 3]]).to(dtype), 10)
    assert tokens.dtype == torch.long and tokens.tolist() == [[1, 2, 3]]


def test_tokens_and_masks_must_hold_values():
    with pytest.raises(TypeError, match="tokens must be a dense tensor, got layout torch.sparse_coo"):
        checks.check_tokens(torch.tensor([[1, 0, 2]]).to_sparse(), 10)
    with pytest.raises(ValueError, match="tokens must hold values, got a tensor on the meta device"):
        checks.check_tokens(torch.zeros(1, 3, dtype=torch.long, device="meta"), 10)
    with pytest.raises(TypeError, match="attention_mask must be a dense tensor"):
        checks.check_attention_mask(torch.ones(1, 3).to_sparse(), (1, 3))
    with pytest.raises(ValueError, match="attention_mask must hold values"):
        checks.check_attention_mask(torch.ones(1, 3, device="meta"), (1, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=2.0), "max_new_tokens must be an int >= 0, got float 2.0"),
    (dict(max_new_tokens="3"), "max_new_tokens must be an int >= 0, got str '3'"),
    (dict(temperature="1"), r"temperature must be a number >= 0 \(0 = greedy\), got str '1'"),
    (dict(temperature=True), "temperature must be a number"),
    (dict(top_k=2.5), "top_k must be a positive int or None, got float 2.5"),
    (dict(eos_token_id=2.5), "eos_token_id must be an int token id or None, got float 2.5"),
    (dict(eos_token_id=True), "eos_token_id must be an int token id or None, got bool True"),
])
def test_generation_arguments_have_their_types_checked(kwargs, message):
    from types import SimpleNamespace
    cfg = SimpleNamespace(d_vocab=10, n_ctx=16)
    args = dict(max_new_tokens=2, temperature=0.0, top_k=None, eos_token_id=None) | kwargs
    with pytest.raises(TypeError, match=message):
        checks.check_generation(3, args["max_new_tokens"], args["temperature"], args["top_k"], args["eos_token_id"],
                                cfg)


def test_check_choice_int_real_and_max_offset():
    checks.check_choice("summed", "bias", ("per_layer", "summed"))
    for bad in ("none", None, 1, ["summed"]):
        with pytest.raises(ValueError, match=r"^bias=.*; allowed: 'per_layer', 'summed'$"):
            checks.check_choice(bad, "bias", ("per_layer", "summed"))
    checks.check_int(np.int64(3), "k", "an int")
    for bad in (True, 2.0, [1], torch.tensor(1), "1", None):
        with pytest.raises(TypeError, match="^k must be an int, got "):
            checks.check_int(bad, "k", "an int")
    for good in (0, 0.5, np.float32(1.5)):
        checks.check_real(good, "t", "a number")
    for bad in (True, "0.5", torch.tensor(0.5), None):
        with pytest.raises(TypeError, match="^t must be a number, got "):
            checks.check_real(bad, "t", "a number")
    checks.check_max_offset(0)
    with pytest.raises(ValueError, match="max_offset=-1: offsets are d = q - k >= 0"):
        checks.check_max_offset(-1)
    with pytest.raises(TypeError, match="max_offset must be an int >= 0, got float 1.0"):
        checks.check_max_offset(1.0)


def test_check_device():
    assert checks.check_device("cpu") == torch.device("cpu") == checks.check_device(torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^--device 'gpu' is not a torch device; use cpu, cuda, cuda:N or mps$"):
        checks.check_device("gpu", "--device")
    with pytest.raises(ValueError, match=r"^device None is not a torch device"):
        checks.check_device(None)
    with pytest.raises(ValueError, match=r"^device xla: xla is not available here; use cpu$"):
        checks.check_device("xla")
    with pytest.raises(ValueError, match=r"^device meta: the meta device holds shapes only"):
        checks.check_device("meta")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device cuda:99: this machine has cuda devices 0\.\."):
            checks.check_device("cuda:99")
    else:
        with pytest.raises(ValueError, match=r"^device cuda: cuda is not available here; use cpu$"):
            checks.check_device("cuda")

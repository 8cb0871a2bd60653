"""The analysis commands of `minitx`, called in-process: exit codes, printed tables, PNG files, clean errors."""

import re
import shutil

import matplotlib.image
import pytest
import torch

import minitx
from tests.conftest import random_model
from minitx import cli, heads

FIXTURE = cli.REPO_ROOT / cli.DEFAULT_MODEL


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A fixture-shaped random model: 2 layers x 2 heads, vocabulary 64 ids + BOS 64, 48 positions, untied."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    minitx.save_pretrained(random_model(n_layer=2, n_head=2, n_embd=32, n_positions=48, vocab_size=65,
                                        tie_word_embeddings=False), path)
    return str(path)


@pytest.fixture(scope="module")
def gpt2_vocab_dir(tmp_path_factory):
    """A random model with GPT-2's vocabulary, so prompts and tokens are text."""
    path = tmp_path_factory.mktemp("models") / "tiny-gpt2-vocab"
    minitx.save_pretrained(random_model(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=50257), path)
    return str(path)


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def check_png(path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def check_clean_error(code, out, err, pattern):
    assert code == 2
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]


def test_attention(model_dir, tmp_path, capsys):
    png = tmp_path / "a.png"
    code, out, _ = run(capsys, "attention", "--model", model_dir, "--prompt", "5 9 2 5 9", "--layer", 1,
                       "--out", png)
    assert code == 0
    assert "head 1.0" in out and "head 1.1" in out
    assert re.search(r"^0 BOS\s+0 BOS 1\.00", out, re.M)  # query 0 can only read itself
    assert len([line for line in out.splitlines() if re.match(r"\d+ ", line)]) == 6  # BOS + 5 tokens
    model = minitx.load(model_dir)
    prev = heads.previous_token_scores(model, torch.tensor([[64, 5, 9, 2, 5, 9]]))[1]
    assert f"1.0 {float(prev[0]):.2f}, 1.1 {float(prev[1]):.2f}" in out  # the library's previous-token scores
    check_png(png)
    code, out, _ = run(capsys, "attention", "--model", model_dir, "--prompt", "5 9 2", "--layer", 0, "--head", 1,
                       "--no-prepend-bos", "--out", tmp_path / "b.png")
    assert code == 0 and "head 0.1" in out and "head 0.0" not in out and "BOS" not in out
    check_png(tmp_path / "b.png")


def test_heads_table_matches_library(model_dir, tmp_path, capsys):
    code, out, err = run(capsys, "heads", "--model", model_dir, "--n", 6, "--batch", 2, "--out", tmp_path / "h.png")
    assert code == 0 and "scoring heads" in err
    for column in ("prev-token", "induction", "duplicate", "pos-0 (BOS)", "offset 1..k"):
        assert column in out
    model = minitx.load(model_dir)
    ind = heads.induction_scores(model, n=6, batch=2, seed=0, prepend_bos=True)
    row = next(line for line in out.splitlines() if line.startswith("1.1 "))
    assert f"{float(ind[1, 1]):.3f}" in row.split()
    check_png(tmp_path / "h.png")
    # a prompt without repeats: the duplicate score is left out, not an error
    code, out, err = run(capsys, "heads", "--model", model_dir, "--prompt", "1 2 3 4", "--n", 4, "--batch", 1,
                         "--out", tmp_path / "h2.png")
    assert code == 0 and "duplicate" not in out.splitlines()[1] and "no token of the prompt repeats" in err


def test_patch_resid_and_heads(model_dir, tmp_path, capsys):
    args = ["--model", model_dir, "--clean", "3 4 5 3 4", "--corrupted", "3 6 5 3 4", "--answer", 5, "--wrong", 6]
    code, out, err = run(capsys, "patch", *args, "--out", tmp_path / "p.png")
    assert code == 0 and "activation patching resid_pre" in err
    assert "denoising resid_pre" in out and "clean" in out
    header = next(line for line in out.splitlines() if line.startswith("layer"))
    assert "0:BOS" in header and "5:4" in header  # positions labelled by their tokens
    # the printed scores are the library's, row by row
    from minitx import metrics, patching
    from minitx.prompts import Vocab
    model = minitx.load(model_dir)
    vocab = Vocab.for_model(model)
    clean, corrupted = (vocab.tokens(p, prepend_bos=True) for p in ("3 4 5 3 4", "3 6 5 3 4"))
    expected = patching.activation_patching(model, clean, corrupted, metrics.logit_diff_metric(5, 6), "resid_pre").scores
    printed = [[float(v) for v in line.split()[1:]] for line in out.splitlines() if re.match(r"\d+ +-?\d", line)]
    assert printed == [[float(f"{float(v):.3f}") for v in row] for row in expected]
    check_png(tmp_path / "p.png")
    code, out, _ = run(capsys, "patch", *args, "--point", "z", "--direction", "noising", "--out", tmp_path / "z.png")
    assert code == 0 and "noising z" in out and "head 1" in out
    check_png(tmp_path / "z.png")


def test_path_patch(model_dir, tmp_path, capsys):
    code, out, err = run(capsys, "path-patch", "--model", model_dir, "--clean", "3 4 5 3 4", "--corrupted",
                         "3 6 5 3 4", "--answer", 5, "--wrong", 6, "--receiver", "k:1.0", "--out", tmp_path / "pp.png")
    assert code == 0 and "path patching each of 4 heads" in err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if re.match(r"\d\.\d ", line)}
    assert set(rows) == {"0.0", "0.1", "1.0", "1.1"}
    assert rows["1.0"][1] == "nan" and rows["1.1"][1] == "nan"  # a head cannot reach a key of its own layer
    assert "nan = no path" in out
    check_png(tmp_path / "pp.png")


def test_lens(model_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "lens", "--model", model_dir, "--prompt", "7 8 9 7 8", "--target", 9,
                       "--out", tmp_path / "l.png")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[3:-1]] == ["0_pre", "1_pre", "final"]
    assert "p('9')" in out and "rank" in out
    check_png(tmp_path / "l.png")
    code, out, _ = run(capsys, "lens", "--model", model_dir, "--prompt", "7 8", "--pos", 1, "--out", tmp_path / "m.png")
    assert code == 0 and "position 1 ('7')" in out and "rank" not in out.splitlines()[1]


def test_text_prompts_with_gpt2_vocabulary(gpt2_vocab_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "lens", "--model", gpt2_vocab_dir, "--prompt", "The cat sat on the", "--target",
                       " mat", "--out", tmp_path / "l.png")
    assert code == 0 and "position 5 (' the')" in out and "p(' mat')" in out
    code, out, err = run(capsys, "patch", "--model", gpt2_vocab_dir, "--clean", "The cat sat", "--corrupted",
                         "The dog sat", "--answer", " down", "--wrong", " Mary Jane", "--out", tmp_path / "p.png")
    check_clean_error(code, out, err, r"^minitx patch: error: --wrong: ' Mary Jane' is 2 tokens")


def test_default_model_from_any_directory(model_dir, tmp_path, capsys, monkeypatch):
    # The shipped models are package data (minitx/shipped.py): the default and "weights/..." names read the
    # packaged copies from any directory, and a local folder of the same name is read as given.
    from minitx.shipped import shipped_path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.resolve_model(None) == str(shipped_path("english-6l"))
    assert cli.resolve_model("weights/induction-2l") == cli.resolve_model("induction-2l") == str(shipped_path("induction-2l"))
    code, out, _ = run(capsys, "lens", "--model", "weights/induction-2l", "--prompt", "1 2 3")
    assert code == 0 and (elsewhere / "lens.png").is_file()  # the default output lands in the current directory
    shutil.copytree(model_dir, elsewhere / cli.DEFAULT_MODEL)
    assert cli.resolve_model(None) == cli.DEFAULT_MODEL
    code, out, _ = run(capsys, "lens", "--prompt", "1 2 3")
    assert code == 0 and "0_pre" in out


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="weights/english-6l has not been trained yet")
def test_shipped_model_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "attention", "--prompt", "The cat chased the mouse", "--layer", 1)
    assert code == 0 and (tmp_path / "attention-layer1.png").is_file()
    code, out, _ = run(capsys, "attention", "--model", "weights/induction-2l", "--prompt", "5 9 2 5 9", "--layer", 1)
    assert code == 0


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="weights/english-6l has not been trained yet")
def test_generate_on_the_shipped_models(tmp_path, capsys, monkeypatch):
    """Like every command: the shipped English model by default, found from any directory; token ids for
    the fixture; the text ends at <|endoftext|> unless --ignore-eos."""
    monkeypatch.chdir(tmp_path)
    model, tok = minitx.load(FIXTURE), minitx.Tokenizer.default()
    prompt = tok.to_tokens("The cat sat on the", prepend_bos=False)
    expected = model.generate(prompt, 12, eos_token_id=tok.bos_token_id)[0]
    if bool((expected[prompt.shape[1]:] == tok.bos_token_id).any()):
        expected = expected[:prompt.shape[1] + int((expected[prompt.shape[1]:] == tok.bos_token_id).nonzero()[0])]
    code, out, _ = run(capsys, "generate", "The cat sat on the", "--max-new-tokens", 12)
    assert code == 0 and out.strip() == tok.to_string(expected).strip()
    code, out, _ = run(capsys, "generate", "5 9 2 5 9", "--model", "weights/induction-2l", "--max-new-tokens", 5)
    assert code == 0 and out.split() == ["5", "9", "2", "5", "9", "2", "5", "9", "2", "5"]  # induction


@pytest.mark.parametrize("argv, pattern", [
    (["attention", "--prompt", "hello world", "--layer", "0"], r"space-separated token ids 0\.\.64"),
    (["attention", "--prompt", "5 99", "--layer", "0"], r"token id 99 is outside the vocabulary; allowed ids are 0\.\.64"),
    (["attention", "--prompt", "5 9", "--layer", "2"], r"--layer 2 is out of range; this model has layers 0\.\.1"),
    (["attention", "--prompt", "5 9", "--layer", "0", "--head", "7"], r"--head 7 is out of range"),
    (["patch", "--clean", "1 2 3", "--corrupted", "1 2", "--answer", "3", "--wrong", "4"], r"same length"),
    (["patch", "--clean", "1 2 3", "--corrupted", "1 5 3", "--answer", "3 4", "--wrong", "4"],
     r"--answer '3 4' must be exactly one token id"),
    (["path-patch", "--clean", "1 2 3", "--corrupted", "1 5 3", "--answer", "3", "--wrong", "4", "--receiver",
      "k:9.0"], r"receiver layer 9 is out of range"),
    (["path-patch", "--clean", "1 2 3", "--corrupted", "1 5 3", "--answer", "3", "--wrong", "4", "--receiver",
      "key1"], r"--receiver 'key1': use logits, q:L\.H"),
    (["lens", "--prompt", "1 2", "--pos", "5"], r"--pos: position 5 is out of range for prompts of 3 tokens"),
    (["lens", "--prompt", "", "--no-prepend-bos"], r"prompt is empty"),
    (["dla", "--prompt", "1 2", "--answer", "3", "--top", "-3"], r"argument --top: invalid count '-3': an int >= 1"),
    (["circuits", "--samples", "1"], r"--samples 1: a random baseline needs at least 2 samples"),  # before progress
])
def test_bad_inputs_give_one_line_and_exit_2(model_dir, tmp_path, capsys, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv[:1], "--model", model_dir, *argv[1:])
    check_clean_error(code, out, err, pattern)
    assert not list(tmp_path.glob("*.png"))  # nothing written on an error


def test_empty_text_prompt_names_the_flag(gpt2_vocab_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "generate", "", "--model", gpt2_vocab_dir)
    check_clean_error(code, out, err, r"^minitx generate: error: prompt is empty; give some text \(or use --prepend-bos\)$")
    code, out, err = run(capsys, "generate", "x", "--model", "")  # not the current folder
    check_clean_error(code, out, err, r"^minitx generate: error: --model '' is empty; give a checkpoint folder")


def test_out_and_html_checked_before_any_work(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, out, err = run(capsys, "heads", "--model", model_dir, "--n", 3, "--out", tmp_path / "file" / "h.png")
    check_clean_error(code, out, err, r"^minitx heads: error: --out .*/file/h\.png: .*/file is a file, not a folder$")
    code, out, err = run(capsys, "demo", "--model", model_dir, "--out", tmp_path / "d", "--html", tmp_path)
    check_clean_error(code, out, err, r"^minitx demo: error: --html .* is a folder; give a file name such as")
    assert not (tmp_path / "d").exists()  # nothing was written


def test_usage_errors_and_missing_model(tmp_path, capsys):
    code, out, err = run(capsys, "attention", "--prompt", "1 2")  # --layer missing: argparse's error, one line
    check_clean_error(code, out, err, r"^minitx attention: error: the following arguments are required: --layer")
    code, out, err = run(capsys, "lens", "--model", tmp_path / "nothing-here", "--prompt", "1")
    check_clean_error(code, out, err, r"^minitx lens: error: .*nothing-here")
    code, out, err = run(capsys, "patch", "--help")
    assert code == 0 and "--prepend-bos" in out and "default" in out and "denoising" in out


def test_demo_command(model_dir, tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--model", model_dir, "--out", tmp_path / "d", "--n", 5, "--batch", 2)
    assert code == 0
    assert f"writing the demo report into {tmp_path / 'd'}" in out and "report:" in out
    assert "[1/3]" in err and "[3/3]" in err
    assert (tmp_path / "d" / "report.md").is_file()
    assert "induction head" in out and "logit lens" in out


def test_demo_refuses_too_few_pairs_before_printing(model_dir, tmp_path, capsys):
    """--n-pairs under stats.MIN_PROMPTS is refused by its flag's name before anything is loaded or printed."""
    code, out, err = run(capsys, "demo", "--model", model_dir, "--out", tmp_path / "d", "--n-pairs", 7)
    assert code == 2 and out == "" and err.startswith("minitx demo: error: --n-pairs=7: prompt pairs per dataset")


# -- issue 12 and 13: the command line as a new user meets it ---------------------------------------------------
def figures_of(monkeypatch):
    """Captures every Figure the CLI saves (and still writes it)."""
    from minitx import plots
    saved, real = [], plots.save

    def save(fig, path, dpi=110):
        saved.append(fig)
        return real(fig, path, dpi)
    monkeypatch.setattr(plots, "save", save)
    return saved


def colorbar_label(fig) -> str:
    return next(ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>")


def test_prompts_are_positional_with_the_flag_as_alias(model_dir, tmp_path, capsys):
    a = run(capsys, "lens", "7 8 9", "--model", model_dir, "--out", tmp_path)
    b = run(capsys, "lens", "--prompt", "7 8 9", "--model", model_dir, "--out", tmp_path)
    assert a[0] == b[0] == 0 and a[1] == b[1]
    code, out, _ = run(capsys, "patch", "3 4 5 3 4", "3 6 5 3 4", "--answer", 5, "--wrong", 6, "--model", model_dir,
                       "--out", tmp_path)
    assert code == 0 and (tmp_path / "patch.png").is_file()  # --out names a folder: the default name inside it


def test_demo_help_states_the_demo_defaults():
    from minitx import demo
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["demo"].format_help().split())
    assert f"(default: {demo.N_PAIRS}, or {demo.N_PAIRS_LARGE} for a model over 30M parameters;" in text
    assert demo.LARGE_MODEL == 30_000_000


def test_demo_help_states_the_least_prompts_for_a_verdict(monkeypatch):
    """--batch and --n-pairs say how many prompts a verdict needs, read from stats.MIN_PROMPTS when the parser is built
    (11 here, to show it is no literal)."""
    from minitx import stats
    monkeypatch.setattr(stats, "MIN_PROMPTS", 11)
    demo = cli.build_parser()._subparsers._group_actions[0].choices["demo"]
    helps = {a.dest: " ".join(a.help.split()) for a in demo._actions}
    assert "verdicts need at least 11 sequences" in helps["batch"]
    assert "at least 11;" in helps["n_pairs"]


def test_every_option_says_what_it_does_and_its_default():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help" or action.dest.endswith("_flag"):
                continue  # --prompt and friends: aliases of a positional argument
            assert action.help, f"minitx {name} {action.option_strings[0]} has no help"
            shown = sub._get_formatter()._get_help_string(action)
            assert action.required or "default" in shown or "required" in shown or action.default is False, \
                (name, action.option_strings)
        assert "(default:" in text or name == "download"


def test_out_dot_and_existing_folder(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "attention", "5 9 2", "--layer", 0, "--model", model_dir, "--out", ".")
    assert code == 0 and (tmp_path / "attention-layer0.png").is_file() and not (tmp_path / ".png").exists()
    (tmp_path / "figs").mkdir()
    code, out, _ = run(capsys, "heads", "--n", 3, "--batch", 1, "--model", model_dir, "--out", "figs")
    assert code == 0 and (tmp_path / "figs" / "heads.png").is_file() and not (tmp_path / "figs.png").exists()
    assert "figure: figs/heads.png" in out
    code, out, _ = run(capsys, "heads", "--n", 3, "--batch", 1, "--model", model_dir, "--out", "new/")
    assert code == 0 and (tmp_path / "new" / "heads.png").is_file()  # one named folder is created


def test_any_error_is_one_line_and_debug_shows_the_traceback(model_dir, tmp_path, capsys, monkeypatch):
    from minitx import heads
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("probability tensor contains either `inf`, `nan`\nand a second line")
    monkeypatch.setattr(heads, "attention_patterns", broken)
    code, out, err = run(capsys, "attention", "5 9", "--layer", 0, "--model", model_dir)
    check_clean_error(code, out, err, r"^minitx attention: error: RuntimeError: probability tensor contains .* "
                                      r"\(set MINITX_DEBUG=1 to see where\)$")
    monkeypatch.setenv("MINITX_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["attention", "5 9", "--layer", "0", "--model", model_dir])


def test_ctrl_c_is_one_line(model_dir, capsys, monkeypatch):
    from minitx import heads

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(heads, "attention_patterns", interrupted)
    code, out, err = run(capsys, "attention", "5 9", "--layer", 0, "--model", model_dir)
    assert code == 130 and err == "minitx: interrupted\n" and "Traceback" not in out + err


def test_closed_pipe_still_writes_the_figure(model_dir, tmp_path):
    """`minitx heads | head -1`: the reader leaves after one line; the command ends cleanly and writes its PNG."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cli.REPO_ROOT)}
    with subprocess.Popen([sys.executable, "-m", "minitx.cli", "heads", "--model", model_dir, "--n", "4", "--batch",
                           "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert first.startswith(b"head scores")
    assert code == 0 and "Broken pipe" not in err and "Traceback" not in err, err
    assert (tmp_path / "heads.png").is_file()


def test_verify_tolerance_must_be_positive_and_finite(capsys):
    for bad in ("-1", "nan", "inf", "x"):
        code, out, err = run(capsys, "verify", "gpt2", "--tolerance", bad)
        check_clean_error(code, out, err, rf"argument --tolerance: invalid tolerance '{bad}': a finite number > 0")


def test_heads_draws_known_tokens_and_warns_of_blank_ones(tmp_path, capsys):
    """A model whose embeddings are blank (all zero) for most ids: r comes from the trained ones, a prompt
    with an untrained token is warned about."""
    model = random_model(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=50257)
    with __import__("torch").no_grad():
        keep = minitx.Tokenizer.default().to_tokens(" The cat sat on the mat and the dog ran to a red door",
                                                    prepend_bos=True)[0]
        mask = __import__("torch").zeros(50257, dtype=__import__("torch").bool)
        mask[keep] = True
        model.W_E[~mask] = 0  # W_E is a view of the embedding weight
    assert int((model.W_E.norm(dim=-1) > 0).sum()) == len(set(keep.tolist()))
    path = tmp_path / "blank"
    minitx.save_pretrained(model, path)
    code, out, err = run(capsys, "heads", "--model", path, "--n", 4, "--batch", 2, "--out", tmp_path)
    assert code == 0 and f"from the {len(set(keep.tolist()))} tokens this model trained" in out
    code, out, err = run(capsys, "lens", " The cat sat on the bird", "--model", path, "--target", " mat", "--out",
                         tmp_path)
    assert code == 0 and "warning: the prompt or --target uses 1 token(s) this model never trained" in err
    assert "' bird'" in err


def test_target_without_its_space_gets_a_hint(gpt2_vocab_dir, tmp_path, capsys):
    code, out, err = run(capsys, "lens", "The cat sat on the", "--target", "mat", "--model", gpt2_vocab_dir,
                         "--out", tmp_path)
    assert code == 0 and "warning: --target 'mat' has no leading space; after another word the token is ' mat'" in err
    code, out, err = run(capsys, "lens", "The cat sat on the", "--target", "Mississippi", "--model", gpt2_vocab_dir)
    check_clean_error(code, out, err, r"--target: .*did you mean ' Mississippi' with a leading space\?")


def test_checkpoint_with_its_own_tokenizer(tmp_path, capsys):
    """vocab.json + merges.txt beside the weights: prompts are text even though the vocabulary is not GPT-2's."""
    import json
    from minitx.tokenizer import bytes_to_unicode
    chars = list(bytes_to_unicode().values())
    encoder = {c: i for i, c in enumerate(chars)} | {"<|endoftext|>": 256}
    path = tmp_path / "own"
    minitx.save_pretrained(random_model(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=257), path)
    (path / "vocab.json").write_text(json.dumps(encoder))
    (path / "merges.txt").write_text("#version: 0.2\n")
    code, out, err = run(capsys, "lens", "abc", "--model", path, "--target", "d", "--out", tmp_path)
    assert code == 0 and "p('d')" in out and "position 3 ('c')" in out


def test_lens_incl_mid_and_figure_titles(model_dir, tmp_path, capsys, monkeypatch):
    saved = figures_of(monkeypatch)
    code, out, _ = run(capsys, "lens", "7 8 9", "--incl-mid", "--model", model_dir, "--out", tmp_path)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[3:-1]] == ["0_pre", "0_mid", "1_pre",
                                                                                 "1_mid", "final"]
    assert "'7 8 9'" in saved[-1].axes[0].get_title()
    assert run(capsys, "attention", "5 9 2", "--layer", 1, "--model", model_dir, "--out", tmp_path)[0] == 0
    assert "'5 9 2'" in saved[-1]._suptitle.get_text()


def test_path_patch_one_sender_several_receivers_frozen_mlps(model_dir, tmp_path, capsys, monkeypatch):
    from minitx import metrics, path_patching
    pair = ["3 4 5 3 4", "3 6 5 3 4", "--answer", 5, "--wrong", 6, "--model", model_dir]
    code, out, err = run(capsys, "path-patch", *pair, "--sender", "0.1", "--receiver", "k:1.0", "q:1.1",
                         "--freeze-mlps")
    assert code == 0 and "rel. change = (patched - clean) / clean" in out
    rows = {line.rsplit(None, 3)[0]: line.split()[-3:] for line in out.splitlines() if line.startswith("0.1 ->")}
    assert list(rows) == ["0.1 -> k:1.0", "0.1 -> q:1.1", "0.1 -> k:1.0 + q:1.1"]
    model = minitx.load(model_dir)
    clean, corrupted = torch_ids("64 3 4 5 3 4"), torch_ids("64 3 6 5 3 4")
    direct = path_patching.path_patch(model, clean, corrupted, (0, 1), [("k", 1, 0), ("q", 1, 1)],
                                      metrics.logit_diff_metric(5, 6), freeze_mlps=True)
    assert rows["0.1 -> k:1.0 + q:1.1"][0] == f"{float(direct.scores):.3f}"
    saved = figures_of(monkeypatch)
    code, out, _ = run(capsys, "path-patch", *pair, "--receiver", "logits", "--out", tmp_path)
    assert code == 0 and colorbar_label(saved[-1]).startswith("removed")
    assert "'3 4 5 3 4'" in saved[-1].axes[0].get_title().replace("\n", " ")
    code, out, _ = run(capsys, "patch", *pair, "--out", tmp_path)
    labels = [t.get_text() for t in saved[-1].axes[0].get_xticklabels()]
    assert labels == ["BOS", "3", "4/6", "5", "3", "4"] and colorbar_label(saved[-1]).startswith("score")
    norm = saved[-1].axes[0].images[0].norm
    assert (norm.vmin, norm.vmax) == (-1.0, 1.0)


def torch_ids(text):
    import torch
    return torch.tensor([[int(t) for t in text.split()]])


def test_demo_refuses_a_short_context_before_any_stage(tmp_path, capsys):
    path = tmp_path / "short"
    minitx.save_pretrained(random_model(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=50257), path)
    code, out, err = run(capsys, "demo", "--model", path, "--out", tmp_path / "d")
    check_clean_error(code, out, err, r"n_positions=8, but the demo's longest prompt")
    assert out == "" and not (tmp_path / "d").exists()


def test_starting_the_command_line_loads_no_torch():
    """Ctrl-C during imports: everything heavy is imported inside main, which answers Ctrl-C in one line (exit 130),
    so importing the entry point itself must stay light."""
    import subprocess
    import sys
    code = "import sys, minitx.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cli.REPO_ROOT,
                            timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_dla_role_swap_and_attribution_commands(model_dir, tmp_path, capsys, monkeypatch):
    import torch
    from minitx import attribution, dla, heads, metrics
    model = minitx.load(model_dir)
    saved = figures_of(monkeypatch)
    code, out, _ = run(capsys, "dla", "5 9 2 5", "--answer", 9, "--wrong", 3, "--model", model_dir, "--out", tmp_path)
    assert code == 0 and "'5 9 2 5'" in saved[-1].axes[0].get_title().replace("\n", " ")
    direct = dla.direct_logit_attribution(model, torch.tensor([[64, 5, 9, 2, 5]]), 9, wrong=3)
    assert f"{direct.clean:+.3f}" in out.splitlines()[0]
    top = int(direct.scores.abs().argmax())
    first = next(line for line in out.splitlines()[4:] if line.strip())
    assert first.split()[:2] == [direct.labels[top], f"{float(direct.scores[top]):.3f}"]

    code, out, _ = run(capsys, "role-swap", "5 9 2 7", "5 7 2 9", "--model", model_dir, "--out", tmp_path)
    assert code == 0 and "One pair cannot tell a role from a position" in out
    rs = heads.role_swap(model, torch.tensor([[64, 5, 9, 2, 7]]), torch.tensor([[64, 5, 7, 2, 9]]), (2, 4))
    rows = [line.split() for line in out.splitlines() if re.match(r"\d\.\d ", line)]
    assert len(rows) == 4 and [float(r[3]) for r in rows] == sorted((float(r[3]) for r in rows), key=abs,
                                                                    reverse=True)
    assert rows[0][3] == f"{float(rs.scores.abs().max() * rs.scores.flatten()[rs.scores.abs().argmax()].sign()):.3f}"
    code, out, err = run(capsys, "role-swap", "5 9 2 7", "5 9 2 8", "--model", model_dir)
    check_clean_error(code, out, err, r"differ at exactly two positions .* they differ at positions \[4\]")

    code, out, _ = run(capsys, "attribution", "3 4 5 3 4", "3 6 5 3 4", "--answer", 5, "--wrong", 6, "--model",
                       model_dir, "--out", tmp_path)
    assert code == 0 and colorbar_label(saved[-1]).startswith("estimated score")
    atp = attribution.attribution_patching(model, torch.tensor([[64, 3, 4, 5, 3, 4]]),
                                           torch.tensor([[64, 3, 6, 5, 3, 4]]), metrics.logit_diff_metric(5, 6))
    row = next(line.split() for line in out.splitlines() if line.startswith("1 "))
    assert row[1:] == [f"{float(v):.3f}" for v in atp.normalized("z")[1]]


def test_pairs_file_instead_of_one_pair(gpt2_vocab_dir, tmp_path, capsys):
    """--pairs FILE: every pair of a JSONL dataset at once, the same numbers as the library on that batch."""
    from minitx import datasets, metrics, patching
    pairs = [p for p in datasets.role_swap_pairs(12) if not p.generated][:3] or datasets.role_swap_pairs(3)
    batches = datasets.to_batches(pairs, minitx.Tokenizer.default(), True)
    pairs = batches[0].pairs
    path = datasets.write_jsonl(pairs, tmp_path / "pairs.jsonl")
    code, out, err = run(capsys, "patch", "--pairs", path, "--point", "z", "--model", gpt2_vocab_dir, "--out", tmp_path)
    assert code == 0, err
    assert out.startswith(f"logit difference answer - wrong over {len(pairs)} pairs from {path}: clean")
    model, batch = minitx.load(gpt2_vocab_dir), datasets.load_pairs(path, minitx.Tokenizer.default(), True)
    result = patching.activation_patching(model, batch.clean, batch.corrupted,
                                          metrics.logit_diff_metric(batch.answer, batch.wrong), "z", "all")
    assert f"clean {result.clean:+.3f}, corrupted {result.corrupted:+.3f}" in out.splitlines()[0]
    assert "interval" not in out  # one pair: no interval over pairs
    # several pairs: the table's means, and for the largest ones the interval over the pairs (stats.result_interval)
    from minitx import stats
    from minitx.report import fmt_interval
    pairs = datasets.role_swap_pairs(6, templates=("who",))  # one token length: one batch
    path = datasets.write_jsonl(pairs, tmp_path / "six.jsonl")
    code, out, err = run(capsys, "patch", "--pairs", path, "--point", "z", "--model", gpt2_vocab_dir, "--out", tmp_path)
    assert code == 0, err
    batch = datasets.load_pairs(path, minitx.Tokenizer.default(), True)
    result = patching.activation_patching(model, batch.clean, batch.corrupted,
                                          metrics.logit_diff_metric(batch.answer, batch.wrong), "z", "all")
    interval = stats.result_interval(result)
    l, h = divmod(int(interval.estimate.flatten().abs().argmax()), model.cfg.n_head)
    assert f"with a 95% percentile bootstrap interval over the {len(pairs)} pairs" in out
    first = out.split("score [95% interval]")[1].splitlines()[2]
    assert first.split(maxsplit=1) == [f"{l}.{h}", fmt_interval(*(float(x[l, h]) for x in (interval.estimate,
                                                                                         interval.low, interval.high)))]
    code, out, err = run(capsys, "patch", "--pairs", path, "--point", "z", "--direction", "noising", "--model",
                         gpt2_vocab_dir, "--out", tmp_path)  # noising: no effect is 1, so farthest from 1 first
    noised = patching.activation_patching(model, batch.clean, batch.corrupted, metrics.logit_diff_metric(
        batch.answer, batch.wrong), "z", "all", direction="noising")
    l, h = divmod(int((noised.scores.flatten() - 1).abs().argmax()), model.cfg.n_head)
    assert code == 0 and "scores farthest from 1 (no effect)" in out
    assert out.split("score [95% interval]")[1].splitlines()[2].split()[0] == f"{l}.{h}"
    code, out, err = run(capsys, "patch", "a b", "a c", "--pairs", path, "--model", gpt2_vocab_dir)
    check_clean_error(code, out, err, r"--pairs replaces the single pair; drop --clean, --corrupted")
    code, out, err = run(capsys, "patch", "a b", "--model", gpt2_vocab_dir)
    check_clean_error(code, out, err, r"missing: --corrupted, --answer, --wrong\), or --pairs FILE")


# -- --device: one option for every command that loads a model ----------------------------------------------------
def test_device_cpu_runs_where_the_default_does(model_dir, tmp_path, capsys):
    argv = ["lens", "--model", model_dir, "7 8 9 7 8", "--target", 9, "--out", tmp_path / "l.png"]
    code, default, _ = run(capsys, *argv)
    assert code == 0
    code, on_cpu, err = run(capsys, *argv, "--device", "cpu")
    assert code == 0 and on_cpu == default and err == ""
    commands = [c.name for c in cli.COMMANDS]
    loaders = [name for name in commands if name not in ("download", "verify")]
    for name in loaders:  # every command that loads a model takes it, with its default said
        code, out, _ = run(capsys, name, "--help")
        assert code == 0 and "--device DEVICE" in out and "(default: cpu)" in " ".join(out.split()), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has cuda")
def test_device_that_is_not_here_is_one_clear_line(model_dir, tmp_path, capsys):
    never = tmp_path / "never-written"
    for name, argv in (("heads", ["heads", "--n", 4, "--batch", 2, "--out", never]), ("demo", ["demo", "--out", never])):
        code, out, err = run(capsys, *argv, "--model", model_dir, "--device", "cuda")
        assert code == 2 and out == "" and err == f"minitx {name}: error: --device cuda: cuda is not available here; " \
                                                   "use cpu\n"
    assert not never.exists()
    code, _, err = run(capsys, "lens", "1 2", "--model", model_dir, "--device", "gpu")
    assert code == 2 and "--device 'gpu' is not a torch device; use cpu, cuda, cuda:N or mps" in err

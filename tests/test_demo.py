"""minitx.demo: the report and figures are written, and every number reported equals a direct library call."""

import re
from pathlib import Path

import matplotlib.image
import pytest
import torch
from torch.testing import assert_close

import minitx
from tests.conftest import random_model
from minitx import cli, heads, lens, metrics, patching, path_patching
from minitx.demo import replace_first_copy, run_demo
from minitx.report import fmt

FIXTURE = cli.REPO_ROOT / "weights/induction-2l"
SAME = dict(atol=1e-6, rtol=1e-6)
N, BATCH, SEED = 8, 8, 3  # BATCH >= stats.MIN_PROMPTS: the fixture's verdict needs it


def checksum(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def model():
    """The trained fixture when it exists, else a random model of the same shape (vocab 64 + BOS 64)."""
    if FIXTURE.is_dir():
        return minitx.load(FIXTURE)
    return random_model(n_layer=2, n_head=2, n_embd=32, n_positions=48, vocab_size=65, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def demo(model, tmp_path_factory):
    torch.set_num_threads(1)
    before = checksum(model)
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(model, out, n=N, batch=BATCH, seed=SEED, log=None)
    for old, new in zip(before, model.parameters()):  # no weight changed, no hook left behind
        assert torch.equal(old, new)
    assert not model.has_context_hooks
    return result


def check_files(result):
    out = result["out_dir"]
    assert result["files"][0] == "report.md" and (out / "report.md").is_file()
    report = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert linked and set(linked) <= set(result["files"])  # every figure the report shows was written
    pngs = [f for f in result["files"] if f.endswith(".png")]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(pngs)
    for name in pngs:
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return report


def test_report_and_figures(demo):
    report = check_files(demo)
    assert demo["kind"] == "induction" and len(demo["files"]) >= 7
    for heading in ("## 1. Attention roles", "## 2. Activation patching and path patching", "## 3. Logit lens"):
        assert heading in report
    assert f"clean **{demo['clean_logit_diff']:.3f} [" in report  # the estimate, then its interval
    assert demo["hypothesis"] in report and demo["verdict"] in demo["hypothesis"]
    assert demo["summary"] and all(isinstance(line, str) for line in demo["summary"])


def test_no_verdict_from_a_model_that_does_not_do_the_task(tmp_path):
    """A random model: clean and corrupted differ by noise, so the verdict is withheld, in the report too."""
    model = random_model(n_layer=2, n_head=2, n_embd=32, n_positions=48, vocab_size=65, tie_word_embeddings=False)
    result = run_demo(model, tmp_path, n=N, batch=BATCH, seed=SEED, log=None)
    assert abs(result["clean_logit_diff"] - result["corrupted_logit_diff"]) < 0.5  # measured 0.018
    assert result["verdict"] == "undetermined" and "verdict undetermined" in result["hypothesis"]
    assert result["hypothesis"] in result["summary"] and result["hypothesis"] in (tmp_path / "report.md").read_text()


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="the known answer needs the trained fixture")
def test_fixture_tour_finds_k_composition(demo):
    """Known answer (docs/methods.md §9.3): the previous-token head acts on the induction head through its keys."""
    assert demo["main_l0_head"] == demo["prev_head"]
    assert float(demo["path_removed"]["k"]) >= 0.5 and demo["verdict"] == "supported"
    assert float(demo["path_intervals"]["k"].low) > 0.5  # the verdict needs the interval above one half
    assert float(demo["path_removed"]["k"]) > 3 * max(float(demo["path_removed"][p]) for p in ("q", "v", "logits"))


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="the verdict needs a model that does the task")
def test_fixture_tour_over_too_few_sequences_gives_no_verdict(model, tmp_path):
    """2 sequences: the keys' path still removes most (0.867 [0.824, 0.936]), but no verdict is drawn from 2 prompts."""
    result = run_demo(model, tmp_path, n=5, batch=2, seed=0, log=None)
    few = "too few prompts (n = 2; at least 8 needed to decide)"
    assert result["verdict"] == few and f"Verdict: {few}." in result["hypothesis"]
    assert float(result["path_intervals"]["k"].low) > 0.5  # an interval that would have said "supported"


def test_head_scores_equal_the_library(model, demo):
    tokens = heads.repeated_tokens(model.cfg.d_vocab, N, BATCH, SEED, prepend_bos=True)
    assert torch.equal(demo["tokens"], tokens)
    assert_close(demo["offset_scores"], heads.offset_scores(model, tokens, max_offset=4), **SAME)
    assert_close(demo["previous_token"], heads.previous_token_scores(model, tokens), **SAME)
    assert_close(demo["induction"], heads.induction_scores(model, n=N, batch=BATCH, seed=SEED, prepend_bos=True),
                 **SAME)
    assert_close(demo["duplicate"], heads.duplicate_token_scores(model, tokens), **SAME)
    assert_close(demo["bos"], heads.bos_attention_scores(model, tokens), **SAME)
    assert torch.equal(demo["offset_argmax"], heads.argmax_offset(demo["offset_scores"], min_offset=1))
    l, h = demo["induction_head"]
    assert l >= 1 and float(demo["induction"][l, h]) == float(demo["induction"][1:].max())


def test_patching_numbers_equal_the_library(model, demo):
    clean, corrupted = demo["clean_tokens"], demo["corrupted_tokens"]
    # the corruption: the first copy replaced, everything else (BOS, second copy) kept; answer r_n, wrong r'_n
    assert torch.equal(clean[:, N + 1:], corrupted[:, N + 1:]) and torch.equal(clean[:, 0], corrupted[:, 0])
    first, other = clean[:, 1:N + 1], corrupted[:, 1:N + 1]
    assert not (first[:, :, None] == other[:, None, :]).any()
    assert torch.equal(demo["answer"], first[:, -1]) and torch.equal(demo["wrong"], other[:, -1])
    assert torch.equal(clean[:, -1], first[:, -2])  # the last query is r_{n-1}: induction predicts r_n
    metric = metrics.logit_diff_metric(demo["answer"], demo["wrong"], pos=-1)
    noise = patching.activation_patching(model, clean, corrupted, metric, point="z", by="all", direction="noising")
    assert_close(demo["noising_z"], noise.scores, **SAME)
    assert demo["clean_logit_diff"] == pytest.approx(float(metric(model(clean)).mean()), abs=1e-5)
    assert demo["corrupted_logit_diff"] == pytest.approx(float(metric(model(corrupted)).mean()), abs=1e-5)
    resid = patching.activation_patching(model, clean, corrupted, metric, point="resid_pre", by="pos")
    assert_close(demo["resid_denoising"], resid.scores, **SAME)
    main, (li, hi) = demo["main_l0_head"], demo["induction_head"]
    assert main == demo["prev_head"] == tuple(divmod(int(demo["previous_token"][:li].argmax()), model.cfg.n_head))
    for name, receiver in (("q", ("q", li, hi)), ("k", ("k", li, hi)), ("v", ("v", li, hi)), ("logits", "logits")):
        score = path_patching.path_patch(model, clean, corrupted, main, receiver, metric).scores
        assert_close(demo["path"][name], score, **SAME)
        assert_close(demo["path_removed"][name], 1 - score, **SAME)
    shown = {k: f"{fmt(float(v))} [" for k, v in demo["path_removed"].items()}  # estimate, then its interval
    assert (f"keys removes {shown['k']}" in demo["hypothesis"] and f"queries {shown['q']}" in demo["hypothesis"]
            and f"values {shown['v']}" in demo["hypothesis"])


def test_lens_numbers_equal_the_library(model, demo):
    tokens = demo["tokens"]
    result = lens.logit_lens(model, tokens, targets="next", positions=list(range(tokens.shape[1] - 1)))
    second = list(range(N + 1, 2 * N))
    assert demo["lens_positions"] == second and demo["lens_labels"] == result.labels
    assert_close(demo["lens_target_prob"], result.target_probs[:, :, second].mean((1, 2)), **SAME)
    assert_close(demo["lens_target_rank"], result.target_ranks[:, :, second].float().mean((1, 2)), **SAME)
    assert_close(demo["lens_top1"], (result.target_ranks[:, :, second] == 0).float().mean((1, 2)), **SAME)


def test_without_bos(model, tmp_path):
    result = run_demo(model, tmp_path, n=5, batch=2, seed=1, prepend_bos=False, log=None)
    check_files(result)
    clean, corrupted = result["clean_tokens"], result["corrupted_tokens"]
    assert clean.shape == (2, 9) and torch.equal(result["answer"], clean[:, 4])
    assert torch.equal(clean[:, -1], clean[:, 3]) and torch.equal(clean[:, 5:], corrupted[:, 5:])
    assert result["lens_positions"] == [5, 6, 7, 8]


def test_replace_first_copy():
    tokens = heads.repeated_tokens(20, 6, 3, 0, prepend_bos=True)
    out = replace_first_copy(tokens, 6, 20, 19, seed=0)
    assert torch.equal(out[:, 7:], tokens[:, 7:]) and (out[:, 0] == 19).all()
    assert not (out[:, 1:7, None] == tokens[:, None, 1:7]).any() and (out[:, 1:7] != 19).all()
    assert all(len(set(row)) == 6 for row in out[:, 1:7].tolist())
    with pytest.raises(ValueError, match="too few tokens"):
        replace_first_copy(heads.repeated_tokens(10, 6, 1, 0, prepend_bos=True), 6, 10, 9, seed=0)


def test_gpt2_vocabulary_branch_runs_end_to_end(tmp_path):
    """Random weights: only that it runs, writes its files, and reports the library's lens numbers."""
    model = random_model(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=50257)
    result = run_demo(model, tmp_path, log=None, n_pairs=8)
    report = check_files(result)
    assert result["kind"] == "gpt2" and "The cat sat on the" in report and "head-roles.png" in result["files"]
    tokenizer = minitx.Tokenizer.default()
    tokens = tokenizer.to_tokens("The cat sat on the", prepend_bos=True)
    direct = lens.logit_lens(model, tokens, targets=tokenizer.to_single_token(" mat"))
    assert_close(result["lens_target_prob"], direct.target_probs[:, 0, -1], **SAME)
    assert result["n_pairs"] == 8 and "8 pairs" in report
    assert result["path_logits"].shape == (2, 2) and result["hypothesis"] in report
    check_verdicts(report)


def test_gpt2_tour_on_the_users_pairs(tmp_path):
    """--pairs FILE: the patching sections run on the file's pairs and say so; a file of another length's pairs
    mixed in is refused before any stage runs."""
    from minitx import datasets
    model = random_model(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=50257)
    rows = [datasets.PromptPair(p.clean, p.corrupted, p.answer, p.wrong)  # plain rows, as a user writes them
            for p in datasets.role_swap_pairs(8, templates=("who_was",), seed=5)]
    path = datasets.write_jsonl(rows, tmp_path / "pairs.jsonl")
    result = run_demo(model, tmp_path / "out", log=None, n_pairs=8, pairs=datasets.read_jsonl(path))
    report = (tmp_path / "out" / "report.md").read_text()
    assert result["n_pairs"] == 8 and "8 pairs (your file; templates not recorded" in report
    assert result["second"] is None and "Second corruption: none" in report
    assert torch.equal(result["clean_tokens"], datasets.to_batch(rows, minitx.Tokenizer.default(), True).clean)
    check_verdicts(report)
    mixed = rows + datasets.role_swap_pairs(1, templates=("who",))
    stages = []
    with pytest.raises(ValueError, match="different lengths"):
        run_demo(model, tmp_path / "mixed", log=stages.append, pairs=mixed)
    assert stages == [] and not (tmp_path / "mixed").exists()


ENGLISH = cli.REPO_ROOT / "weights/english-6l"
ENGLISH_PAIRS = 16  # the default is 64; fewer keep the test short


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    if not ENGLISH.is_dir():
        pytest.skip("weights/english-6l has not been trained yet")
    torch.set_num_threads(1)
    model = minitx.load(ENGLISH)
    out = tmp_path_factory.mktemp("english")
    return model, run_demo(model, out / "demo", log=None, n_pairs=ENGLISH_PAIRS)


def test_english_demo_on_the_shipped_model(english):
    """The shipped English model: report and figures, its data stated, numbers equal direct library calls."""
    from minitx import datasets, lens, patching, stats
    from minitx.demo import LENS_PROMPT, LENS_TARGET
    model, result = english
    report = check_files(result)
    assert len(result["files"]) >= 7 and "carries the subject-object relation" in report
    assert f"{ENGLISH_PAIRS} pairs (role swap; templates who; voice active; BOS first" in report
    tok = minitx.Tokenizer.default()
    tokens = tok.to_tokens(LENS_PROMPT, prepend_bos=True)
    direct = lens.logit_lens(model, tokens, targets=tok.to_single_token(LENS_TARGET))
    assert torch.equal(result["lens_target_prob"], direct.target_probs[:, 0, -1])
    assert result["lens_target_prob"][-1] > 0.9  # the model completes " mat"
    pairs = datasets.role_swap_pairs(ENGLISH_PAIRS, templates=("who",), seed=0)
    batch = datasets.to_batch(pairs, tok, prepend_bos=True)
    assert torch.equal(result["clean_tokens"], batch.clean) and torch.equal(result["answer"], batch.answer)
    noise = patching.activation_patching(model, batch.clean, batch.corrupted, batch.metric(), "z", "all",
                                         direction="noising")
    assert torch.equal(result["noising_z"], noise.scores)
    removed = stats.result_interval(noise, *stats.baselines(model, batch.clean, batch.corrupted, batch.metric()))
    assert_close(result["removed"].estimate, 1 - noise.scores.float(), atol=1e-5, rtol=1e-5)
    assert_close(result["removed"].low, removed.complement().low)
    # The role task flips with the story: every pair answers, a large positive difference becomes a negative one.
    assert result["task_right"] == ENGLISH_PAIRS
    assert float(result["clean_interval"].low) > 5 and float(result["corrupted_interval"].high) < -5
    assert len(result["head_classes"]) == 6 and result["head_roles"].n_families == ENGLISH_PAIRS
    test = result["head_test"]
    assert float(test["noised"].estimate) == pytest.approx(float(1 - noise.scores[result["main_head"]]), abs=1e-5)
    for point, direction, key in (("z", "denoising", "restored"), ("v", "noising", "values")):  # one head = sweep's
        sweep = patching.activation_patching(model, batch.clean, batch.corrupted, batch.metric(), point, "all",
                                             direction=direction).scores[result["main_head"]]
        expected = float(sweep) if direction == "denoising" else float(1 - sweep)
        assert float(test[key].estimate) == pytest.approx(expected, abs=1e-4), key
    assert "MLPs frozen" in report and "directly to the logits with MLPs frozen" in test["sentence"]
    check_verdicts(report)


def _interval(cell: str) -> tuple[float, float, float]:
    """'0.412 [0.350, 0.470]' -> (0.412, 0.350, 0.470)."""
    value, low, high = re.fullmatch(r"\s*(-?[\d.]+|nan) \[(-?[\d.]+|nan), (-?[\d.]+|nan)\]\s*", cell).groups()
    return float(value), float(low), float(high)


def check_verdicts(report: str) -> None:
    """Recomputes every verdict of the report from the numbers printed beside it."""
    from minitx import roles
    from minitx.demo import SHARE, TOLERANCE, head_test_verdict_iv
    from minitx.stats import MIN_PROMPTS, Interval
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in report.splitlines()
            if line.startswith("| ")]
    iv = lambda v, lo, hi: Interval(torch.tensor(v, dtype=torch.float64), torch.tensor(lo, dtype=torch.float64),
                                    torch.tensor(hi, dtype=torch.float64), n=MIN_PROMPTS)  # the demo's least
    claims = [r for r in rows if len(r) == 5 and r[4] in ("established", "not established") and r[2].startswith("[")]
    assert claims, "the report has a verdict table"
    for text, estimate, interval, threshold, verdict in claims:
        low, high = (float(v) for v in interval.strip("[]").split(", "))
        if threshold.startswith("+-"):  # direct + indirect differ from the total by more than the tolerance
            t = float(threshold[2:])
            assert t == TOLERANCE and verdict == ("established" if low > t or high < -t else "not established")
        else:
            assert verdict == ("established" if low > float(threshold) else "not established"), text
    necessity, sufficiency = (_interval(f"{r[1]} [{r[2].strip('[]')}]") for r in claims[:2])
    overall = head_test_verdict_iv(iv(*necessity), iv(*sufficiency))
    answer = next(line for line in report.splitlines() if line.startswith("**Answer.**"))
    assert f"relation: {overall}." in answer or "verdict undetermined" in answer
    if all(v[1] > SHARE for v in (necessity, sufficiency)):
        assert overall == "supported"
    classes = [r for r in rows if len(r) in (4, 5) and r[-1] in roles.CLASSES and "[" in r[1]]
    assert classes, "the report has a role / position / word table"
    for row in classes:
        contrasts = [iv(*_interval(c)) for c in row[1:-1]] + [None] * (5 - len(row))
        assert roles.classify(*contrasts) == row[-1], row


# -- the verdict rules, each a pure function of the numbers printed beside it -------------------------------------
def test_withheld_below_the_minimum_gap():
    from minitx.demo import MIN_GAP, withheld
    assert withheld(2.0, 1.0) is None and withheld(-3.0, 3.0) is None
    assert withheld(1.0, 1.0 + MIN_GAP) is None  # the threshold itself is enough
    reason = withheld(1.0, 1.2)
    assert "0.200 apart" in reason and "does not do the task" in reason


def test_interval_verdicts():
    """A claim holds only when its printed interval clears the threshold; an interval across it decides nothing."""
    from minitx.demo import SHARE, adds_up, claim, head_test_verdict_iv, mechanism_iv
    from minitx.stats import Interval
    iv = lambda lo, hi: Interval(torch.tensor((lo + hi) / 2), torch.tensor(lo), torch.tensor(hi), n=10)
    assert claim(iv(0.31, 0.5), SHARE) == "established" and claim(iv(0.29, 0.5), SHARE) == "not established"
    assert claim(iv(0.3002, 0.5), SHARE) == "not established"  # printed as 0.300: not above 0.3
    assert head_test_verdict_iv(iv(0.4, 0.6), iv(0.35, 0.5)) == "supported"
    assert head_test_verdict_iv(iv(0.1, 0.2), iv(0.0, 0.29)) == "not supported"
    assert head_test_verdict_iv(iv(0.4, 0.6), iv(0.0, 0.2)) == "partly supported"
    assert head_test_verdict_iv(iv(0.25, 0.6), iv(0.4, 0.5)) == "not established"  # one interval straddles 0.3
    assert mechanism_iv(iv(0.1, 0.3)).startswith("where it attends")
    assert mechanism_iv(iv(-0.3, -0.1)).startswith("what it moves")
    assert mechanism_iv(iv(-0.1, 0.3)).startswith("not established")
    assert adds_up(iv(-0.04, 0.04)) and adds_up(iv(0.02, 0.2)) and not adds_up(iv(0.06, 0.2))
    assert not adds_up(iv(-0.3, -0.06))


def test_too_few_prompts_give_no_verdict():
    """Below stats.MIN_PROMPTS every rule says so, even from intervals that would otherwise decide."""
    from minitx import stats
    from minitx.demo import MIN_PAIRS, SHARE, claim, head_test_verdict_iv, k_composition_verdict_iv, mechanism_iv
    from minitx.stats import Interval
    iv = lambda lo, hi, n=3: Interval(torch.tensor((lo + hi) / 2), torch.tensor(lo), torch.tensor(hi), n=n)
    few = "too few prompts (n = 3; at least 8 needed to decide)"
    assert MIN_PAIRS == stats.MIN_PROMPTS
    assert claim(iv(0.4, 0.6), SHARE) == few and head_test_verdict_iv(iv(0.4, 0.6), iv(0.35, 0.5)) == few
    assert head_test_verdict_iv(iv(0.4, 0.6, 8), iv(0.35, 0.5, 8)) == "supported"
    small = iv(-0.05, 0.1)
    assert k_composition_verdict_iv({"q": small, "k": iv(0.6, 0.8), "v": small}) == few
    assert mechanism_iv(iv(0.1, 0.3)) == f"not established ({few})"


def test_too_few_prompts_say_nothing_of_the_remainder():
    """The head test's 'direct + via later heads add up to the total' follows the same rule: below stats.MIN_PROMPTS
    prompts the sentence gives the reason and the interval, not 'add up to' (which n = 8 says of the same numbers)."""
    from minitx.demo import _head_sentence
    from minitx.stats import Interval
    iv = lambda lo, hi, n: Interval(torch.tensor((lo + hi) / 2), torch.tensor(lo), torch.tensor(hi), n=n)
    numbers = lambda n: {k: iv(0.4, 0.6, n) for k in ("noised", "restored", "pattern", "values", "direct",
                                                       "via_later_heads")} | {"remainder": iv(-0.02, 0.02, n),
                                                                              "verdict": "v", "mechanism": "m"}
    few = _head_sentence((0, 1), numbers(3))
    assert "add up to the total: too few prompts (n = 3; at least 8 needed to decide) (remainder" in few
    assert "Direct and via-later-heads shares" not in few and "NOT" not in few
    assert "Direct and via-later-heads shares add up to the total (remainder" in _head_sentence((0, 1), numbers(8))


def test_default_number_of_pairs_follows_the_model_size():
    from types import SimpleNamespace
    from minitx.demo import LARGE_MODEL, N_PAIRS, N_PAIRS_LARGE, default_n_pairs
    sized = lambda n: SimpleNamespace(parameters=lambda: [torch.empty(1).expand(n)])  # n parameters, no memory
    assert default_n_pairs(sized(LARGE_MODEL)) == N_PAIRS == 64
    assert default_n_pairs(sized(LARGE_MODEL + 1)) == N_PAIRS_LARGE == 8
    assert default_n_pairs(random_model()) == N_PAIRS


def test_k_composition_verdict_from_intervals():
    from minitx.demo import k_composition_verdict_iv
    from minitx.stats import Interval
    iv = lambda lo, hi: Interval(torch.tensor((lo + hi) / 2), torch.tensor(lo), torch.tensor(hi), n=10)
    small = iv(-0.05, 0.1)
    assert k_composition_verdict_iv({"q": small, "k": iv(0.6, 0.8), "v": small}) == "supported"
    assert k_composition_verdict_iv({"q": small, "k": iv(0.3, 0.45), "v": small}).startswith("partly supported")
    assert k_composition_verdict_iv({"q": small, "k": iv(0.45, 0.8), "v": small}).startswith("partly supported")
    assert k_composition_verdict_iv({"q": iv(0.5, 0.9), "k": iv(0.1, 0.3), "v": small}) == (
        "not supported: the queries carry more than the keys")
    assert k_composition_verdict_iv({"q": small, "k": iv(0.05, 0.4), "v": small}) == "not established"  # overlaps q


def test_demo_checks_the_context_before_any_stage(tmp_path):
    """A GPT-2-vocabulary model with 8 positions: refused at once, naming the prompt that does not fit."""
    model = random_model(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=50257)
    stages = []
    with pytest.raises(ValueError, match=r"n_positions=8, but the demo's longest prompt .* has \d+ tokens"):
        run_demo(model, tmp_path / "out", log=stages.append)
    assert stages == [] and not (tmp_path / "out").exists()


def test_report_folder_is_replaced_not_mixed(tmp_path):
    """A rerun replaces the previous demo's files (and only those); a foreign folder or a missing parent is refused."""
    from minitx.demo import MANIFEST, write_report
    from minitx.plots import layer_head_grid
    out = tmp_path / "report"
    figure = layer_head_grid(torch.zeros(2, 2), "zeros")
    assert write_report(out, ["# first"], {"old.png": figure}) == ["report.md", "old.png"]
    (out / "notes.txt").write_text("mine")  # a user's own file in the demo's folder survives
    assert write_report(out, ["# second"], {"new.png": figure}) == ["report.md", "new.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "new.png", "notes.txt", "report.md"])
    assert (out / "report.md").read_text() == "# second\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folder left behind
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    with pytest.raises(FileExistsError, match="did not write"):
        write_report(foreign, ["# x"], {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "a" / "b", ["# x"], {})
    assert not (tmp_path / "a").exists()


def test_report_folder_must_be_writable_before_the_tour(tmp_path):
    """A folder the report cannot be written into is refused at once, not after the tour (and leaves nothing)."""
    from minitx.demo import check_report_folder
    with pytest.raises(PermissionError, match=r"^cannot write the report into /proc: "):
        check_report_folder(Path("/proc/minitx-demo"))
    assert check_report_folder(tmp_path / "new") == [] and list(tmp_path.iterdir()) == []


def test_too_few_pairs_for_a_verdict_are_refused_before_any_stage(tmp_path):
    """A verdict needs an interval, and a bootstrap over fewer than MIN_PAIRS prompts is not one to decide by."""
    from minitx import datasets
    from minitx.demo import MIN_PAIRS
    model = random_model(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50257)
    stages = []
    with pytest.raises(ValueError, match=f"n_pairs=2: .* an int >= {MIN_PAIRS}"):
        run_demo(model, tmp_path / "few", log=stages.append, n_pairs=2)
    few = datasets.role_swap_pairs(MIN_PAIRS - 1, templates=("who_was",), seed=5)
    with pytest.raises(ValueError, match=f"has {MIN_PAIRS - 1} pairs; the demo needs at least {MIN_PAIRS}"):
        run_demo(model, tmp_path / "few", log=stages.append, pairs=few)
    assert stages == [] and not (tmp_path / "few").exists()

"""Same-run benchmark: minitx against transformers (eager and sdpa) and, when installed, TransformerLens.

    python scripts/bench.py              # GPT-2 small shape, random weights, a few minutes on 2 cores
    python scripts/bench.py --quick      # tiny model, seconds: keeps the script from rotting (CI runs it)
    python scripts/bench.py --only forward,cache --json out.json

Every number is a median (and min) over interleaved repeats: the peers take turns after a warm-up,
so a slow moment of the machine hits all of them alike. Ratios are peer time / minitx time (above 1
means minitx is faster). Correctness is checked on the way: identical sweep grids, identical greedy
tokens, logits within 1e-4; a failed check stops the script with an error.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minitx  # noqa: E402

try:  # TransformerLens is an optional peer (install: see the README's benchmark section)
    import transformer_lens  # noqa: F401
    import tl_peers  # scripts/tl_peers.py, beside this file
except ImportError:
    tl_peers = None
from minitx.loading import load  # noqa: E402
from minitx.metrics import logit_diff_metric  # noqa: E402
from minitx.patching import activation_patching  # noqa: E402
from minitx.path_patching import path_patch  # noqa: E402
from minitx import discovery, engine  # noqa: E402


DEVICE = "cpu"


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


def race(contestants: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Round-robin: each repeat runs every contestant once, in turn."""
    for fn in contestants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            times[name] += timed(fn, 1)
    return times


def report(title: str, times: dict[str, list[float]], flops: float | None = None, peak: float | None = None) -> dict:
    base = statistics.median(times["minitx"])
    print(f"\n{title}")
    rows = {}
    for name, t in times.items():
        med = statistics.median(t)
        extra = ""
        if flops and peak:
            extra = f"  {flops / med / 1e9:7.1f} GFLOP/s ({flops / med / peak:4.0%} of matmul)"
        ratio = med / base
        print(f"  {name:<32} median {med * 1e3:9.1f} ms  min {min(t) * 1e3:9.1f} ms  peer/minitx {ratio:5.2f}x{extra}")
        rows[name] = {"median_s": med, "min_s": min(t), "ratio_vs_minitx": ratio}
    return rows


def matmul_rate(repeats: int) -> float:
    a, b = torch.randn(1024, 768, device=DEVICE), torch.randn(768, 3072, device=DEVICE)
    t = statistics.median(race({"minitx": lambda: a @ b}, repeats, warmup=3)["minitx"])
    return 2 * 1024 * 768 * 3072 / t


def forward_flops(cfg, batch: int, pos: int) -> float:
    """Matmul FLOPs of one forward: projections, MLP, attention (causal half), unembedding."""
    d, L, n = cfg.d_model, cfg.n_layer, batch * pos
    per_layer = 2 * n * d * (3 * d + d + 2 * cfg.d_mlp) + 2 * batch * pos * pos * d  # QK and PV, causal half each
    return L * per_layer + 2 * n * d * cfg.d_vocab


def build(cfg_kwargs: dict, workdir: Path):
    """Random seeded weights, saved once, loaded into every peer from the same files."""
    import transformers
    model = minitx.Transformer(minitx.Config(**cfg_kwargs)).init_weights(0)
    model.save_pretrained(workdir)
    ours = load(str(workdir), device=DEVICE)
    peers = {"transformers-sdpa": transformers.GPT2LMHeadModel.from_pretrained(workdir, attn_implementation="sdpa"),
             "transformers-eager": transformers.GPT2LMHeadModel.from_pretrained(workdir, attn_implementation="eager")}
    for peer in peers.values():
        peer.to(DEVICE).eval().requires_grad_(False)
    if tl_peers is not None:  # optional peer, never a dependency
        try:
            peers.update(tl_peers.peers(peers["transformers-eager"], workdir, DEVICE))
        except Exception as error:  # an API this script does not know
            print(f"(TransformerLens not measured: {type(error).__name__}: {str(error)[:100]})")
    return ours, peers


def logits_of(peer, tokens):
    out = peer(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits  # TransformerLens gives a tensor


def random_tokens(cfg, shape, seed):
    return torch.randint(0, cfg.d_vocab, shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def bench_forward(ours, peers, shapes, repeats, results, key="forward"):
    for batch, pos in shapes:
        tokens = random_tokens(ours.cfg, (batch, pos), 0)
        with torch.inference_mode():
            expected = peers["transformers-eager"](tokens).logits
            for name, model in {"minitx": ours, **peers}.items():  # every peer computes the same function
                torch.testing.assert_close(logits_of(model, tokens), expected, atol=1e-4, rtol=1e-4,
                                           msg=lambda m, name=name: f"{name}: {m}")
            contestants = {"minitx": lambda: ours(tokens)}
            contestants.update({name: (lambda p=p: p(tokens)) for name, p in peers.items()})
            a, b = torch.randn(1024, 768, device=DEVICE), torch.randn(768, 3072, device=DEVICE)
            contestants["matmul"] = lambda: a @ b  # the reference rate, taken in the same moments
            times = race(contestants, repeats)
        rate = 2 * 1024 * 768 * 3072 / statistics.median(times.pop("matmul"))
        results[f"{key}_{batch}x{pos}"] = report(f"{key.replace('_', ' ')}: plain forward {batch}x{pos} (matmul in "
                                                 f"the same race: {rate / 1e9:.0f} GFLOP/s)", times,
                                                 forward_flops(ours.cfg, batch, pos), rate)
        results[f"{key}_{batch}x{pos}"]["matmul_flops"] = rate


def page_faults() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_cache(ours, peers, repeats, results):
    tokens = random_tokens(ours.cfg, (8, 128), 1)
    faults = {"minitx": [], "minitx run_with_cache": []}

    def counted(name, fn):  # minor page faults: fresh memory the kernel hands over and zeroes
        def call():
            before = page_faults()
            fn()
            faults[name].append(page_faults() - before)
        return call

    with torch.inference_mode():
        _, cache = ours.run_with_cache(tokens)
        asked = sum(t.numel() * t.element_size() for t in cache.values())
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.values()}
        n_points = len(cache)
        del cache
        contestants = {"minitx": counted("minitx", lambda: ours(tokens)),
                       "minitx run_with_cache": counted("minitx run_with_cache", lambda: ours.run_with_cache(tokens))}
        for name in ("TL bridge", "TL native"):
            if name in peers:
                contestants[f"{name} run_with_cache"] = lambda p=peers[name]: p.run_with_cache(tokens)
        times = race(contestants, repeats)
    results["cache_8x128"] = report("run_with_cache of every default point, 8x128 (ratio = time / plain forward)",
                                    times)
    print(f"  {n_points} points; bytes of the tensors asked for "
          f"{asked / 2**20:.1f} MiB, bytes of the storages they live in {sum(storages.values()) / 2**20:.1f} MiB")
    print("  minor page faults per call (median): " + ", ".join(
        f"{name} {statistics.median(f):.0f}" for name, f in faults.items()) +
        f"; malloc settings from the environment: {os.environ.get('MALLOC_MMAP_THRESHOLD_', 'default')}")
    results["cache_8x128"].update(bytes_asked=asked, bytes_held=sum(storages.values()), points=n_points,
                                  page_faults={name: statistics.median(f) for name, f in faults.items()})


def all_heads_flops(cfg, batch: int, pos: int) -> tuple[float, float]:
    """Matmul FLOPs of the batched all-heads z sweep (metric at the last position, logit difference) and
    of one full forward per patch. Attention scores are left out (small at these lengths)."""
    d, L, H = cfg.d_model, cfg.n_layer, cfg.n_head
    mlp = 2 * 2 * d * cfg.d_mlp  # per token: MLP in and out
    layer = 2 * 4 * d * d + mlp  # per token: QKV + O + MLP
    rows = H * batch  # the 12 head patches of one layer run together, each over the batch
    qkv = 2 * 3 * d * d
    last = rows * pos * qkv + rows * (layer - qkv)  # keep_last=1: q/k/v at every position, the rest at one
    # a patch at layer l starts after l's attention (start_at_mid): l's MLP, the blocks between, the last
    swept = sum(rows * pos * mlp + (L - 2 - l) * rows * pos * layer + last for l in range(L - 1)) + rows * mlp
    naive = H * L * (L * batch * pos * layer + 2 * batch * pos * d * cfg.d_vocab)
    return swept, naive


def one_forward_per_patch(model, clean, corrupted, metric, shape, by):
    """The definition, as every hook-based tool runs it: cache the clean run once, then one full
    forward of the corrupted prompt per patch. Works on minitx and on TransformerLens alike."""
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    out = torch.empty(shape)
    for index in torch.cartesian_prod(*[torch.arange(s) for s in shape]).tolist():
        layer, *rest = index
        site = (slice(None), rest[0], rest[1]) if by == "pos" else (slice(None), slice(None), rest[0])

        name = f"blocks.{layer}.attn.hook_z"

        def hook(z, hook, site=site, name=name):
            z = z.clone()
            z[site] = cache[name][site]
            return z

        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])
        out[tuple(index)] = metric(logits).mean()
    return out


def bench_sweeps(ours, peers, repeats, results):
    """All-heads and by-position head patching: batched sweep against one forward per patch."""
    gen = torch.Generator().manual_seed(2)
    for title, (batch, pos), by, key in [
            ("all-heads sweep (z, all positions)", (8, 16), "all", "sweep_all"),
            ("by-position head sweep (z)", (2, 8), "pos", "sweep_pos"),
            ("all-heads sweep, IOI-style pair: one token differs, at position 10", (8, 16), "all", "sweep_all_ioi")]:
        clean = torch.randint(0, ours.cfg.d_vocab, (batch, pos), generator=gen)
        corrupted = clean.clone()
        if key == "sweep_all_ioi":  # the shape of most real pairs: a shared prefix, one name swapped
            corrupted[:, 10] = (clean[:, 10] + 1 + torch.randint(0, ours.cfg.d_vocab - 1, (batch,), generator=gen)) \
                % ours.cfg.d_vocab
        else:
            corrupted[:, : pos // 2] = torch.randint(0, ours.cfg.d_vocab, (batch, pos // 2), generator=gen)
        clean, corrupted = clean.to(DEVICE), corrupted.to(DEVICE)
        metric = logit_diff_metric(answer=1, wrong=2, pos=-1)
        with torch.inference_mode():
            sweep = lambda: activation_patching(ours, clean, corrupted, metric, point="z", by=by)  # noqa: E731
            grid = sweep().raw
            naive_grids = []
            naive = {"one forward per patch": lambda: naive_grids.append(
                one_forward_per_patch(ours, clean, corrupted, metric, grid.shape, by))}
            if key == "sweep_all_ioi":  # the same work as the first row's baseline: timed once here
                times = {"minitx": timed(sweep, repeats), **{name: timed(fn, 1) for name, fn in naive.items()}}
            else:
                times = race({"minitx": sweep, **naive}, repeats, warmup=0)  # the sweep above warmed the model
            torch.testing.assert_close(grid, naive_grids[-1], atol=1e-5, rtol=1e-5)  # identical grids
            if "TL bridge" in peers and key != "sweep_all_ioi":  # one full forward per patch: one run is enough
                tl_grid = []
                times["TL bridge, one forward per patch"] = timed(lambda: tl_grid.append(one_forward_per_patch(
                    peers["TL bridge"], clean, corrupted, metric, grid.shape, by)), 1)
                torch.testing.assert_close(grid, tl_grid[0], atol=1e-4, rtol=1e-4)
        results[key] = report(f"{title}: {grid.numel()} patches, batch {batch} x {pos} tokens "
                              f"(ratio = peer / batched; grids equal)", times)
        if key == "sweep_all":  # the work each does, to tell a better algorithm from a faster machine
            swept, naive = all_heads_flops(ours.cfg, batch, pos)
            rates = [work / statistics.median(times[name]) / 1e9
                     for work, name in ((swept, "minitx"), (naive, "one forward per patch"))]
            print(f"  matmul work: batched {swept / 1e12:.2f} TFLOP, one forward per patch {naive / 1e12:.2f} TFLOP "
                  f"(bound {naive / swept:.2f}x at equal speed); achieved {rates[0]:.0f} and {rates[1]:.0f} GFLOP/s")


def bench_path(ours, results):
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, ours.cfg.d_vocab, (8, 16), generator=gen).to(DEVICE)
    new = torch.randint(0, ours.cfg.d_vocab, (8, 16), generator=gen).to(DEVICE)
    H, L = ours.cfg.n_head, ours.cfg.n_layer
    receivers = [("q", layer, head) for layer in range(1, L) for head in range(H)]
    calls = {"n": 0}
    forward = ours.forward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    ours.forward = counting
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            result = path_patch(ours, clean, new, [(0, 0)], receivers, logit_diff_metric(1, 2))
            seconds = time.perf_counter() - start
    finally:
        del ours.forward
    print(f"\npath patching, sender 0.0 -> queries of all {len(receivers)} later heads, 8x16 tokens: "
          f"{seconds * 1e3:.0f} ms, {calls['n']} forwards in all (2 shared + 2 for the experiment), "
          f"score {float(result.scores):.3f}")
    results["path_patching"] = {"seconds": seconds, "forwards": calls["n"]}


def bench_discovery(ours, peers, repeats, results, batch: int = 8, pos: int = 16, n_circuits: int = 20):
    """Circuit discovery: EAP over every edge (against TransformerLens's edge attribution patching, scores
    checked equal), its cost in plain forwards of the same batch, and the faithfulness of n_circuits circuits
    by exact edge patching side by side against one patched forward per circuit."""
    gen = torch.Generator().manual_seed(6)
    clean = torch.randint(0, ours.cfg.d_vocab, (batch, pos), generator=gen).to(DEVICE)
    corrupted = clean.clone()
    corrupted[:, pos // 2] = (clean[:, pos // 2] + 1) % ours.cfg.d_vocab  # one token differs, as in most pairs
    metric = logit_diff_metric(1, 2)
    graph = engine.edge_graph(ours)
    # EAP in minitx's noising form with x = corrupted, x' = clean is TL's denoising form (tests/test_discovery_tl_parity.py)
    eap = lambda: discovery.eap(ours, corrupted, clean, metric)  # noqa: E731
    scores = eap()
    with torch.no_grad():
        times = race({"minitx": eap, "minitx plain forward (same batch)": lambda: ours(clean)}, repeats)
    if "TL bridge" in peers:  # TL's call alone is timed; laying its scores out in minitx's order is not
        from tl_peers import tl_edge_attribution, tl_edge_scores  # noqa: E402
        tl = []
        times["TL bridge edge attribution_patch"] = timed(lambda: tl.append(tl_edge_attribution(
            peers["TL bridge"], clean, corrupted, metric)), repeats)
        tl_scores = tl_edge_scores(peers["TL bridge"], clean, corrupted, metric, graph, tl[0])
        torch.testing.assert_close(scores.scores, tl_scores.to(scores.scores.dtype), atol=1e-4, rtol=1e-3)
    rows = report(f"EAP over all {graph.n_edges} edges, {batch} pairs x {pos} tokens (scores equal to TL's where run)",
                  times)
    forwards = rows["minitx plain forward (same batch)"]["ratio_vs_minitx"]
    print(f"  EAP costs {1 / forwards:.1f} plain forwards of the same batch (2 forwards + 1 backward + the edge sums; "
          f"unembedded only where the metric reads, positions of the shared prefix skipped in the edge sums)")
    results["eap"] = {**rows, "forward_equivalents": 1 / forwards}
    ablated = engine.ablation_values(ours, "resample", clean, corrupted=corrupted)
    ks = torch.linspace(graph.n_edges * 0.01, graph.n_edges * 0.2, n_circuits).long().tolist()
    circuits = torch.stack([discovery.top_edges(scores.scores, k) for k in ks])
    with torch.no_grad():
        batched = lambda: engine.edge_patching(ours, clean, ~circuits, ablated, metric, max_rows=batch * n_circuits)  # noqa: E731
        separate = lambda: torch.cat([engine.edge_patching(ours, clean, ~c, ablated, metric) for c in circuits])  # noqa: E731
        torch.testing.assert_close(batched(), separate(), atol=1e-4, rtol=1e-4)
        times = race({"minitx": batched, "one call per circuit": separate}, repeats)
    results["faithfulness"] = report(f"faithfulness of {n_circuits} circuits by exact edge patching (top 1%..20% of "
                                     f"the edges), {batch} x {pos} tokens: side by side vs one call each", times)
    print("  side by side, the circuits share one clean run (its keys and values before the shared prefix, the "
          "writers' values) and run a few at a time (on a CPU, as many as keep a per-head copy of the stream "
          "in cache); every patched run still does a forward's work, so on a CPU batching saves no arithmetic")


def bench_generate(ours, peers, repeats, results):
    prompt = random_tokens(ours.cfg, (1, 16), 4)
    hf = peers["transformers-sdpa"]
    kwargs = dict(max_new_tokens=64, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        expected = hf.generate(prompt, **kwargs)
        assert torch.equal(ours.generate(prompt, 64), expected), "greedy tokens differ"
        times = race({"minitx": lambda: ours.generate(prompt, 64),
                      "transformers-sdpa": lambda: hf.generate(prompt, **kwargs)}, repeats)
        for name in ("TL bridge", "TL native"):  # no working KV cache in either (see tl_peers.py): one run
            if name in peers:
                out = []
                times[name] = timed(lambda p=peers[name]: out.append(p.generate(prompt, max_new_tokens=64,
                                                                                **tl_peers.GREEDY)), 1)
                assert torch.equal(out[0].to(expected.device), expected), f"{name}: greedy tokens differ"
    rows = report("greedy generation, 64 new tokens from 16, batch 1 (tokens identical)", times)
    for name, row in rows.items():
        print(f"  {name:<32} {64 / row['median_s']:.1f} tokens/s")
    results["generate"] = rows


def bench_fresh_process(workdir: Path, repeats: int, results):
    """Import, load a local checkpoint, first logits, in a new Python process each time."""
    snippets = {
        "minitx": f"import torch, minitx; m = minitx.load({str(workdir)!r}); m(torch.tensor([[1, 2, 3]]))",
        "transformers-sdpa": ("import torch, transformers; m = transformers.GPT2LMHeadModel.from_pretrained("
                              f"{str(workdir)!r}); m(torch.tensor([[1, 2, 3]]))"),
    }
    if tl_peers is not None:
        snippets["TL bridge"] = tl_peers.FRESH_PROCESS.format(path=str(workdir))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    contestants = {name: (lambda code=code: subprocess.run([sys.executable, "-c", code], check=True, env=env,
                                                           capture_output=True)) for name, code in snippets.items()}
    results["fresh_process"] = report("fresh process: import + load + first logits", race(contestants, repeats, 0))
    steps = ("import torch", "import minitx", "load", "first logits")  # where minitx's fresh process spends it
    timer = ("import time; t = [time.perf_counter()]; import torch; t.append(time.perf_counter()); import minitx; "
             f"t.append(time.perf_counter()); m = minitx.load({str(workdir)!r}); t.append(time.perf_counter()); "
             "m(torch.tensor([[1, 2, 3]])); t.append(time.perf_counter()); print(*[b - a for a, b in zip(t, t[1:])])")
    runs = [[float(x) for x in subprocess.run([sys.executable, "-c", timer], check=True, env=env, capture_output=True,
                                              text=True).stdout.split()] for _ in range(repeats)]
    split = {step: statistics.median(run[i] for run in runs) for i, step in enumerate(steps)}
    print("  minitx, step by step (median s): " + ", ".join(f"{step} {t:.2f}" for step, t in split.items()))
    results["fresh_process"]["minitx_steps_s"] = split


def bench_scaling(ours, peers, results, lengths):
    print("\nhow cost grows with sequence length (batch 1): forward time, cache bytes")
    rows = []
    for n in lengths:
        tokens = random_tokens(ours.cfg, (1, n), n)
        with torch.inference_mode():
            t = statistics.median(timed(lambda: ours(tokens), 3))
            _, cache = ours.run_with_cache(tokens)
        nbytes = sum(v.numel() * v.element_size() for v in cache.values())
        print(f"  {n:5d} tokens: forward {t * 1e3:8.1f} ms, default cache {nbytes / 2**20:8.1f} MiB")
        rows.append({"tokens": n, "forward_s": t, "cache_bytes": nbytes})
    results["scaling"] = rows


def bench_bfloat16(ours, peers, repeats, results):
    """bfloat16 against float32: speed of the plain forward and the logit error it costs."""
    tokens = random_tokens(ours.cfg, (8, 128), 5)
    hf = peers["transformers-sdpa"]
    with torch.inference_mode():
        reference = ours(tokens).double()
        ours16, hf16 = copy.deepcopy(ours).to(torch.bfloat16), copy.deepcopy(hf).to(torch.bfloat16)
        times = race({"minitx": lambda: ours(tokens), "minitx bfloat16": lambda: ours16(tokens),
                      "transformers-sdpa": lambda: hf(tokens), "transformers-sdpa bfloat16": lambda: hf16(tokens)},
                     repeats)
        rows = report("bfloat16, plain forward 8x128 (ratio = time / minitx float32)", times)
        for name, model in (("minitx bfloat16", ours16), ("transformers-sdpa bfloat16", hf16)):
            logits = logits_of(model, tokens).double()
            error = (logits - reference).abs()
            same_top1 = (logits.argmax(-1) == reference.argmax(-1)).double().mean()
            print(f"  {name:<27} logits vs float32: max |error| {float(error.max()):.3f}, "
                  f"mean {float(error.mean()):.4f} (logit std {float(reference.std()):.2f}); "
                  f"same top-1 token at {float(same_top1):.1%} of positions")
            rows[name].update(max_abs_error=float(error.max()), mean_abs_error=float(error.mean()),
                              top1_agreement=float(same_top1))
        del ours16, hf16
    results["bfloat16_8x128"] = rows
    trained = ROOT / "weights" / "english-6l"  # the shipped trained model, on text like its training data
    if trained.exists():
        import random
        import make_corpus  # scripts/make_corpus.py, beside this file
        rng = random.Random(0)
        text = torch.tensor([make_corpus.row_tokens(rng, 64) for _ in range(32)], device=DEVICE)
        with torch.inference_mode():
            full = load(str(trained), device=DEVICE)
            reference, logits = full(text).double(), full.to(torch.bfloat16)(text).double()
        error = (logits - reference).abs()
        same = logits.argmax(-1) == reference.argmax(-1)
        logp, logp16 = reference.log_softmax(-1), logits.log_softmax(-1)
        kl = float((logp.exp() * (logp - logp16)).sum(-1).mean())
        sure = logp.max(-1).values.exp() > 0.5  # positions where float32 gives its top token p > 0.5
        row = {"max_abs_error": float(error.max()), "kl_nats": kl, "top1_agreement": float(same.double().mean()),
               "top1_agreement_where_p_over_half": float(same[sure].double().mean())}
        print(f"  trained weights/english-6l on 32 x 64 tokens of its corpus, bfloat16 vs float32: max |logit error| "
              f"{row['max_abs_error']:.3f}, mean KL {kl:.2e} nats; same top-1 token at {row['top1_agreement']:.1%} "
              f"of positions, {row['top1_agreement_where_p_over_half']:.1%} where float32's top token has p > 0.5")
        results["bfloat16_english-6l"] = row


def bench_composition(ours, peers, repeats, results):
    """All Q-, K- and V-composition scores of every head pair: minitx.circuits against TransformerLens's
    all_composition_scores on the same weights, checked equal. minitx's random baseline (which TransformerLens
    does not compute) is cached per shape after the warm-up; its one-off cost is timed on its own."""
    from minitx.circuits import all_composition_scores, random_composition_baseline
    contestants = {"minitx": lambda: [all_composition_scores(ours, mode) for mode in "QKV"]}
    if "TL bridge" in peers:
        bridge = peers["TL bridge"]
        contestants["TL bridge"] = lambda: [bridge.all_composition_scores(mode).scores for mode in "QKV"]
    with torch.no_grad():  # not inference_mode: the model caches its stacked weights by version counter
        for mode in "QKV" if "TL bridge" in peers else "":
            ours_scores, theirs = all_composition_scores(ours, mode).scores, bridge.all_composition_scores(mode).scores
            if not torch.allclose(ours_scores, theirs.to(ours_scores), atol=1e-5, rtol=1e-4):
                raise SystemExit(f"composition scores ({mode}) differ from TransformerLens's by "
                                 f"{float((ours_scores - theirs).abs().max()):.2e}")
        times = race(contestants, repeats)
        random_composition_baseline.cache_clear()
        baseline = timed(lambda: random_composition_baseline(ours.cfg.d_model, ours.cfg.d_head), 1)[0]
    results["composition_scores"] = report("all composition scores, Q + K + V, every head pair", times)
    print(f"  (minitx's random baseline, 200 samples, computed once per shape: {baseline * 1e3:.1f} ms)")
    results["composition_scores"]["minitx"]["baseline_once_s"] = baseline


def bench_lenses(cfg_kwargs: dict, n_prompts: int, pos: int, repeats: int, results):
    """Fitting a Jacobian lens (every block output, dim_batch 8) on n_prompts prompts of `pos` tokens: minitx's
    fit_jacobian_lens against TransformerLens 4.3's JacobianLens.fit on the same weights and tokens (the bridge
    booted from a checkpoint with GPT-2's tokenizer files), checked equal to 1e-4; then tuned-lens training
    throughput (train_tuned_lens, the published recipe, batch 4 x pos) in tokens/s. GPT-2 vocabulary."""
    import shutil
    from minitx.jacobian_lens import fit_jacobian_lens
    from minitx.tokenizer import Tokenizer
    from minitx.tuned_lens import train_tuned_lens
    words = [" the", " cat", " sat", " on", " mat", " and", " a", " dog", " ran", " to", " park", " in", " rain"]
    rng = torch.Generator().manual_seed(0)
    texts = ["".join(words[int(i)] for i in torch.randint(0, len(words), (pos - 1,), generator=rng))
             for _ in range(n_prompts)]  # one GPT-2 token per word: pos tokens with BOS
    tokens = [Tokenizer.default().to_tokens(t, prepend_bos=True)[0].to(DEVICE) for t in texts]
    fit = dict(dim_batch=8, max_seq_len=pos, skip_first_positions=min(16, pos // 4))
    with tempfile.TemporaryDirectory() as tmp:
        model = minitx.Transformer(minitx.Config(**cfg_kwargs)).init_weights(0)
        model.save_pretrained(tmp)
        ours = load(tmp, device=DEVICE).eval().requires_grad_(False)
        fitted = {}  # each contestant's last lens, compared after the race
        contestants = {"minitx": lambda: fitted.update(minitx=fit_jacobian_lens(ours, tokens, progress=False, **fit))}
        if tl_peers is not None:
            from transformer_lens.tools.analysis.jacobian_lens import JacobianLens
            source = ROOT / "minitx" / "data" / "gpt2"
            shutil.copy(source / "encoder.json", Path(tmp) / "vocab.json")
            shutil.copy(source / "vocab.bpe", Path(tmp) / "merges.txt")
            Path(tmp, "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", **dict.fromkeys(
                ["bos_token", "eos_token", "unk_token"], "<|endoftext|>")}))
            bridge = tl_peers.bridge(tmp, DEVICE)
            contestants["TL bridge"] = lambda: fitted.update(TL=JacobianLens.fit(bridge, texts, corpus="bench",
                                                                               show_progress=False, **fit))
        times = race(contestants, repeats, warmup=0)
        if "TL" in fitted:
            ours_J, theirs_J = fitted["minitx"].jacobians, fitted["TL"].jacobians
            gap = max(float((ours_J[l].cpu() - theirs_J[l]).abs().max()) for l in ours_J)
            if gap > 1e-4:
                raise SystemExit(f"Jacobian lens differs from TransformerLens's fit by {gap:.2e}")
        key = f"jacobian_lens_fit_{n_prompts}x{pos}"
        results[key] = report(f"Jacobian lens fit, {n_prompts} prompts x {pos} tokens, d_model {ours.cfg.d_model}, "
                              f"{ours.cfg.n_layer} layers", times)
        batches = [random_tokens(ours.cfg, (4, pos), seed) for seed in range(3)]
        train_tuned_lens(ours, batches[:1], progress=False)  # warm-up
        seconds = statistics.median(timed(lambda: train_tuned_lens(ours, batches, progress=False), repeats))
        rate = 3 * 4 * pos / seconds
        print(f"  tuned lens training (train_tuned_lens, 3 steps of 4 x {pos} tokens, full vocabulary): "
              f"{rate:,.0f} tokens/s")
        results["tuned_lens_training"] = {"tokens_per_s": rate, "batch": [4, pos], "steps": 3}


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, one repeat: a smoke test, not a measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="forward,cache,sweeps,path,generate,fresh,scaling,medium,bfloat16,composition,"
                                          "lenses")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every peer runs there)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    only = set(args.only.split(","))
    small = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    if args.quick:
        small = dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=500)
        args.repeats = 1
    results = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                           "device": torch.cuda.get_device_name() if DEVICE.startswith("cuda") else cpu_name(),
                           "transformer_lens": tl_peers is not None},
               "config": small}
    peak = matmul_rate(args.repeats)
    print(f"matmul (1024x768 @ 768x3072) in this run: {peak / 1e9:.1f} GFLOP/s; torch threads {torch.get_num_threads()}")
    results["matmul_flops"] = peak
    with tempfile.TemporaryDirectory() as tmp:
        ours, peers = build(small, Path(tmp))
        shapes = [(1, 16), (2, 32)] if args.quick else [(1, 128), (8, 128), (1, 1024)]
        if "forward" in only:
            bench_forward(ours, peers, shapes, args.repeats, results)
        if "cache" in only:
            bench_cache(ours, peers, args.repeats, results)
        if "sweeps" in only:
            bench_sweeps(ours, peers, max(1, args.repeats // 2), results)
        if "path" in only:
            bench_path(ours, results)
        if "discovery" in only:
            bench_discovery(ours, peers, max(1, args.repeats // 2), results)
        if "generate" in only:
            bench_generate(ours, peers, max(1, args.repeats // 2), results)
        if "bfloat16" in only:
            bench_bfloat16(ours, peers, args.repeats, results)
        if "fresh" in only and DEVICE == "cpu":
            bench_fresh_process(Path(tmp), args.repeats, results)
        if "composition" in only:
            bench_composition(ours, peers, max(1, args.repeats // 2), results)
        if "scaling" in only:
            bench_scaling(ours, peers, results, [16, 32] if args.quick else [64, 128, 256, 512, 1024])
        del ours, peers
    if "lenses" in only:
        # GPT-2 small's shape needs 768 backward passes per prompt: a GPU's work. On a CPU, 4 layers of width 256.
        shape = small if DEVICE.startswith("cuda") else dict(small, n_layer=4, n_head=4, n_embd=256)
        bench_lenses(dict(small, vocab_size=50257) if args.quick else shape, 4 if args.quick else 16,
                     24 if args.quick else (128 if DEVICE.startswith("cuda") else 64),
                     1 if args.quick else max(1, args.repeats // 2), results)
    if "medium" in only and not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            ours, peers = build(dict(n_layer=24, n_head=16, n_embd=1024, n_positions=1024, vocab_size=50257), Path(tmp))
            bench_forward(ours, peers, [(1, 128)], args.repeats, results, key="GPT-2_medium_shape")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

"""Exhaustive circuit search: the faithfulness of EVERY closed circuit of up to k edges (issue 16).

A circuit is closed when each kept edge lies on a path from the input to the logits through kept edges, i.e.
`minitx.discovery.prune(c) == c`: the only circuits discovery can output (docs/methods.md §12.3). In a DAG that
is the same as: every component (head or MLP) an edge of the circuit touches has at least one kept edge in and
one kept edge out. Under resample ablation F(C) = F(prune(C)) for every edge set C (a component with no kept
input reads the corrupted run, so outputs its corrupted value, which its kept edges then carry anyway; an edge
into a component that reaches the logits through no kept edge changes nothing), so the best closed circuit of
at most k edges is the best of ALL edge sets of at most k edges. Under mean ablation that equality fails; there
the search covers what the method can output (pruned circuits).

Evaluation is exact edge patching with ACDC's semantics (docs/methods.md §12.2), factorised: a component's
output in a patched run depends only on its "state", the kept edges into it and their sources' states, so each
distinct state is computed once with the model's own block (its per-head q/k/v inputs or MLP input set by hooks)
and each circuit's final residual is a sum of stored writer values, read by the metric (which must be affine in
the logits, as a logit difference is) at the positions it reads. Prompts go in blocks (--block): the stored
states scale with the block. The numbers are checked against `minitx.engine.edge_patching` on random circuits
(printed), and the best circuits of each size are re-run through `minitx.discovery.faithfulness`, which also
gives their complements. Plain edge_patching of every circuit would take about 0.1 s each on a CPU thread (a
day for the 1.25 million circuits of at most 10 edges); this takes minutes.

    python3 scripts/exhaustive_circuits.py --max-edges 9                  # the induction fixture, resample + mean
    python3 scripts/exhaustive_circuits.py --max-edges 10 --ablations resample --block 8 --json /tmp/k10.json
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import minitx  # noqa: E402
from minitx import discovery as D  # noqa: E402
from minitx import engine as E  # noqa: E402
from minitx.hooks import get_act_name  # noqa: E402


# -- the graph's components -----------------------------------------------------------------------------------------
def edge_ends(graph: E.EdgeGraph) -> tuple[list[int], list[int]]:
    """(source writer, target component) of every edge; target -1 = the logits."""
    owner = graph.reader_owner.tolist()
    return graph.edges[:, 0].tolist(), [owner[r] for r in graph.edges[:, 1].tolist()]


# -- the enumeration --------------------------------------------------------------------------------------------------
def closed_circuits(graph: E.EdgeGraph, candidates, max_edges: int) -> list[tuple[int, ...]]:
    """Every closed edge set of at most max_edges edges drawn from `candidates` (edge indices), each once, as
    sorted tuples, the empty set included. Targets are visited from the logits back through the components in
    reverse topological order; a component is used once a chosen edge leaves it (all its out-edges enter later
    targets, already visited), and then takes a non-empty subset of its candidate in-edges, or is skipped."""
    if max_edges < 0:
        raise ValueError(f"max_edges={max_edges}: the largest circuit size, an int >= 0")
    candidates = sorted(set(int(e) for e in candidates))
    if any(not 0 <= e < graph.n_edges for e in candidates):
        raise ValueError(f"candidates must be edge indices in 0..{graph.n_edges - 1}")
    src, dst = edge_ends(graph)
    targets = [-1] + list(range(graph.n_writers - 1, 0, -1))
    into = {t: [e for e in candidates if dst[e] == t] for t in targets}
    later = {targets[i]: set(targets[i + 1:]) for i in range(len(targets))}
    found: list[tuple[int, ...]] = []

    def visit(i: int, chosen: tuple, used: frozenset, budget: int) -> None:
        if i == len(targets):
            found.append(tuple(sorted(chosen)))
            return
        t = targets[i]
        if t != -1 and t not in used:
            visit(i + 1, chosen, used, budget)
            return
        for n in range(0 if t == -1 else 1, budget + 1):
            for edges in itertools.combinations(into[t], n):
                now_used = used | {src[e] for e in edges if src[e] != 0}
                if budget - n >= len(now_used & later[t]):  # each used component still needs an in-edge
                    visit(i + 1, chosen + edges, now_used, budget - n)

    visit(0, (), frozenset(), max_edges)
    return sorted(found, key=lambda c: (len(c), c))


# -- factorised exact edge patching ---------------------------------------------------------------------------------
def affine_readout(model, tokens: Tensor, metric) -> tuple[Tensor, Tensor, Tensor]:
    """The metric as an affine function of the logits: (rows bool [batch, pos], where it reads them; weights
    [n_rows, d_vocab]; const [batch]) with metric(logits)[b] = const[b] + sum over b's rows r of weights[r] .
    logits[r]. Found from its gradient, checked on random logits (a logit difference, or a mean of them, is
    affine); ValueError when it is not."""
    with torch.no_grad():
        logits = model(tokens)
    x = torch.zeros_like(logits).requires_grad_(True)
    value = E.check_metric_values(metric(x), len(tokens))
    (grad,) = torch.autograd.grad(value.sum(), [x])  # prompt b's metric reads only prompt b's logits
    const, rows = value.detach().to(logits.dtype), grad.abs().sum(-1) > 0
    g = torch.Generator().manual_seed(0)
    noise = [torch.randn(logits.shape, generator=g, dtype=logits.dtype) for _ in range(2)]
    for probe in (logits, logits + 3 * noise[0], 10 * noise[1]):
        got, want = metric(probe).to(probe.dtype), const + (grad * probe).sum((1, 2))
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-4):
            raise ValueError("the factorised search needs a metric affine in the logits (a logit difference or a mean "
                             f"of them); this one differs from its linearisation by {float((got - want).abs().max()):.2e}")
    return rows, grad[rows], const


class StateKeys:
    """The distinct states of every writer over many circuits, shared by every prompt block: ids[w] maps a state
    key (the kept edges into w, each with its source's state) to its id."""

    def __init__(self, graph: E.EdgeGraph):
        self.graph, (self.src, self.dst) = graph, edge_ends(graph)
        self.ids = {w: {} for w in range(1, graph.n_writers)}

    def register(self, circuit) -> list[int]:
        """The state id of every writer in this circuit ([n_writers]: 0 for the input, -1 where the writer is the
        source of no kept edge, so its value is never read), new states registered."""
        kept_into, sources = {}, {self.src[e] for e in circuit}
        for e in circuit:
            kept_into.setdefault(self.dst[e], []).append(e)
        state = [0] + [-1] * (self.graph.n_writers - 1)
        for w in range(1, self.graph.n_writers):
            if w in sources:
                key = tuple((e, state[self.src[e]]) for e in sorted(kept_into.get(w, ())))
                state[w] = self.ids[w].setdefault(key, len(self.ids[w]))
        return state


class _Captured(Exception):
    """Raised by a hook once the output it wants is recorded: the rest of the forward is not needed."""


class FactorisedPatching:
    """Exact edge patching of many edge sets of one prompt batch, each distinct component state computed once.

    A writer's state: the kept edges into it with their sources' states. Its value: its output when each of its
    readers reads bias + sum over kept edges of the source's value in that state + sum over the other edges of
    the source's ablated value (`minitx.engine.edge_patching`'s reader input). The final residual is the same sum
    at the logits, needed only where the (affine) metric reads it; positions after the last of those are cut
    off (attention is causal)."""

    def __init__(self, model, tokens: Tensor, ablated: E.WriterValues, readout, keys: StateKeys, chunk: int = 32):
        """readout: `affine_readout` of the metric on these prompts; keys: the states to compute."""
        self.model, self.chunk, self.keys = model, chunk, keys.ids
        self.graph = g = E.edge_graph(model)
        self.src, self.dst = edge_ends(g)
        self.edge_reader = g.edges[:, 1].tolist()
        tokens = E.token_batch(tokens)
        rows, self.weights, self.const = readout
        n_pos = int(rows.any(0).nonzero().max()) + 1
        self.tokens, self.rows = tokens[:, :n_pos], rows[:, :n_pos]
        self.row_prompt = self.rows.nonzero()[:, 0]  # [n_rows]: the prompt of each read row
        B, L = self.tokens.shape[0], g.n_layer
        streams = [get_act_name("resid_pre", l) for l in range(L)] + [get_act_name("resid_mid", l) for l in range(L)]
        names = E.writer_points(L) + streams + [get_act_name("resid_post", L - 1)]
        with torch.no_grad():
            _, cache = model.run_with_cache(self.tokens, names_filter=names)
        clean = self._per_writer(E.writers_of(cache, L))
        self.ablated = [x[:, :n_pos] for x in self._per_writer(ablated, B)]
        self.base = {}  # time -> bias + the ablated value of every writer before: a reader's input, nothing kept
        for t, name in [(2 * l, get_act_name("resid_pre", l)) for l in range(L)] + \
                       [(2 * l + 1, get_act_name("resid_mid", l)) for l in range(L)] + [(2 * L, names[-1])]:
            before = [w for w in range(g.n_writers) if g.writer_time(w) < t]
            self.base[t] = cache[name] + sum(self.ablated[w] - clean[w] for w in before)
        self.values = {0: [clean[0]]}  # writer -> its values, one per state id (the input has one state: the clean run)

    def _per_writer(self, values: E.WriterValues, batch: int | None = None) -> list[Tensor]:
        """[n_writers] of [batch, pos, d_model], in writer order (rows of 1 broadcast to batch)."""
        out = [values.input]
        for l in range(self.graph.n_layer):
            out += [values.heads[l][:, :, h] for h in range(self.graph.n_head)] + [values.mlps[l]]
        return [x.expand(batch or len(x), *x.shape[1:]) for x in out]

    def compute_states(self) -> None:
        """Evaluate every registered state, writers in topological order, `chunk` states per forward. Values
        other states read are kept whole (`values`); for the logits only value - ablated at the read rows
        is kept (`at_rows`: [1 + states, read rows, d_model], row 0 = zeros for "edge not kept")."""
        g, rows = self.graph, self.rows
        read = {self.src[e] for keys in self.keys.values() for key in keys for e, _ in key}
        self.at_rows = {0: torch.stack([torch.zeros_like(self.values[0][0][rows]), (self.values[0][0] - self.ablated[0])[rows]])}
        for w in range(1, g.n_writers):
            keys = sorted(self.keys[w], key=self.keys[w].get)
            at_rows = self.ablated[w].new_zeros(1 + len(keys), int(rows.sum()), self.ablated[w].shape[-1])
            self.values[w] = []
            for i in range(0, len(keys), self.chunk):
                out = self._run_states(w, keys[i:i + self.chunk])  # [n, batch, pos, d_model]
                at_rows[1 + i:1 + i + len(out)] = out[:, rows] - self.ablated[w][rows]
                if w in read:
                    self.values[w] += list(out)
            self.at_rows[w] = at_rows

    def _reader_input(self, reader: int, key) -> Tensor:
        """[batch, pos, d_model]: the reader's input when the edges in `key` are kept."""
        x = self.base[self.graph.reader_time(reader)]
        for e, s in key:
            if self.edge_reader[e] == reader:
                x = x + (self.values[self.src[e]][s] - self.ablated[self.src[e]])
        return x

    @torch.no_grad()
    def _run_states(self, w: int, keys: list) -> Tensor:
        """Writer w's output [n, batch, pos, d_model] in each of the n states of `keys`, by the model's own block: its reader
        inputs set by hooks, the forward stopped once its output is recorded."""
        g, n, got = self.graph, len(keys), {}
        layer, offset = divmod(w - 1, g.n_head + 1)
        inputs = lambda r: torch.cat([self._reader_input(r, key) for key in keys])  # noqa: E731

        def record(x, hook):
            got["out"] = x if offset == g.n_head else x[:, :, offset]
            raise _Captured

        def set_head(kind):
            def hook(x, h):  # x is the block's own fresh copy of the stream: written in place
                x[:, :, offset] = inputs(g.reader(kind, layer, offset))
                return x
            return hook

        if offset == g.n_head:  # the MLP: its input set, the block run from resid_mid
            hooks = [(get_act_name("mlp_in", layer), lambda x, h: inputs(g.reader("mlp", layer))),
                     (get_act_name("mlp_out", layer), record)]
            kwargs = dict(start_at_mid=True)
        else:
            hooks = [(get_act_name(f"{c}_input", layer), set_head(c)) for c in "qkv"]
            hooks.append((get_act_name("result", layer), record))
            kwargs = {}
        start = self.base[2 * layer + (offset == g.n_head)].repeat(n, 1, 1)
        try:
            self.model.run_with_hooks(start, start_at_layer=layer, stop_at_layer=layer + 1, fwd_hooks=hooks, **kwargs)
        except _Captured:
            pass
        return got["out"].reshape(n, *self.tokens.shape, -1)

    @torch.no_grad()
    def metric_values(self, index: dict, n: int, chunk: int = 64) -> Tensor:
        """[n, batch]: the metric of each circuit, from the computed states. index (`logits_index`): writer ->
        [n], 1 + its state where its edge to the logits is kept, else 0 (row 0 of `at_rows` is zeros)."""
        rows, B, L = self.rows, len(self.tokens), self.graph.n_layer
        base = self.base[2 * L][rows]  # [read rows, d_model]
        out = []
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            resid = base + sum((self.at_rows[w][index[w][part]] for w in index), base.new_zeros(len(range(n)[part]), 1, 1))
            read = (self.model.unembed(resid) * self.weights).sum(-1)  # [n, read rows]
            out.append(self.const + read.new_zeros(len(read), B).index_add_(1, self.row_prompt, read))
        return torch.cat(out)


def logits_index(graph: E.EdgeGraph, circuits, states: Tensor) -> dict:
    """writer -> [n]: 1 + the writer's state in each circuit where its edge to the logits is kept, else 0."""
    src, dst = edge_ends(graph)
    into_logits = [e for e in range(graph.n_edges) if dst[e] == -1]
    kept = as_mask(graph, circuits)[:, into_logits]
    return {src[e]: torch.where(kept[:, i], states[:, src[e]] + 1, 0) for i, e in enumerate(into_logits) if kept[:, i].any()}


def prompt_block(tokens: Tensor, ablated: E.WriterValues, readout, block: slice):
    """The tokens, ablated values and affine readout of the prompts in `block`."""
    rows, weights, const = readout
    first = int(rows[:block.start].sum())
    cut = lambda x: x[block] if len(x) == len(tokens) else x  # noqa: E731  (rows of 1 broadcast)
    part = E.WriterValues(cut(ablated.input), tuple(map(cut, ablated.heads)), tuple(map(cut, ablated.mlps)), ablated.ablation)
    return tokens[block], part, (rows[block], weights[first:first + int(rows[block].sum())], const[block])


def evaluate(model, tokens, ablated, metric, circuits, block: int = 16) -> Tensor:
    """Exact edge patching of each circuit (kept edges) -> metric values [n, batch], factorised, `block`
    prompts at a time (memory: the stored states scale with it)."""
    tokens, graph = E.token_batch(tokens), E.edge_graph(model)
    readout, keys = affine_readout(model, tokens, metric), StateKeys(graph)
    index = logits_index(graph, circuits, torch.tensor([keys.register(c) for c in circuits]))
    out = []
    for start in range(0, len(tokens), block):
        part = prompt_block(tokens, ablated, readout, slice(start, start + block))
        patching = FactorisedPatching(model, *part, keys)
        patching.compute_states()
        out.append(patching.metric_values(index, len(circuits)))
        del patching
    return torch.cat(out, 1)


def as_mask(graph: E.EdgeGraph, circuits) -> Tensor:
    """bool [n, n_edges], True = kept."""
    mask = torch.zeros(len(circuits), graph.n_edges, dtype=torch.bool)
    for i, c in enumerate(circuits):
        mask[i, list(c)] = True
    return mask


# -- the search -----------------------------------------------------------------------------------------------------
def induction_fixture(path: Path):
    """(model, clean, corrupted, metric, make_batch) of the trained fixture's test (tests/test_discovery.py)."""
    spec = importlib.util.spec_from_file_location("train_induction", ROOT / "scripts" / "train_induction.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model = minitx.load(path)
    clean, corrupted, lengths = script.make_batch(64, torch.Generator().manual_seed(2024))
    metric = lambda logits: script.second_copy_logit_diff(logits, clean, corrupted, lengths)  # noqa: E731
    return model, clean, corrupted, metric, script.make_batch


def mlps_write_zero(model, *token_batches) -> bool:
    """True when every MLP's parameters are zero and its output is exactly 0 on each batch."""
    params = all(bool((p == 0).all()) for block in model.blocks for p in block.mlp.parameters())
    outs = [E.writer_values(model, t).mlps for t in token_batches]
    return params and all(bool((m == 0).all()) for run in outs for m in run)


def no_mlp_edges(graph: E.EdgeGraph) -> list[int]:
    """The edges that neither leave nor enter an MLP."""
    return [e for e in range(graph.n_edges) if "mlp" not in graph.label(e)]


def best_per_size(circuits, faith: Tensor, max_edges: int, top: int) -> dict[int, list[int]]:
    """size k -> the indices of the `top` circuits of exactly k edges with the largest F, best first."""
    sizes = torch.tensor([len(c) for c in circuits])
    out = {}
    for k in range(max_edges + 1):
        idx = (sizes == k).nonzero()[:, 0]
        out[k] = idx[faith[idx].argsort(descending=True)[:top]].tolist()
    return out


def search(model, clean, metric, ablated, circuits, top: int, max_edges: int, block: int = 16) -> dict:
    """F of every circuit (factorised, `block` prompts at a time), then the best `top` of each size re-run
    through discovery.faithfulness."""
    graph = E.edge_graph(model)
    start = time.time()
    values = evaluate(model, clean, ablated, metric, circuits, block).mean(1)
    ends = E.edge_patching(model, clean, torch.stack([torch.ones(graph.n_edges, dtype=torch.bool),
                                                      torch.zeros(graph.n_edges, dtype=torch.bool)]), ablated, metric).mean(1)
    faith = (values - ends[0]) / (ends[1] - ends[0])
    seconds = time.time() - start
    rows, sizes = [], torch.tensor([len(c) for c in circuits])
    for k, idx in best_per_size(circuits, faith, max_edges, top).items():
        if not idx:
            continue
        exact = D.faithfulness(model, clean, as_mask(graph, [circuits[i] for i in idx]), metric, ablated)
        order = exact.scores.argsort(descending=True).tolist()
        best = idx[order[0]]
        rows.append(dict(k=k, count=sum(len(c) == k for c in circuits), n_F_over_0_8=int((faith[sizes == k] >= 0.8).sum()),
                         best_F=float(exact.scores[order[0]]),
                         complement_F=float(exact.complement[order[0]]), factorised_F=float(faith[best]),
                         runner_up_F=float(exact.scores[order[1]]) if len(order) > 1 else None,
                         edges=[graph.label(e) for e in circuits[best]]))
    return dict(ablation=ablated.ablation, m_clean=float(ends[1]), m_empty=float(ends[0]), seconds=round(seconds, 1),
                sizes=rows, F=faith)


def check_against_engine(model, clean, metric, ablated, circuits, n: int, seed: int = 0) -> float:
    """max |metric difference| between the factorised evaluation and engine.edge_patching on n random circuits
    (half closed ones from `circuits`, half arbitrary edge sets)."""
    graph, g = E.edge_graph(model), torch.Generator().manual_seed(seed)
    picked = [circuits[int(i)] for i in torch.randint(len(circuits), (n // 2,), generator=g)]
    picked += [tuple(torch.nonzero(torch.rand(graph.n_edges, generator=g) < p)[:, 0].tolist())
               for p in torch.linspace(0.05, 0.95, n - n // 2).tolist()]
    fast = evaluate(model, clean, ablated, metric, picked)
    exact = E.edge_patching(model, clean, ~as_mask(graph, picked), ablated, metric, max_rows=1024)
    return float((fast - exact).abs().max())


def print_table(result: dict, cumulative: bool = True) -> None:
    print(f"\n{result['ablation']} ablation: m(G) = {result['m_clean']:+.4f}, m(empty) = {result['m_empty']:+.4f}, "
          f"factorised evaluation {result['seconds']} s")
    print(f"{'k':>3} {'closed':>8} {'F>=0.8':>7} {'best F':>8} {'2nd F':>8} {'best F<=k':>9} {'compl F':>8}  best circuit of exactly k edges")
    best_so_far = float("-inf")
    for row in result["sizes"]:
        best_so_far = max(best_so_far, row["best_F"])
        second = "" if row["runner_up_F"] is None else f"{row['runner_up_F']:.4f}"
        print(f"{row['k']:>3} {row['count']:>8} {row['n_F_over_0_8']:>7} {row['best_F']:>8.4f} {second:>8} {best_so_far:>9.4f} "
              f"{row['complement_F']:>8.4f}  {', '.join(row['edges'])}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "weights" / "induction-2l", help="an induction fixture")
    parser.add_argument("--max-edges", type=int, default=10, help="the largest circuit size searched (default 10)")
    parser.add_argument("--ablations", nargs="+", default=["resample", "mean"], choices=["resample", "mean", "zero"])
    parser.add_argument("--mean-reference", choices=["clean", "heldout"], default="clean",
                        help="mean ablation over the clean prompts themselves, or a held-out batch (seed 2025)")
    parser.add_argument("--all-edges", action="store_true",
                        help="search every edge (default: leave out MLP edges, allowed only when every MLP writes 0)")
    parser.add_argument("--top", type=int, default=5, help="circuits per size re-run through discovery.faithfulness")
    parser.add_argument("--check", type=int, default=64, help="random circuits checked against engine.edge_patching")
    parser.add_argument("--block", type=int, default=16, help="prompts per block (memory scales with it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the per-size results here")
    args = parser.parse_args(argv)
    if args.max_edges < 0 or args.top < 1 or args.check < 0 or args.threads < 1 or args.block < 1:
        parser.error("--max-edges and --check must be >= 0, --top, --block and --threads >= 1")
    torch.set_num_threads(args.threads)
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there (a folder saved by minitx.save_pretrained)")
    model, clean, corrupted, metric, make_batch = induction_fixture(args.model)
    graph = E.edge_graph(model)
    if not args.all_edges and not mlps_write_zero(model, clean, corrupted):
        parser.error("this model's MLPs write something: leaving their edges out would not be exact (use --all-edges)")
    candidates = range(graph.n_edges) if args.all_edges else no_mlp_edges(graph)
    start = time.time()
    circuits = closed_circuits(graph, candidates, args.max_edges)
    print(f"{graph.n_edges} edges, {len(candidates)} searched; {len(circuits)} closed circuits of <= {args.max_edges} "
          f"edges (enumerated in {time.time() - start:.1f} s)")
    reference = clean if args.mean_reference == "clean" else make_batch(64, torch.Generator().manual_seed(2025))[0]
    report = dict(command=" ".join(["python3 scripts/exhaustive_circuits.py", *(argv or sys.argv[1:])]),
                  n_edges=graph.n_edges, searched_edges=len(candidates), mean_reference=args.mean_reference, results=[])
    for ablation in args.ablations:
        ablated = E.ablation_values(model, ablation, clean, corrupted=corrupted, reference=reference)
        result = search(model, clean, metric, ablated, circuits, args.top, args.max_edges, args.block)
        result["max_metric_error_vs_edge_patching"] = check_against_engine(model, clean, metric, ablated, circuits, args.check)
        print_table(result)
        print(f"factorised vs engine.edge_patching on {args.check} random circuits: max |metric difference| "
              f"{result['max_metric_error_vs_edge_patching']:.2e}")
        report["results"].append({k: v for k, v in result.items() if k != "F"})
    report["seconds"] = round(time.time() - start, 1)
    print(f"total {report['seconds']} s ({args.threads} thread(s))")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

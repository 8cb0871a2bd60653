"""Circuit discovery on weights/english-6l over 32 role-swap pairs (issue 16): EAP-IG edge scores, the
faithfulness curve under resample and mean ablation, and whether the chosen circuit holds the heads that
noising and path patching point to. Run from the repository root: python3 scripts/discovery_english.py"""
import time, torch
import minitx
from minitx import datasets as Dset, discovery as D, engine as E, metrics as M, patching as P, path_patching as PP
torch.manual_seed(0)
model = minitx.load("weights/english-6l")
tok = minitx.Tokenizer.default()
nouns = Dset.known_words(Dset.NOUNS, tok, model); verbs = Dset.known_words(Dset.VERBS, tok, model)
pairs = Dset.role_swap_pairs(32, nouns=nouns, verbs=verbs, templates=("who",), seed=0)
b = max(Dset.to_batches(pairs, tok, True), key=lambda x: len(x.clean))
metric = M.logit_diff_metric(b.answer, b.wrong)
print(f"{len(b.clean)} pairs x {b.clean.shape[1]} tokens; e.g. {pairs[0].clean!r} -> {pairs[0].answer!r} / {pairs[0].corrupted!r}")
graph = E.edge_graph(model); print("edges", graph.n_edges)
t = time.time(); s = D.eap_ig(model, b.clean, b.corrupted, metric, steps=5, on="activations"); print(f"EAP-IG activations m=5: {time.time()-t:.0f}s")
print("clean", s.clean, "corrupted", s.corrupted)
for label, v in s.top(15): print(f"  {label:<16} {v:+.3f}")
ks = [10, 20, 50, 100, 200, 400]
noise = P.activation_patching(model, b.clean, b.corrupted, metric, "z", "all", direction="noising")
removed = 1 - noise.scores
L, H = model.cfg.n_layer, model.cfg.n_head
top_noise = sorted(((float(removed[l, h]), l, h) for l in range(L) for h in range(H)), reverse=True)[:5]
direct = PP.path_patch_senders(model, b.clean, b.corrupted, "logits", metric, freeze_mlps=True)
top_direct = sorted(((float(1 - direct.scores[l, h]), l, h) for l in range(L) for h in range(H)), reverse=True)[:5]
print("noising z, removed (top 5):", [(f"{l}.{h}", round(r, 3)) for r, l, h in top_noise])
print("path patching head -> logits, MLPs frozen, removed (top 5):", [(f"{l}.{h}", round(r, 3)) for r, l, h in top_direct])
for ablation in ("resample", "mean"):
    t = time.time()
    curve = D.faithfulness_curve(model, b.clean, s, metric, ks, ablation=ablation, corrupted=b.corrupted,
                                 reference=b.corrupted, max_rows=256)
    print(f"{ablation} ablation ({time.time()-t:.0f}s): m(all kept) {curve.clean:+.3f}, m(none kept) {curve.corrupted:+.3f}")
    for k, n, f, c in zip(curve.ks, curve.n_edges.tolist(), curve.scores.tolist(), curve.complement.tolist()):
        print(f"  top {k:>4}: {n:>4} edges after pruning, F = {f:+.3f}, complement F = {c:+.3f}")
    chosen = next((i for i in range(len(ks)) if curve.scores[i] >= 0.8), len(ks) - 1)
    heads = sorted({lab.split(" -> ")[0] for lab in curve.edges(chosen)} | {lab.split(" -> ")[1].rsplit(".", 1)[0] for lab in curve.edges(chosen) if lab.count(".") >= 2})
    print(f"  chosen top {ks[chosen]}: components {heads}")
    for name in dict.fromkeys(f"{l}.{h}" for _, l, h in top_noise[:3] + top_direct[:3]):  # each head once
        print(f"   head {name} in the chosen circuit: {name in heads}")

// minitx view: draws the data that minitx/page.py embeds in the page. Hand-written, no libraries, no network.
// Sections: attention (token view, one large pattern, the layer x head grid), the lens table, results as
// heatmaps (patching, path patching, any Result), circuits (edge scores as a graph).
"use strict";

function minitxView(root, d) {
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) k === "text" ? (e.textContent = v) : e.setAttribute(k, v);
    e.append(...kids);
    return e;
  };
  const fmt = (v) => (v === null || v === undefined ? "n/a" : v.toFixed(3));
  const q = (s) => JSON.stringify(s);  // a token shown with its spaces: " mat"
  const tip = el("div", { class: "tip" });
  const showTip = (ev, text) => { tip.textContent = text; tip.style.display = "block";
    tip.style.left = ev.clientX + 14 + "px"; tip.style.top = ev.clientY + 14 + "px"; };
  const hideTip = () => { tip.style.display = "none"; };
  // Colours: attention and probabilities white -> blue on [0, 1]; signed scores blue - white - red.
  const mix = (a, b, t) => a.map((x, i) => Math.round(x + (b[i] - x) * t));  // -> [r, g, b]
  const css = (rgb) => "rgb(" + rgb.join(",") + ")";
  const rgbSeq = (v) => mix([255, 255, 255], [8, 48, 107], Math.max(0, Math.min(1, v)));
  const seq = (v) => css(rgbSeq(v));
  const signed = (v, m) => v === null ? "#ddd" : css(v >= 0 ? mix([255, 255, 255], [178, 24, 43], Math.min(1, v / m))
    : mix([255, 255, 255], [33, 102, 172], Math.min(1, -v / m)));
  const select = (label, n, names, onchange) => {
    const s = el("select", { "data-control": label });
    for (let i = 0; i < n; i++) s.append(el("option", { value: i, text: names ? names[i] : i }));
    s.onchange = () => onchange(+s.value);
    return el("label", {}, label + " ", s);
  };
  const promptText = (p) => p.tokens.join("");
  const bos = d.bos === null || d.bos === undefined ? "" : d.bos ? "BOS prepended" : "no BOS";

  // Every section says which model, prompt(s), BOS or not, and what its numbers are.
  const context = (prompts, what) => el("div", { class: "meta", "data-part": "context", text: [d.model && "model: " + d.model,
    bos, prompts, what].filter(Boolean).join(" | ") });
  root.append(el("h2", { text: d.title }), tip);

  // Attention: pattern[layer, head, q, k] from the uint16 lower triangles.
  function patterns(p) {
    if (!p.attnArray) {
      const bytes = Uint8Array.from(atob(p.attn), (c) => c.charCodeAt(0));
      p.attnArray = new Uint16Array(bytes.buffer);  // little-endian, as written and as every browser platform is
    }
    const T = p.tokens.length, tri = (T * (T + 1)) / 2;
    return (l, h, qi, k) => (k > qi ? 0 : p.attnArray[(l * d.n_head + h) * tri + (qi * (qi + 1)) / 2 + k] / d.quant);
  }

  // One pixel per cell, scaled up by CSS (image-rendering: pixelated): 144 heads of 64 x 64 draw in milliseconds.
  function heatmap(rows, cols, value, cell, onHover, onClick) {
    const c = el("canvas", { width: cols, height: rows, style: "width:" + cols * cell + "px;height:" + rows * cell + "px" });
    const g = c.getContext("2d"), img = g.createImageData(cols, rows);
    for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) {
      const i = 4 * (r * cols + k);
      [img.data[i], img.data[i + 1], img.data[i + 2]] = rgbSeq(value(r, k)); img.data[i + 3] = 255;
    }
    g.putImageData(img, 0, 0);
    const at = (ev) => { const b = c.getBoundingClientRect();
      return [Math.floor(((ev.clientY - b.top) / b.height) * rows), Math.floor(((ev.clientX - b.left) / b.width) * cols)]; };
    c.onmousemove = (ev) => { const [r, k] = at(ev); if (r >= 0 && r < rows && k >= 0 && k < cols) onHover(ev, r, k); };
    c.onmouseleave = hideTip;
    if (onClick) c.onclick = (ev) => onClick(...at(ev));
    return c;
  }

  function attentionSection() {
    const st = { p: 0, l: 0, h: 0, tok: null };
    const sec = el("section", { "data-view": "attention" });
    const body = el("div");
    const controls = el("div", { class: "meta" });
    if (d.prompts.length > 1) controls.append(select("prompt", d.prompts.length, d.prompts.map((p) => promptText(p)), (v) => { st.p = v; st.tok = null; draw(); }));
    const layerSel = select("layer", d.n_layer, null, (v) => { st.l = v; draw(); });
    const headSel = select("head", d.n_head, null, (v) => { st.h = v; draw(); });
    controls.append(layerSel, headSel);
    const ctx = el("div");
    sec.append(el("h2", { text: "Attention" }), ctx, controls, body);

    function tokenView(p, A) {
      const box = el("div", { "data-part": "tokens" });
      const table = el("table", { "data-part": "heads" });
      const spans = p.tokens.map((t, i) => {
        const s = el("span", { class: "tok", "data-pos": i, text: t });
        s.onmouseenter = () => { st.tok = i; fill(); };
        return s;
      });
      box.append(el("div", { class: "meta", text: "Hover a token: its colour below is head " + st.l + "." + st.h +
        "'s attention from the hovered token; the table gives every head of layer " + st.l + " from it (keys) and to it (queries)." }), ...spans);
      function fill() {
        const i = st.tok;
        spans.forEach((s, k) => { s.classList.toggle("on", k === i);
          s.style.background = i === null ? "" : seq(A(st.l, st.h, i, k)); });
        table.replaceChildren();
        if (i === null) return;
        table.append(el("tr", {}, el("th", { text: "head" }), el("th", { text: "" }),
          ...p.tokens.map((t, k) => el("th", { text: k + ": " + t }))));
        for (let h = 0; h < d.n_head; h++) for (const dir of ["from", "to"]) {
          const cells = p.tokens.map((_, k) => {
            const ok = dir === "from" ? k <= i : k >= i;
            const v = dir === "from" ? A(st.l, h, i, k) : A(st.l, h, k, i);
            return el("td", ok ? { "data-head": h, "data-dir": dir, "data-pos": k, style: "background:" + seq(v) +
              (v > 0.6 ? ";color:#fff" : ""), text: fmt(v) } : { text: "" });
          });
          table.append(el("tr", {}, el("th", { text: dir === "from" ? st.l + "." + h : "" }),
            el("th", { text: dir === "from" ? "from " + q(p.tokens[i]) : "to " + q(p.tokens[i]) }), ...cells));
        }
      }
      fill();
      return [box, el("div", { class: "scroll" }, table)];
    }

    function draw() {
      const p = d.prompts[st.p], A = patterns(p), T = p.tokens.length;
      ctx.replaceChildren(context("prompt: " + q(promptText(p)), "attention weights (softmax pattern), 0 to 1"));
      layerSel.querySelector("select").value = st.l; headSel.querySelector("select").value = st.h;
      const hover = (l, h) => (ev, r, k) => showTip(ev, "head " + l + "." + h + "  query " + r + " " + q(p.tokens[r]) +
        " -> key " + k + " " + q(p.tokens[k]) + "\nattention " + (k > r ? "0 (causal mask)" : fmt(A(l, h, r, k))));
      const big = heatmap(T, T, (r, k) => A(st.l, st.h, r, k), Math.max(4, Math.floor(384 / T)), hover(st.l, st.h));
      big.setAttribute("data-part", "pattern");
      const grid = el("div", { class: "grid", "data-part": "grid", style: "grid-template-columns:repeat(" + d.n_head + ",max-content)" });
      for (let l = 0; l < d.n_layer; l++) for (let h = 0; h < d.n_head; h++) {
        const c = heatmap(T, T, (r, k) => A(l, h, r, k), Math.max(1, Math.floor(72 / T)), hover(l, h),
          () => { st.l = l; st.h = h; draw(); });
        c.setAttribute("data-layer", l); c.setAttribute("data-head", h);
        if (l === st.l && h === st.h) c.classList.add("sel");
        grid.append(el("figure", {}, c, el("figcaption", { text: l + "." + h })));
      }
      body.replaceChildren(...tokenView(p, A),
        el("h3", { text: "Head " + st.l + "." + st.h + " (rows: queries, columns: keys)" }), big,
        el("h3", { text: "Every layer x head (click one to select it)" }), grid);
    }
    draw();
    return sec;
  }

  function lensSection() {
    const sec = el("section", { "data-view": "lens" });
    const body = el("div", { class: "scroll" });
    const k = d.top_k;
    const ctx = el("div");
    const draw = (pi) => {
      const p = d.prompts[pi], L = p.lens, table = el("table", { "data-part": "lens" });
      ctx.replaceChildren(context("prompt: " + q(promptText(p)), "metric: probability of each stream's top tokens"));
      table.append(el("tr", {}, el("th", { text: "stream" }), ...p.tokens.map((t, i) => el("th", { text: i + ": " + t }))));
      L.labels.forEach((label, r) => {
        table.append(el("tr", {}, el("th", { text: label }), ...p.tokens.map((t, i) => {
          const ids = L.ids[r][i], probs = L.probs[r][i];
          const td = el("td", { "data-row": r, "data-col": i, style: "background:" + seq(probs[0]) + (probs[0] > 0.6 ? ";color:#fff" : ""),
            text: d.words[ids[0]] });
          td.onmousemove = (ev) => showTip(ev, label + ", position " + i + " " + q(t) + "\n" +
            ids.map((id, j) => q(d.words[id]) + " " + fmt(probs[j])).join("\n"));
          td.onmouseleave = hideTip;
          return td;
        })));
      });
      body.replaceChildren(table);
    };
    const kind = d.prompts[0].lens.kind || "logit";
    const controls = el("div", { class: "meta", text: "The " + kind + " lens (docs/methods.md §4.1, §13): each residual stream " +
      "read through " + (kind === "logit" ? "" : "its translator, then ") + "the final layer norm and the unembedding; cell = top-1 token, " +
      "shade = its probability; hover for the top " + k + ". " });
    if (d.prompts.length > 1) controls.append(select("prompt", d.prompts.length, d.prompts.map((p) => promptText(p)), draw));
    sec.append(el("h2", { text: kind[0].toUpperCase() + kind.slice(1) + " lens" }), ctx, controls, body);
    draw(0);
    return sec;
  }

  function resultSection(R) {
    const sec = el("section", { "data-view": "result" });
    const pair = R.pair ? "clean: " + q(R.pair.clean.join("")) + "\ncorrupted: " + q(R.pair.corrupted.join("")) : "";
    const base = (R.clean !== null ? "clean " + fmt(R.clean) : "") + (R.corrupted !== null ? ", corrupted " + fmt(R.corrupted) : "");
    sec.append(el("h2", { text: R.title + " (" + R.kind + ")" }), context(pair.replace("\n", " | "),
      ["metric: " + (R.metric || "n/a"), base, R.direction && "direction: " + R.direction].filter(Boolean).join(" | ")));
    const all = R.values.flat().filter((v) => v !== null);
    const m = Math.max(1e-9, ...all.map(Math.abs));
    R.values.forEach((vals, s) => {
      const rows = R.rows.length, cols = R.cols.length;
      const table = el("table", { "data-part": "result", "data-slice": s });
      table.append(el("tr", {}, el("th", { text: R.axes[0] + " \\ " + (R.axes[1] || "") }),
        ...R.cols.map((c) => el("th", { text: c }))));
      for (let r = 0; r < rows; r++) {
        table.append(el("tr", {}, el("th", { text: R.rows[r] }), ...R.cols.map((c, k) => {
          const v = vals[r * cols + k];
          const td = el("td", { "data-row": r, "data-col": k, style: "background:" + signed(v, m) + ";min-width:14px;height:14px" });
          td.onmousemove = (ev) => showTip(ev, R.axes[0] + " " + R.rows[r] + (R.axes[1] ? ", " + R.axes[1] + " " + c : "") +
            (R.slice_axis ? ", " + R.slice_axis + " " + s : "") + "\nscore " + fmt(v) +
            (R.raw ? "\nmetric value " + fmt(R.raw[s][r * cols + k]) : "") + "\nmetric: " + (R.metric || "n/a") +
            (base ? "\n" + base : "") + (pair ? "\n" + pair : ""));
          td.onmouseleave = hideTip;
          return td;
        })));
      }
      sec.append(R.slice_axis ? el("h3", { text: R.slice_axis + " " + s }) : "", el("div", { class: "scroll" }, table));
    });
    return sec;
  }

  // Circuit discovery: the graph of components, layer 0 at the bottom, with the edges of largest |score|.
  function circuitSection(R) {
    const sec = el("section", { "data-view": "circuit" });
    const pair = R.pair ? "clean: " + q(R.pair.clean.join("")) + " | corrupted: " + q(R.pair.corrupted.join("")) : "";
    const base = R.clean !== null ? "clean " + fmt(R.clean) + ", corrupted " + fmt(R.corrupted) : "";
    const L = R.n_layer, H = R.n_head, row = 64, W = Math.max(520, (H + 1) * 64);
    const probe = el("div"); probe.innerHTML = "<svg></svg>";  // the SVG namespace, without writing out its URL
    const NS = probe.firstChild.namespaceURI;
    const svgEl = (tag, attrs) => { const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
    const x = (i) => ((i + 0.5) * W) / (H + 1), y = (r) => 28 + r * row;  // row 0 = logits, row L + 1 = input
    const node = (label, reading) => {  // a writer's label -> where its edges leave (top); a reader's -> where they enter
      if (label === "input") return [W / 2, y(L + 1) - 10];
      if (label === "logits") return [W / 2, y(0) + 10];
      let m = /^mlp(\d+)$/.exec(label);
      if (m) return [x(H), y(L - +m[1]) + (reading ? 10 : -10)];
      m = /^(\d+)\.(\d+)(?:\.([qkv]))?$/.exec(label);
      return [x(+m[2]) + (m[3] ? 8 * ("qkv".indexOf(m[3]) - 1) : 0), y(L - +m[1]) + (m[3] ? 10 : -10)];
    };
    const m = Math.max(1e-9, ...R.edges.map((e) => Math.abs(e[2])));
    const svg = svgEl("svg", { width: W, height: y(L + 1) + 28, "data-part": "circuit" });
    const draw = (k) => {
      svg.replaceChildren();
      const labelled = (cx, cy, text) => {  // nodes on top of the edges, transparent to the mouse
        svg.append(svgEl("circle", { cx, cy, r: 10, fill: "#f4f4f4", stroke: "#999", "pointer-events": "none" }));
        const t = svgEl("text", { x: cx, y: cy + 4, "text-anchor": "middle", "font-size": 10, "pointer-events": "none" });
        t.textContent = text; svg.append(t); };
      R.edges.slice(0, k).map((e, i) => [e, i]).reverse().forEach(([[w, r, s], i]) => {  // strongest drawn last, on top
        const [x1, y1] = node(w, false), [x2, y2] = node(r, true);
        const line = svgEl("line", { x1, y1, x2, y2, stroke: signed(s, m), "stroke-width": 1.5 + (5 * Math.abs(s)) / m,
          "stroke-linecap": "round", "data-edge": i, "data-label": w + " -> " + r });
        line.onmousemove = (ev) => showTip(ev, w + " -> " + r + "\nscore " + fmt(s) + "\nmetric: " + (R.metric || "n/a") +
          (R.method ? "\nmethod: " + R.method : "") + (base ? "\n" + base : "") + (pair ? "\n" + pair.replace(" | ", "\n") : ""));
        line.onmouseleave = hideTip;
        svg.append(line);
      });
      labelled(W / 2, y(L + 1), "in"); labelled(W / 2, y(0), "out");
      for (let l = 0; l < L; l++) { for (let h = 0; h < H; h++) labelled(x(h), y(L - l), l + "." + h); labelled(x(H), y(L - l), "m" + l); }
    };
    const counts = [10, 20, 50, 100, 200, R.edges.length].filter((n, i, a) => n <= R.edges.length && a.indexOf(n) === i);
    const pick = select("edges shown", counts.length, counts.map(String), (i) => draw(counts[i]));
    sec.append(el("h2", { text: R.title + " (" + R.kind + ")" }), context(pair, ["metric: " + (R.metric || "n/a"), base,
      R.method && "method: " + R.method].filter(Boolean).join(" | ")),
      el("div", { class: "meta", text: "Score: the estimated change of the metric when the edge is patched (noising form, " +
        "docs/methods.md §12.3): blue = negative (the edge carries what the metric needs), red = positive. Readers q, k, v " +
        "enter a head at its left, centre and right. The " + R.edges.length + " edges of largest |score| (of " + R.n_edges + ") are embedded. " }, pick),
      svg);
    const start = Math.max(0, counts.indexOf(20));
    pick.querySelector("select").value = start; draw(counts[start]);
    return sec;
  }

  if (d.prompts.length && d.prompts[0].attn) root.append(attentionSection());
  if (d.prompts.length && d.prompts[0].lens) root.append(lensSection());
  (d.results || []).forEach((R) => root.append(R.view === "circuit" ? circuitSection(R) : resultSection(R)));
}

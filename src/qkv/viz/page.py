"""One self-contained HTML page for exploring captured attention.

A person picks the attention (encoder, decoder, cross), the layer and the head (or
the mean over heads), and hovers a token to see where it attends: its row of the
matrix is outlined and the tokens it attends to are shaded by weight. Everything is
inside the one file: the weights as JSON, the CSS and a small script, no network,
no CDN, so the page opens offline and can be mailed around.

The view is also set by the address: ``maps.html#kind=cross&layer=2&head=1&query=3``
(``head=mean`` for the mean over heads; ``layer`` is the model's layer index). The
page writes the current view back into the address, so a copied link shows the same
thing, and onto ``<body data-kind data-layer data-head data-query>``, which the
browser test reads.

Colours: a cell's shade is its weight divided by the largest weight of the matrix
shown, on matplotlib's "Blues" (:data:`SHADE_STOPS`, linear in between); the
largest weight of each row is outlined.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from qkv.viz.capture import AttentionMap

__all__ = ["SHADE_STOPS", "attention_page", "shade", "write_attention_page"]

DECIMALS = 4  # weights in the page; 1e-4 is below what a shade can show
# Matplotlib's "Blues" at 0, 1/4, 1/2, 3/4, 1: the page's colour map, kept here so a
# test can compute the colour a weight must be drawn in.
SHADE_STOPS = ((247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1em 2em; color: #222; }
header label { margin-right: 1em; }
#hint, .axes { color: #666; font-size: 12px; }
#errors { background: #fdd; color: #900; padding: .5em; white-space: pre-wrap; }
.strip { margin: .4em 0; line-height: 2em; }
.strip .label { display: inline-block; width: 3em; color: #666; }
.tok { padding: 2px 4px; margin: 1px; border-radius: 3px; cursor: default;
       border: 1px solid transparent; }
.tok.q:hover, .tok.q.active { border-color: #d62728; }
.tok.k.top { border-color: #08306b; }
table { border-collapse: collapse; margin-top: .6em; }
td { width: 20px; height: 20px; padding: 0; border: 1px solid #fff; }
td.max { outline: 2px solid #d62728; outline-offset: -2px; }
tr.active th.query { color: #d62728; font-weight: bold; }
tr.active td { border-top-color: #d62728; border-bottom-color: #d62728; }
th { font-weight: normal; font-size: 12px; }
th.query { text-align: right; padding-right: 6px; white-space: nowrap; cursor: default; }
th.key { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
         padding-top: 4px; white-space: nowrap; }
"""

_SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("attention-data").textContent);
const $ = (id) => document.getElementById(id);
const state = { kind: 0, layer: 0, head: "mean", query: null };
const AXES = { encoder: ["query", "key"], decoder: ["target (produced)", "target (input)"],
               cross: ["target", "source"] };

// Matplotlib's "Blues" at five stops, linear in between (the pictures use the same
// map); the browser test computes the same colour from the weights.
const STOPS = __STOPS__;
function shade(t) {
  const x = Math.min(Math.max(t, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const f = x - i;
  const c = STOPS[i].map((lo, j) => Math.round(lo + (STOPS[i + 1][j] - lo) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function currentMatrix() {
  const map = DATA.maps[state.kind];
  const perHead = map.weights[map.layers.indexOf(state.layer)];  // h × q × k
  if (state.head !== "mean") return perHead[state.head];
  return perHead[0].map((row, r) => row.map((_, c) =>
    perHead.reduce((sum, head) => sum + head[r][c], 0) / perHead.length));
}

function argmax(row) {
  let best = 0;
  row.forEach((v, i) => { if (v > row[best]) best = i; });
  return best;
}

function fillSelect(select, values, labels) {
  select.replaceChildren(...values.map((v, i) => {
    const option = document.createElement("option");
    option.value = String(v);
    option.textContent = labels[i];
    return option;
  }));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render() {
  const map = DATA.maps[state.kind];
  const w = currentMatrix();
  const vmax = Math.max(...w.map((row) => Math.max(...row))) || 1;
  const table = $("matrix");
  const head = el("tr");
  head.appendChild(el("th"));
  map.keys.forEach((key) => head.appendChild(el("th", "key", key)));
  const rows = [head];
  w.forEach((row, r) => {
    const tr = el("tr");
    tr.dataset.q = r;
    const th = el("th", "query", map.queries[r]);
    th.dataset.q = r;
    tr.appendChild(th);
    const best = argmax(row);
    row.forEach((value, c) => {
      const td = el("td", c === best ? "max" : "");
      td.dataset.q = r;
      td.dataset.k = c;
      td.dataset.w = value;
      td.style.background = shade(value / vmax);
      td.title = `${map.queries[r]} → ${map.keys[c]}: ${value.toFixed(4)}`;
      tr.appendChild(td);
    });
    rows.push(tr);
  });
  table.replaceChildren(...rows);
  $("queries").replaceChildren(...map.queries.map((t, i) => {
    const span = el("span", "tok q", t);
    span.dataset.q = i;
    return span;
  }));
  $("keys").replaceChildren(...map.keys.map((t, i) => {
    const span = el("span", "tok k", t);
    span.dataset.k = i;
    return span;
  }));
  const [rowName, colName] = AXES[map.kind] || ["query", "key"];
  $("axes").textContent = `rows: ${rowName}, columns: ${colName}; ` +
    `shade = weight / ${vmax.toFixed(4)} (the largest weight shown)`;
  highlight();
  publish();
}

function highlight() {
  const map = DATA.maps[state.kind];
  const q = state.query;
  document.querySelectorAll("#matrix tr").forEach((tr) =>
    tr.classList.toggle("active", q !== null && tr.dataset.q === String(q)));
  document.querySelectorAll(".tok.q").forEach((s) =>
    s.classList.toggle("active", q !== null && s.dataset.q === String(q)));
  const keys = document.querySelectorAll(".tok.k");
  if (q === null || q >= map.queries.length) {
    keys.forEach((s) => { s.style.background = ""; s.classList.remove("top"); });
    return;
  }
  const row = currentMatrix()[q];
  const rowMax = Math.max(...row) || 1;
  const best = argmax(row);
  keys.forEach((s, k) => {
    s.style.background = shade(row[k] / rowMax);
    s.style.color = row[k] / rowMax > 0.6 ? "white" : "";
    s.classList.toggle("top", k === best);
    s.title = `${row[k].toFixed(4)}`;
  });
}

function publish() {
  const kind = DATA.maps[state.kind].kind;
  const hash = `#kind=${kind}&layer=${state.layer}&head=${state.head}` +
    (state.query === null ? "" : `&query=${state.query}`);
  if (location.hash !== hash) history.replaceState(null, "", hash);
  Object.assign(document.body.dataset, { kind, layer: state.layer, head: state.head,
    query: state.query === null ? "" : state.query, ready: "1" });
}

function setQuery(q) {
  if (state.query === q) return;
  state.query = q;
  highlight();
  publish();
}

function chooseKind(index) {
  state.kind = index;
  const map = DATA.maps[index];
  fillSelect($("layer"), map.layers, map.layers.map((l) => `${l} of ${map.num_layers}`));
  const heads = ["mean", ...Array.from({ length: map.num_heads }, (_, h) => h)];
  fillSelect($("head"), heads, heads.map((h) => (h === "mean" ? "mean of heads" : `head ${h}`)));
  if (!map.layers.includes(state.layer)) state.layer = map.layers[map.layers.length - 1];
  if (state.head !== "mean" && state.head >= map.num_heads) state.head = "mean";
  if (state.query !== null && state.query >= map.queries.length) state.query = null;
  $("kind").value = String(index);
  $("layer").value = String(state.layer);
  $("head").value = String(state.head);
}

function fromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const kind = DATA.maps.findIndex((m) => m.kind === params.get("kind"));
  if (params.has("layer")) state.layer = Number(params.get("layer"));
  if (params.has("head")) {
    state.head = params.get("head") === "mean" ? "mean" : Number(params.get("head"));
  }
  state.query = params.has("query") ? Number(params.get("query")) : state.query;
  chooseKind(kind >= 0 ? kind : state.kind);
  render();
}

fillSelect($("kind"), DATA.maps.map((_, i) => i), DATA.maps.map((m) => m.kind));
$("kind").hidden = DATA.maps.length < 2;
$("kind").addEventListener("change", (e) => { chooseKind(Number(e.target.value)); render(); });
$("layer").addEventListener("change", (e) => { state.layer = Number(e.target.value); render(); });
$("head").addEventListener("change", (e) => {
  state.head = e.target.value === "mean" ? "mean" : Number(e.target.value);
  render();
});
for (const id of ["matrix", "queries"]) {
  $(id).addEventListener("mouseover", (e) => {
    const target = e.target.closest("[data-q]");
    if (target) setQuery(Number(target.dataset.q));
  });
}
window.addEventListener("hashchange", fromHash);
$("title").textContent = DATA.title;
fromHash();
"""

# Kept in its own script so that a mistake in the main one is still reported on the page.
_ERRORS = """
window.addEventListener("error", (e) => {
  const box = document.getElementById("errors");
  box.hidden = false;
  box.textContent += `error: ${e.message} (line ${e.lineno})\\n`;
});
"""


def shade(t: float) -> tuple[int, int, int]:
    """The colour the page draws a cell of relative weight ``t`` in (as its script does)."""
    x = min(max(t, 0.0), 1.0) * (len(SHADE_STOPS) - 1)
    i = min(int(x), len(SHADE_STOPS) - 2)
    f = x - i
    # JavaScript's Math.round: halves round up, not to even.
    red, green, blue = (
        math.floor(lo + (hi - lo) * f + 0.5)
        for lo, hi in zip(SHADE_STOPS[i], SHADE_STOPS[i + 1], strict=True)
    )
    return red, green, blue


def _payload(maps: Sequence[AttentionMap], title: str) -> str:
    data = {
        "title": title,
        "maps": [
            {
                "kind": m.kind,
                "layers": list(m.layers),
                "num_layers": m.num_layers,
                "num_heads": m.num_heads,
                "queries": list(m.queries),
                "keys": list(m.keys),
                "weights": m.weights.double().round(decimals=DECIMALS).tolist(),  # (n, h, q, k)
            }
            for m in maps
        ],
    }
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    # Inside <script>, "</script>" or "<!--" in a token would end or break the
    # element; escaped, the JSON parser reads the same characters back.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def attention_page(
    maps: Mapping[str, AttentionMap] | Sequence[AttentionMap], *, title: str = "attention"
) -> str:
    """The page, as a string, for the maps of one input (e.g. one dict returned by
    :func:`~qkv.viz.capture.capture_seq2seq`)."""
    ordered = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    if not ordered:
        raise ValueError("no attention maps to show")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<script>{_ERRORS}</script>
<header>
<h1 id="title" style="font-size: 18px"></h1>
<label><select id="kind" aria-label="attention"></select></label>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
<div id="hint">Hover a token (a word on the "from" line or a row of the table) to see
where it attends.</div>
</header>
<div id="errors" hidden></div>
<div class="strip"><span class="label">from</span><span id="queries"></span></div>
<div class="strip"><span class="label">to</span><span id="keys"></span></div>
<div class="axes" id="axes"></div>
<table id="matrix"></table>
<script type="application/json" id="attention-data">{_payload(ordered, title)}</script>
<script>{_SCRIPT.replace("__STOPS__", json.dumps(SHADE_STOPS))}</script>
</body>
</html>
"""


def write_attention_page(
    path: str | Path,
    maps: Mapping[str, AttentionMap] | Sequence[AttentionMap],
    *,
    title: str = "attention",
) -> Path:
    """Write :func:`attention_page` to ``path`` (UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(attention_page(maps, title=title), encoding="utf-8")
    return path

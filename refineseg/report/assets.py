"""The inline stylesheet and script of every report page (no external files, no network)."""

from __future__ import annotations

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #f5f7fa; --card: #fff; --accent: #2f5fb3;
        --good: #1b7f3b; --bad: #c0262d; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); }
header { background: #1f2a3d; color: #fff; padding: 18px 32px 14px; }
header h1 { margin: 0 0 6px; font-size: 24px; font-weight: 600; }
header dl { display: flex; flex-wrap: wrap; gap: 4px 22px; margin: 0; font-size: 13.5px; color: #c9d3e6; }
header dt { display: inline; font-weight: 600; color: #fff; }
header dt::after { content: ":"; }
header dd { display: inline; margin: 0 0 0 4px; word-break: break-all; }
nav { padding: 8px 32px; background: #e8edf5; border-bottom: 1px solid var(--line); font-size: 14px; }
nav a { margin-right: 18px; }
main { padding: 8px 32px 40px; max-width: 1500px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 20px 18px;
          margin: 18px 0; }
h2 { margin: 0 0 10px; font-size: 19px; }
h3 { margin: 14px 0 8px; font-size: 16px; }
p.note { color: var(--muted); margin: 4px 0 10px; font-size: 13.5px; }
a { color: var(--accent); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 16px; min-width: 140px; background: #fbfcfe; }
.card .label { color: var(--muted); font-size: 13px; }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .value small { font-size: 14px; font-weight: 400; color: var(--muted); }
table { border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: #eef2f8; position: sticky; top: 0; z-index: 1; }
td.num, th.num { text-align: right; }
tbody tr:nth-child(even) { background: #f8fafc; }
tbody tr:hover { background: #eaf1ff; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #dde6f5; }
table.sortable th[aria-sort]::after { content: " \\25B2"; font-size: 11px; color: var(--accent); }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
.scroll { max-height: 560px; overflow: auto; border: 1px solid var(--line); border-radius: 6px; display: inline-block;
          max-width: 100%; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #0005; border-radius: 3px;
          vertical-align: -2px; margin-right: 6px; }
td.bar { min-width: 96px; }
.bar { background-repeat: no-repeat; background-image: linear-gradient(90deg, #cfe0fa, #cfe0fa); }
.pos { color: var(--good); font-weight: 600; }
.neg { color: var(--bad); font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 13.5px; margin: 6px 0; }
.legend span { white-space: nowrap; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
figure { margin: 0; }
figcaption { font-weight: 600; font-size: 14.5px; margin-bottom: 4px; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; fill: #333; }
svg .axis { stroke: #888; stroke-width: 1; }
svg .grid { stroke: #e3e7ee; stroke-width: 1; }
.panel { border-top: 1px solid var(--line); padding: 12px 0 6px; scroll-margin-top: 10px; }
.panel:target { background: #fff8dc; }
.panel h3 { margin: 0 0 6px; }
.panel .row { display: grid; grid-template-columns: repeat(var(--cols, 4), minmax(0, 1fr)); gap: 8px; }
.panel .row figure figcaption { font-weight: 400; color: var(--muted); font-size: 13px; text-align: center; }
.panel img { width: 100%; height: auto; image-rendering: auto; border: 1px solid var(--line); display: block; }
.panel img.labels { image-rendering: pixelated; }
.confusion td { text-align: right; padding: 2px 5px; font-size: 12px; min-width: 34px; }
.confusion th.col { writing-mode: vertical-rl; transform: rotate(180deg); padding: 6px 2px; font-weight: 500;
                    vertical-align: bottom; }
.confusion th { font-weight: 500; }
.confusion td.diag { outline: 1px solid #0003; outline-offset: -1px; }
img.heatmap { image-rendering: pixelated; border: 1px solid var(--line); max-width: 100%; }
footer { color: var(--muted); font-size: 12.5px; padding: 0 32px 24px; }
"""

#: Click (or Enter on) a header of a ``table.sortable`` to sort its rows by that column: numbers
#: numerically (a cell's ``data-sort`` attribute wins over its text), text naturally; empty cells
#: stay last; a second click reverses; the sorted header gets ``aria-sort`` (drawn as an arrow).
JS = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    return v === null ? cell.textContent.trim() : v;
  }
  function sortBy(table, th, col) {
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = Number(x), ny = Number(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y, undefined, {numeric: true});
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "click to sort";
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();
"""

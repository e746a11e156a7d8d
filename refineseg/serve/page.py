"""The page ``GET /`` serves: one self-contained HTML document (inline CSS and JS, no CDN, no fonts).

Choose or drop an image: it is posted to ``/v1/segment?format=json&labels=true`` (one inference),
then the photo is shown with the label map over it (opacity slider), a legend of the classes
present with their pixel fractions, and a download link for the label PNG. The page talks only to
its own origin; the photo is shown from a ``blob:`` URL of the chosen file.
"""

from __future__ import annotations

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #f5f7fa; --card: #fff; --accent: #2f5fb3;
        --bad: #c0262d; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); }
header { background: #1f2a3d; color: #fff; padding: 16px 32px 12px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #c9d3e6; font-size: 14px; }
main { padding: 16px 32px 40px; max-width: 1400px; display: grid; grid-template-columns: minmax(0, 1fr) 320px;
       gap: 20px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; }
h2 { margin: 0 0 10px; font-size: 17px; }
#drop { border: 2px dashed var(--line); border-radius: 8px; padding: 22px; text-align: center; color: var(--muted);
        cursor: pointer; margin-bottom: 14px; }
#drop.over { border-color: var(--accent); background: #eef3fb; color: var(--fg); }
#drop input { display: block; margin: 10px auto 0; }
#stage { position: relative; display: inline-block; max-width: 100%; line-height: 0; }
#stage img { max-width: 100%; image-orientation: none; }
#labels { position: absolute; left: 0; top: 0; width: 100%; height: 100%; opacity: 0.5; image-rendering: pixelated; }
.controls { display: flex; align-items: center; gap: 10px; margin: 10px 0; flex-wrap: wrap; }
#status { min-height: 1.4em; color: var(--muted); margin: 6px 0; }
#status.error { color: var(--bad); font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
td, th { padding: 4px 6px; border-bottom: 1px solid var(--line); text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #0003; vertical-align: -2px;
          margin-right: 6px; border-radius: 3px; }
a.button { display: inline-block; padding: 6px 12px; border-radius: 6px; background: var(--accent); color: #fff;
           text-decoration: none; }
a.button[hidden] { display: none; }
.hidden { display: none; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } }
"""

SCRIPT = """
'use strict';
const $ = (id) => document.getElementById(id);
let labelsUrl = null, photoUrl = null;

function setStatus(text, isError) {
  $('status').textContent = text;
  $('status').className = isError ? 'error' : '';
}

function loadModel() {
  fetch('v1/model').then((r) => r.json()).then((m) => {
    $('model').textContent = m.name + ' \\u00b7 ' + m.num_classes + ' classes \\u00b7 ' + m.options.backend +
      ' \\u00b7 mode ' + m.options.mode;
  }).catch((e) => setStatus('Cannot reach the server: ' + e.message, true));
}

function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], {type: 'image/png'});
}

function showLegend(classes) {
  const body = $('legend').querySelector('tbody');
  body.replaceChildren();
  classes.slice().sort((a, b) => b.fraction - a.fraction).forEach((c) => {
    const row = body.insertRow();
    const name = row.insertCell();
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    if (c.color) swatch.style.background = 'rgb(' + c.color.join(',') + ')';
    name.append(swatch, document.createTextNode(c.name));
    const share = row.insertCell();
    share.className = 'num';
    share.textContent = (100 * c.fraction).toFixed(2) + ' %';
    row.dataset.index = c.index;
  });
  $('legend').classList.remove('hidden');
}

function show(file, result) {
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  if (labelsUrl) URL.revokeObjectURL(labelsUrl);
  photoUrl = URL.createObjectURL(file);
  labelsUrl = URL.createObjectURL(pngBlob(result.labels_png));
  $('photo').src = photoUrl;
  $('labels').src = labelsUrl;
  $('stage').classList.remove('hidden');
  const stem = file.name.replace(/\\.[^.]*$/, '') || 'image';
  $('download').href = labelsUrl;
  $('download').download = stem + '_labels.png';
  $('download').hidden = false;
  showLegend(result.classes);
  setStatus(file.name + ': ' + result.width + ' \\u00d7 ' + result.height + ' px, ' +
            result.classes.length + ' classes present', false);
  document.body.dataset.state = 'done';
}

function segment(file) {
  if (!file) return;
  document.body.dataset.state = 'busy';
  setStatus('Segmenting ' + file.name + ' \\u2026', false);
  const form = new FormData();
  form.append('image', file, file.name);
  fetch('v1/segment?format=json&labels=true', {method: 'POST', body: form})
    .then((r) => r.json().then((body) => {
      if (!r.ok) throw new Error(body.error || r.statusText);
      return body;
    }))
    .then((result) => show(file, result))
    .catch((e) => { document.body.dataset.state = 'error'; setStatus('Error: ' + e.message, true); });
}

function setOpacity() {
  const value = Number($('opacity').value);
  $('labels').style.opacity = value / 100;
  $('opacity-value').textContent = value + ' %';
}

window.addEventListener('DOMContentLoaded', () => {
  const drop = $('drop');
  $('file').addEventListener('change', (e) => segment(e.target.files[0]));
  drop.addEventListener('click', (e) => { if (e.target === drop) $('file').click(); });
  ['dragenter', 'dragover'].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.add('over');
  }));
  ['dragleave', 'drop'].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.remove('over');
  }));
  drop.addEventListener('drop', (e) => segment(e.dataTransfer.files[0]));
  $('opacity').addEventListener('input', setOpacity);
  setOpacity();
  loadModel();
});
"""

PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>refineseg serve</title>
<style>{CSS}</style>
</head>
<body data-state="idle">
<header><h1>refineseg</h1><p id="model">loading the model description &hellip;</p></header>
<main>
<section>
  <h2>Image</h2>
  <div id="drop">Drop an image here, or choose one:<input id="file" type="file" accept="image/*"></div>
  <div id="status" role="status"></div>
  <div class="controls">
    <label for="opacity">Label opacity</label>
    <input id="opacity" type="range" min="0" max="100" value="50">
    <span id="opacity-value"></span>
    <a id="download" class="button" hidden>Download label PNG</a>
  </div>
  <div id="stage" class="hidden"><img id="photo" alt="uploaded photo"><img id="labels" alt="label map"></div>
</section>
<section>
  <h2>Classes present</h2>
  <table id="legend" class="hidden"><thead><tr><th>class</th><th class="num">share of pixels</th></tr></thead>
  <tbody></tbody></table>
</section>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""

"""The HTML of ``agentrl report``: one file, inline CSS and JS, the plot as a base64 PNG.

Nothing is fetched: no server, no network, no external URL. Every text from a run (configs,
model outputs, tool outputs) is escaped here or set with ``textContent`` by the script, so a
trajectory holding ``</script>`` or HTML stays text.
"""
from __future__ import annotations

import base64
import html
import json
import math

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 24px 40px; color: #1d1d1f; }
h1 { font-size: 20px; margin: 18px 0 4px; } h2 { font-size: 16px; margin: 26px 0 8px; border-bottom: 1px solid #ddd; }
.sub, .none { color: #777; } .notes li { color: #8a5a00; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f4f4f6; }
td.l, th.l { text-align: left; }
.tables { display: flex; flex-wrap: wrap; gap: 0 40px; align-items: flex-start; }
pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0; font: 12.5px/1.4 ui-monospace, monospace; }
pre.config { background: #f7f7f9; padding: 8px; max-height: 220px; overflow: auto; }
img.plots { max-width: 100%; }
#browser { display: grid; grid-template-columns: minmax(320px, 1fr) 2.6fr; gap: 16px; align-items: start; }
#filters button { margin-right: 4px; padding: 2px 10px; border: 1px solid #bbb; background: #fff; border-radius: 4px; cursor: pointer; }
#filters button.on { background: #1d1d1f; color: #fff; }
#traj-list { list-style: none; padding: 0; margin: 8px 0; max-height: 640px; overflow: auto; border: 1px solid #ddd; }
#traj-list li { padding: 4px 8px; border-bottom: 1px solid #eee; cursor: pointer; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
#traj-list li:hover { background: #f4f4f6; } #traj-list li.sel { background: #e3ecfb; }
.pos { color: #0b6b2b; font-weight: 600; } .zero { color: #999; }
#detail { border: 1px solid #ddd; padding: 8px 12px; min-height: 200px; }
.turn { border-left: 3px solid #ccc; padding-left: 10px; margin: 10px 0; }
.t { background: #e3f4e8; color: #0b5a25; } .m { color: #999; }
.call { background: #fff7e0; border: 1px solid #f0dca0; padding: 2px 6px; margin: 4px 0; }
.legend span { padding: 0 4px; margin-right: 8px; }
"""

JS = r"""
const DATA = JSON.parse(document.getElementById('trajectory-data').textContent);
const list = document.getElementById('traj-list'), detail = document.getElementById('detail');
const count = document.getElementById('traj-count');
let filter = 'all';
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function fmt(x) { return (typeof x === 'number') ? (Number.isInteger(x) ? String(x) : x.toFixed(3)) : 'n/a'; }
function keep(t) {
  if (filter === 'pos') return typeof t.reward === 'number' && t.reward > 0;
  if (filter === 'zero') return !(typeof t.reward === 'number' && t.reward > 0);
  return true;
}
function segments(parent, segs) {  // [trained, text] pairs: trained tokens highlighted, masked dimmed
  const pre = el('pre');
  for (const [trained, text] of segs) pre.append(el('span', trained ? 't' : 'm', text));
  parent.append(pre);
}
function renderList() {
  list.replaceChildren();
  let shown = 0;
  DATA.forEach((t, i) => {
    if (!keep(t)) return;
    shown++;
    const li = el('li', 'traj');
    li.dataset.index = i;
    li.append(el('span', null, `#${i} ${t.source} · ${t.task || '?'} · reward `),
              el('span', t.reward > 0 ? 'pos' : 'zero', fmt(t.reward)),
              el('span', 'sub', ` · ${t.tool_calls} call(s)`));
    li.addEventListener('click', () => openTrajectory(i));
    list.append(li);
  });
  count.textContent = `${shown} of ${DATA.length} shown`;
}
function openTrajectory(i) {
  const t = DATA[i];
  if (!t) return;
  for (const li of list.children) li.classList.toggle('sel', Number(li.dataset.index) === i);
  detail.replaceChildren();
  detail.append(el('h3', null, `#${i} ${t.source} · task ${t.task || '?'} · reward ${fmt(t.reward)}`));
  const parts = Object.entries(t.components || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(', ');
  detail.append(el('div', 'sub', `components: ${parts || 'none'} · stop: ${t.stop || '?'}` +
      (t.truncated ? ' · truncated' : '') + (t.tokens ? ` · ${t.tokens} tokens, ${t.trained_tokens} trained` : '')));
  if (t.gold !== undefined) detail.append(el('div', 'sub', `answer: ${t.answer} · gold: ${t.gold}`));
  const legend = el('div', 'legend sub');
  legend.append(el('span', 't', 'trained on (loss mask 1)'), el('span', 'm', 'masked: prompt / tool output (loss mask 0)'));
  detail.append(legend);
  detail.append(el('h4', null, 'prompt'));
  if (t.prompt) segments(detail, t.prompt);
  else detail.append(el('div', 'none', `${t.prompt_tokens} prompt tokens (no tokenizer: not decoded)`));
  t.turns.forEach((turn, k) => {
    const box = el('div', 'turn');
    box.append(el('h4', null, `turn ${k + 1}` + (turn.reward ? ` · turn reward ${fmt(turn.reward)}` : '')));
    segments(box, turn.action);
    for (const c of turn.calls) {
      const call = el('div', 'call');
      call.append(el('b', null, `tool call: ${c.name}`), el('pre', null, c.arguments));
      box.append(call);
    }
    if (turn.observation.length) {
      box.append(el('div', 'sub', 'observation' + (turn.tool_latency_s ? ` (${(turn.tool_latency_s * 1000).toFixed(1)} ms)` : '')));
      segments(box, turn.observation);
    }
    detail.append(box);
  });
  if (location.hash !== `#t${i}`) history.replaceState(null, '', `#t${i}`);
}
document.querySelectorAll('#filters button').forEach(b => b.addEventListener('click', () => {
  filter = b.dataset.filter;
  document.querySelectorAll('#filters button').forEach(x => x.classList.toggle('on', x === b));
  renderList();
}));
function openFromHash() {  // #t3 opens trajectory 3 (links, screenshots)
  const m = /^#t(\d+)$/.exec(location.hash);
  if (m) openTrajectory(Number(m[1]));
}
window.addEventListener('hashchange', openFromHash);
renderList();
openFromHash();
"""


def finite(value):
    """JSON-safe copy: NaN and infinities become null (JSON.parse rejects them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _num(x, digits: int = 3) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "" if x is None else html.escape(str(x))
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(table_id: str, header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """Cells are HTML already; the first ``text_columns`` are left-aligned, numbers right."""
    def cls(i: int) -> str:
        return ' class="l"' if i < text_columns else ""

    head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _eval_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="none" id="eval-none">not recorded (no eval/ keys in metrics.jsonl, no metrics.json)</p>'
    body = []
    for r in rows:
        interval = (f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
                    if isinstance(r["ci_low"], (int, float)) and isinstance(r["ci_high"], (int, float)) else "")
        metric = f"<b>{html.escape(r['metric'])}</b>" if r["headline"] else html.escape(r["metric"])
        body.append([html.escape(r["where"]), html.escape(r["dataset"]), metric, _num(r["value"]), interval, _num(r["n"])])
    return _table("eval-table", ["where", "dataset", "metric", "value", "95% interval", "n"], body, text_columns=3)


def _metrics_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="none" id="metrics-none">not recorded (no metrics.jsonl)</p>'
    body = [[html.escape(r["metric"]), str(r["steps"])] + [_num(r[k]) for k in ("first", "last", "last10", "min", "max")]
            for r in rows]
    return _table("metrics-table", ["metric", "steps", "first", "last", "mean of last 10", "min", "max"], body)


def render(*, title: str, run_path: str, config_text: str | None, plot_png: bytes | None, metric_rows: list[dict],
           eval_rows: list[dict], trajectories: list[dict], tokenizer: str | None, notes: list[str], steps: int) -> str:
    esc = html.escape
    config = (f'<pre class="config" id="config">{esc(config_text)}</pre>' if config_text is not None
              else '<p class="none" id="config-none">not recorded (no config.yaml or config.json in the run folder)</p>')
    plots = (f'<img class="plots" id="plots" alt="training curves" src="data:image/png;base64,'
             f'{base64.b64encode(plot_png).decode()}">' if plot_png else '<p class="none">not recorded (no metrics.jsonl)</p>')
    notes_html = ("<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>") if notes else ""
    decoded = (f"ids decoded with the tokenizer in {esc(tokenizer)}" if tokenizer
               else "turn texts as recorded (no tokenizer: ids not decoded)")
    if trajectories:
        browser = f"""<div id="filters">filter by reward:
<button data-filter="all" class="on">all</button><button data-filter="pos">reward &gt; 0</button><button data-filter="zero">reward &le; 0</button>
<span class="sub" id="traj-count"></span></div>
<div id="browser"><ul id="traj-list"></ul><div id="detail"><p class="none">click a trajectory to open it</p></div></div>"""
    else:
        browser = '<p class="none" id="traj-none">not recorded (no trajectories.jsonl or samples.jsonl)</p>'
    # "<" escaped inside the JSON: no text in it can close the script element
    data = json.dumps(finite(trajectories), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    script = (f'<script type="application/json" id="trajectory-data">{data}</script>\n<script>{JS}</script>'
              if trajectories else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<div class="sub">{esc(run_path)} · {steps} training step(s) recorded · {len(trajectories)} trajectories</div>
{notes_html}
<h2>Config</h2>
{config}
<h2>Curves</h2>
{plots}
<div class="tables">
<section><h2>Evaluation</h2>
{_eval_table(eval_rows)}</section>
<section><h2>Training metrics</h2>
{_metrics_table(metric_rows)}</section>
</div>
<h2>Trajectories</h2>
<div class="sub">{decoded}</div>
{browser}
{script}
</body></html>
"""

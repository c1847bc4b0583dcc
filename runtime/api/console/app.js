// projector console: reads and acts through the admin API (see
// /openapi.json) with the token the operator enters; it has no rights of
// its own. Views are Preact components written as htm tagged templates.
import { html, render, useState, useEffect, useRef } from './vendor/htm-preact-3.1.1.mjs';

const TOKEN_KEY = 'projector.admin_token';
const POLL_MS = 2000;
const WINDOW_S = 300; // charts show the last five minutes

// ---------------------------------------------------------------- the API

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let onRefused = () => {};

class Refused extends Error {}

async function api(method, path, body, type) {
  const headers = {};
  if (token) headers.Authorization = 'Bearer ' + token;
  if (type) headers['Content-Type'] = type;
  const r = await fetch(path, { method, headers, body });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (r.status === 401) {
    const e = new Refused((data && data.message) || 'the token was refused');
    onRefused(e.message);
    throw e;
  }
  if (!r.ok) {
    const code = (data && data.error) || r.status;
    const e = new Error(`${code}: ${(data && data.message) || text || r.statusText}`);
    e.code = code;
    throw e;
  }
  return data;
}

const get = (path) => api('GET', path);
const enc = encodeURIComponent;

// Polls `path` every `ms` while the component is shown.
function usePoll(path, ms = POLL_MS) {
  const [state, setState] = useState({ data: null, error: null });
  useEffect(() => {
    if (!path) return undefined;
    let live = true;
    const tick = () => get(path).then(
      (data) => live && setState({ data, error: null }),
      (e) => live && !(e instanceof Refused) && setState((s) => ({ data: s.data, error: e.message })),
    );
    tick();
    const id = setInterval(tick, ms);
    return () => { live = false; clearInterval(id); };
  }, [path, ms]);
  return state;
}

// The history of every plugin, fetched incrementally.
const history = { since: 0, plugins: {} };
function useHistory() {
  const [, bump] = useState(0);
  useEffect(() => {
    let live = true;
    const tick = () => get(`/v1/admin/history?since_ms=${history.since}`).then((h) => {
      const oldest = Date.now() - WINDOW_S * 1000;
      for (const [name, samples] of Object.entries(h.plugins)) {
        const kept = (history.plugins[name] || []).concat(samples).filter((s) => s.at_ms >= oldest);
        history.plugins[name] = kept;
        for (const s of samples) history.since = Math.max(history.since, s.at_ms);
      }
      if (live) bump((n) => n + 1);
    }, () => {});
    tick();
    const id = setInterval(tick, POLL_MS);
    return () => { live = false; clearInterval(id); };
  }, []);
  return history.plugins;
}

// ---------------------------------------------------------------- formatting

const fmt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US', { maximumFractionDigits: 1 }));
const pct = (r) => (r === null || r === undefined ? '–' : `${(r * 100).toFixed(1)} %`);
const basename = (path) => String(path).split('/').pop();
const short = (id) => (id ? id.slice(0, 12) : '–');
function ago(ms) {
  if (!ms) return '–';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
}
function duration(s) {
  if (s === null || s === undefined) return '–';
  if (s < 90) return `${Math.ceil(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// ---------------------------------------------------------------- small parts

function Spark({ values, label }) {
  const pts = values.filter((v) => v !== null && v !== undefined);
  if (pts.length < 2) return html`<svg class="spark" role="img" aria-label="${label}: not enough samples yet"></svg>`;
  const max = Math.max(...pts, 1e-9);
  const w = 100; const h = 30;
  const step = w / (values.length - 1);
  const line = values.map((v, i) => `${(i * step).toFixed(2)},${(h - ((v || 0) / max) * (h - 2) - 1).toFixed(2)}`).join(' ');
  return html`<svg class="spark" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img"
    aria-label="${label}: last ${fmt(pts[pts.length - 1])}, highest ${fmt(max)}">
    <title>${label}: last ${fmt(pts[pts.length - 1])}, highest ${fmt(max)}</title>
    <polyline points=${line} /></svg>`;
}

function Chart({ label, values, now }) {
  return html`<div class="chart"><div class="label"><span>${label}</span><strong>${now}</strong></div>
    <${Spark} values=${values} label=${label} /></div>`;
}

function Health({ p }) {
  const b = p.breaker || {};
  if (b.state === 'closed' || !b.state) return html`<span class="badge" data-health="ok">ok</span>`;
  return html`<span class="badge bad" data-health=${b.state} title=${b.reason || ''}>${b.state.replace('_', ' ')}</span>
    ${b.reason ? html` <span class="note">${b.reason}</span>` : ''}`;
}

function Progress({ st }) {
  if (!st) return null;
  const building = st.phase === 'building';
  return html`<div class="row" data-shadow-phase=${st.phase}>
    <span class="badge">${st.phase}</span>
    <progress max="100" value=${st.percent} aria-label="progress">${st.percent.toFixed(0)} %</progress>
    <span>${st.percent.toFixed(1)} % · ${fmt(st.done)} of ${fmt(st.total)} · ${fmt(st.events_per_s)}/s${building ? ` · ${duration(st.eta_s)} left` : ''}</span>
    <span class="note">version ${short(st.id)} · ${st.method}</span>
  </div>`;
}

// One confirmation at a time, in the page (keyboard-reachable, testable).
function Confirm({ ask, onDone }) {
  const yes = useRef(null);
  useEffect(() => { if (yes.current) yes.current.focus(); }, [ask]);
  if (!ask) return null;
  return html`<div class="confirm" role="alertdialog" aria-label="confirm">
    <p><strong>${ask.title}</strong></p><p>${ask.detail}</p>
    <div class="row">
      <button id="confirm-yes" class=${ask.danger ? 'danger' : 'primary'} ref=${yes}
        onClick=${() => { onDone(); ask.run(); }}>${ask.verb}</button>
      <button id="confirm-no" onClick=${onDone}>Cancel</button>
    </div></div>`;
}

// Lines of `a` and `b` aligned by their longest common subsequence:
// [' ', line] in both, ['-', line] only in a, ['+', line] only in b.
function lineDiff(a, b) {
  const x = a.split('\n'); const y = b.split('\n');
  if (x.length * y.length > 250000) return x.map((l) => ['-', l]).concat(y.map((l) => ['+', l]));
  const n = x.length; const m = y.length;
  const L = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    }
  }
  const out = []; let i = 0; let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push([' ', x[i]]); i += 1; j += 1; } else if (L[i + 1][j] >= L[i][j + 1]) { out.push(['-', x[i]]); i += 1; } else { out.push(['+', y[j]]); j += 1; }
  }
  while (i < n) { out.push(['-', x[i]]); i += 1; }
  while (j < m) { out.push(['+', y[j]]); j += 1; }
  return out;
}

const pretty = (v) => (typeof v === 'string' ? v : JSON.stringify(v, null, 2) ?? 'absent');

// Two answers side by side, the lines that differ marked − (left) and + (right).
function SideBySide({ left, right, leftName, rightName, differences }) {
  const d = lineDiff(pretty(left), pretty(right));
  const side = (keep, mark, cls) => d.filter(([k]) => k === ' ' || k === keep).map(([k, line]) => html`<div class=${k === ' ' ? '' : cls}>${k === ' ' ? '  ' : `${mark} `}${line}</div>`);
  return html`<div class="side" data-side-by-side>
    <div><h4>${leftName}</h4><div class="diff mono" data-side="left">${side('-', '−', 'del')}</div></div>
    <div><h4>${rightName}</h4><div class="diff mono" data-side="right">${side('+', '+', 'add')}</div></div>
  </div>
  ${differences && differences.length ? html`<table><thead><tr><th>path</th><th>reason</th><th>${leftName}</th><th>${rightName}</th></tr></thead>
    <tbody>${differences.map((x) => html`<tr><td class="mono">${x.path}</td><td>${x.reason}</td><td class="mono">${x.projection ?? ''}</td><td class="mono">${x.source ?? ''}</td></tr>`)}</tbody></table>` : ''}`;
}

// ---------------------------------------------------------------- overview

function lagOf(p) { return p.lag.reduce((s, l) => s + l.lag, 0); }

function Overview() {
  const { data, error } = usePoll('/v1/admin/overview');
  const hist = useHistory();
  if (!data) return html`<main>${error ? html`<div class="error">${error}</div>` : html`<p class="note">Loading…</p>`}</main>`;
  return html`<main>
    ${error ? html`<div class="error">Last refresh failed: ${error}</div>` : ''}
    <p class="note">${data.plugins.length} plugins · ${data.ready ? 'ready' : 'starting'} · ${fmt(data.retry_queue)} events waiting for a retry · updated ${new Date(data.at_ms).toLocaleTimeString()}</p>
    <table id="plugins">
      <thead><tr><th>plugin</th><th>version</th><th>population</th><th>health</th>
        <th>events/s</th><th class="num">applied</th><th>lag per partition</th><th class="num">hit ratio</th>
        <th class="num">fallbacks</th><th class="num">mismatches</th><th class="num">dead letters</th><th class="num">retried</th><th>deploy</th></tr></thead>
      <tbody>${data.plugins.map((p) => {
    const h = hist[p.plugin] || [];
    const last = h.length ? h[h.length - 1] : null;
    const parts = p.lag.map((l) => ({ name: `${l.source}/${l.partition}`, now: l.lag, values: h.map((s) => (s.lags || {})[`${l.source}/${l.partition}`] ?? 0) }));
    return html`<tr data-plugin=${p.plugin}>
        <td><a href="#/plugin/${enc(p.plugin)}"><strong>${p.plugin}</strong></a></td>
        <td><span class="mono" title=${p.id}>${short(p.id)}</span> ${p.version}<br/>
          <span class="note" title=${p.deployed ? p.deployed.from : ''}>${p.deployed ? `${ago(p.deployed.deployed_ms)} · ${basename(p.deployed.from)}` : 'from the config'}</span></td>
        <td>${p.population}${p.ttl_ms ? html`<br/><span class="note">ttl ${duration(p.ttl_ms / 1000)}</span>` : ''}</td>
        <td><${Health} p=${p} /></td>
        <td><${Spark} values=${h.map((s) => s.applied_per_s)} label="events/s" /><span data-metric="events_per_s">${fmt(last ? last.applied_per_s : null)}</span></td>
        <td class="num" data-metric="applied">${fmt(p.events.applied)}</td>
        <td><div class="lags">${parts.slice(0, 8).map((l) => html`<span class="mono">${l.name}</span><${Spark} values=${l.values} label="lag ${l.name}" /><span data-metric="lag" data-partition=${l.name}>${fmt(l.now)}</span>`)}</div>
          ${parts.length > 8 ? html`<span class="note">+${parts.length - 8} more partitions, ${fmt(lagOf(p))} records in all</span>` : ''}
          ${parts.length === 0 ? html`<span class="note">no source</span>` : ''}</td>
        <td class="num" data-metric="hit_ratio">${pct(p.hit_ratio)}</td>
        <td class="num" data-metric="fallbacks">${fmt(p.reads.fallbacks)}</td>
        <td class="num" data-metric="mismatches">${fmt(p.reads.mismatches)}</td>
        <td class="num" data-metric="dead_lettered">${fmt(p.events.dead_lettered)}</td>
        <td class="num" data-metric="retried">${fmt(p.retried)}</td>
        <td>${p.kept ? html`<span class="badge" data-kept title=${p.kept}>kept for rollback</span> ${short(p.kept)}` : p.shadow ? html`shadow <span class="badge">${p.shadow.phase}</span>` : ''}${p.adding ? html`adding <span class="badge">${p.adding.phase}</span>` : ''}</td>
      </tr>`;
  })}</tbody>
    </table>
    <${AddPlugin} />
  </main>`;
}

// ---------------------------------------------------------------- deploys

function Upload({ plugin, onDone, adding }) {
  const file = useRef(null);
  const [name, setName] = useState('');
  const [mode, setMode] = useState(adding ? 'replace' : 'shadow');
  const [method, setMethod] = useState('auto');
  const [ask, setAsk] = useState(null);
  const [msg, setMsg] = useState(null);
  const target = adding ? name.trim() : plugin;
  const go = () => {
    const f = file.current && file.current.files[0];
    if (!f) { setMsg({ error: 'Choose a .wasm file first.' }); return; }
    if (!target) { setMsg({ error: 'Name the new plugin first.' }); return; }
    const how = mode === 'shadow' ? `in shadow mode (${method}): it builds beside the serving version, which keeps serving until you promote it` : 'replacing the serving version at once';
    // Replace mode on a plugin's own page is a replace the operator
    // confirms below; anything else that would replace is asked again.
    const send = async (replace) => {
      setMsg({ note: `Uploading ${f.name} (${fmt(f.size)} bytes)…` });
      const q = new URLSearchParams({ mode, from: f.name, replace: String(replace) });
      if (mode === 'shadow') q.set('method', method);
      try {
        const r = await api('POST', `/v1/admin/plugins/${enc(target)}?${q}`, await f.arrayBuffer(), 'application/wasm');
        setMsg({ ok: `Deployed ${short(r.id)}${r.phase ? `: ${r.phase}` : ''}.` });
        if (onDone) onDone(target);
      } catch (e) {
        if (e.code !== 'replace_required') { setMsg({ error: e.message }); return; }
        setMsg(null);
        setAsk({ title: `Replace ${target}?`, detail: e.message, verb: 'Replace', danger: true, run: () => send(true) });
      }
    };
    setAsk({
      title: `Deploy ${f.name} as ${target}?`,
      detail: adding ? 'A new plugin: its views are built from the log, then it goes live.' : `It is deployed ${how}.`,
      verb: 'Deploy',
      run: () => send(mode === 'replace' && !adding),
    });
  };
  return html`<div class="panel" id=${adding ? 'add-plugin' : 'deploy'}>
    <div class="row">
      ${adding ? html`<label>name <input id="new-name" value=${name} onInput=${(e) => setName(e.target.value)} /></label>` : ''}
      <label>.wasm <input type="file" id="wasm-file" accept=".wasm,application/wasm" ref=${file} /></label>
      ${adding ? '' : html`<label>mode <select id="deploy-mode" value=${mode} onChange=${(e) => setMode(e.target.value)}>
        <option value="shadow">shadow (build beside, then promote)</option><option value="replace">replace now</option></select></label>`}
      ${mode === 'shadow' && !adding ? html`<label>method <select id="deploy-method" value=${method} onChange=${(e) => setMethod(e.target.value)}>
        <option value="auto">auto</option><option value="rebuild">rebuild from the log</option><option value="migrate">migrate the views</option></select></label>` : ''}
      <button id="deploy-go" class="primary" onClick=${go}>${adding ? 'Add plugin' : 'Deploy'}</button>
    </div>
    <${Confirm} ask=${ask} onDone=${() => setAsk(null)} />
    <${Message} msg=${msg} />
  </div>`;
}

function Message({ msg }) {
  if (!msg) return null;
  if (msg.error) return html`<div class="error" role="alert">${msg.error}</div>`;
  if (msg.ok) return html`<div class="ok" role="status">${msg.ok}</div>`;
  return html`<p class="note" role="status">${msg.note}</p>`;
}

function AddPlugin() {
  return html`<h2>Add a plugin</h2><${Upload} adding=${true} onDone=${(n) => { location.hash = `#/plugin/${enc(n)}`; }} />`;
}

function Shadow({ plugin, overview, refresh }) {
  const [ask, setAsk] = useState(null);
  const [msg, setMsg] = useState(null);
  const [comparison, setComparison] = useState(null);
  const [sample, setSample] = useState('1000');
  const st = overview && overview.shadow;
  const act = (what, title, detail, verb, danger, path, after) => setAsk({
    title, detail, verb, danger,
    run: async () => {
      setMsg({ note: `${verb}…` });
      try { const r = await api('POST', path); setMsg({ ok: after(r) }); refresh(); } catch (e) { setMsg({ error: e.message }); }
    },
  });
  const base = `/v1/admin/plugins/${enc(plugin)}`;
  const compare = async () => {
    setMsg({ note: 'Comparing…' });
    try {
      const c = await api('POST', `${base}/compare?sample=${enc(sample)}`);
      setComparison(c); setMsg(null); refresh();
    } catch (e) { setMsg({ error: e.message }); }
  };
  const c = comparison || (st && st.comparison);
  const kept = overview && overview.kept;
  // Each side of a comparison by role: serving, kept for rollback (after
  // a promotion), or shadow.
  const role = (id) => (c && id === c.serving ? 'serving' : id === kept ? 'kept for rollback' : 'shadow');
  const named = (id) => `${role(id)} ${short(id)}`;
  return html`<div id="shadow">
    ${kept ? html`<p data-kept><span class="badge">kept for rollback</span> version <span class="mono" title=${kept}>${short(kept)}</span>: the version replaced by the promotion, kept current beside the serving one until you retire it.</p>` : ''}
    ${st && !kept ? html`<div class="panel"><${Progress} st=${st} />
      ${st.migrated !== null && st.migrated !== undefined ? html`<p class="note">${fmt(st.migrated)} views migrated, ${fmt(st.not_migrated)} left to populate.</p>` : ''}
      <div class="row gap-top">
        <label>sample <input id="compare-sample" size="6" value=${sample} onInput=${(e) => setSample(e.target.value)} /></label>
        <button id="compare" onClick=${compare}>Compare</button>
        <button id="promote" class="primary" disabled=${st.phase !== 'following'}
          onClick=${() => act('promote', `Promote ${short(st.id)}?`, 'It serves reads and the live path at once; the version it replaces is kept current for a rollback.', 'Promote', false, `${base}/promote`, (r) => `Promoted: ${short(r.id)} serves.`)}>Promote</button>
        <button id="retire" class="danger"
          onClick=${() => act('retire', 'Retire the other generation?', 'Its views are deleted; this cannot be undone.', 'Retire', true, `${base}/retire`, (r) => `Retired ${r.retired}.`)}>Retire</button>
      </div></div>` : kept ? html`<div class="row">
        <label>sample <input id="compare-sample" size="6" value=${sample} onInput=${(e) => setSample(e.target.value)} /></label>
        <button id="compare" onClick=${compare}>Compare</button>
        <button id="retire" class="danger"
          onClick=${() => act('retire', 'Retire the version kept for rollback?', 'Its views are deleted; the promotion can no longer be rolled back. This cannot be undone.', 'Retire', true, `${base}/retire`, (r) => `Retired ${r.retired}.`)}>Retire</button>
      </div>` : html`<p class="note">No shadow generation. Deploy a version in shadow mode to build one beside the serving version.</p>`}
    <div class="row"><button id="rollback" class="danger" disabled=${!overview || overview.versions < 2}
      onClick=${() => act('rollback', 'Roll back to the previous version?', 'The version deployed before this one serves again.', 'Roll back', true, `${base}/rollback`, (r) => `Rolled back: ${short(r.id)} serves.`)}>Roll back</button></div>
    <${Confirm} ask=${ask} onDone=${() => setAsk(null)} />
    <${Message} msg=${msg} />
    ${c ? html`<div class="panel" id="comparison"><h3>Comparison</h3>
      ${c.serving ? html`<p>Versions: <span class="mono" data-compare="serving" title=${c.serving}>${named(c.serving)}</span> against <span class="mono" data-compare="other" title=${c.other}>${named(c.other)}</span></p>` : ''}
      <p><span data-metric="compared">${fmt(c.compared)}</span> keys compared: <span data-metric="equal">${fmt(c.equal)}</span> equal, <span data-metric="mismatched">${fmt(c.mismatched)}</span> different, <span data-metric="missing">${fmt(c.missing)}</span> missing on one side.</p>
      ${Object.keys(c.missing_in || {}).length ? html`<p>Missing: ${Object.entries(c.missing_in).map(([id, n]) => html`<span data-missing-in=${id}>${fmt(n)} lacking in ${named(id)}</span> `)}</p>` : ''}
      ${Object.keys(c.reasons || {}).length ? html`<p>By reason: ${Object.entries(c.reasons).map(([r, n]) => `${r} ${fmt(n)}`).join(', ')}</p>` : ''}
      ${(c.examples || []).map((x) => html`<h3>key <code>${x.key}</code></h3>
        <${SideBySide} left=${x.serving} right=${x.other} leftName=${named(c.serving)} rightName=${named(c.other)} differences=${x.differences} />`)}
      ${(c.missing_examples || []).length ? html`<h3>Missing views</h3><table data-missing-examples><thead><tr><th>key</th><th>lacking</th><th>holding</th><th>its view</th></tr></thead>
        <tbody>${c.missing_examples.map((x) => html`<tr><td class="mono">${x.key}</td><td class="mono" title=${x.lacking}>${named(x.lacking)}</td><td class="mono" title=${x.holding}>${named(x.holding)}</td><td class="mono">${pretty(x.view)}</td></tr>`)}</tbody></table>` : ''}
    </div>` : ''}
  </div>`;
}

// ---------------------------------------------------------------- a plugin

function Versions({ plugin }) {
  const reg = usePoll('/v1/admin/plugins', 5000);
  const audit = usePoll(`/v1/admin/plugins/${enc(plugin)}/audit`, 5000);
  const entry = reg.data && reg.data.plugins.find((p) => p.plugin === plugin);
  return html`<div id="versions">
    ${reg.error ? html`<div class="error">${reg.error}</div>` : ''}
    ${entry ? html`<table><thead><tr><th>version</th><th class="num">size</th><th>deployed</th><th>from</th><th>state</th></tr></thead>
      <tbody>${entry.versions.slice().reverse().map((v) => html`<tr><td class="mono" title=${v.id}>${short(v.id)}</td><td class="num">${fmt(v.size)}</td>
        <td>${ago(v.deployed_ms)}</td><td>${v.from}</td>
        <td>${v.id === entry.running ? html`<span class="badge">serving</span> ` : ''}${v.id === entry.active ? html`<span class="badge">active</span> ` : ''}${v.id === entry.kept ? html`<span class="badge" data-kept>kept for rollback</span> ` : ''}${v.id === entry.shadow ? html`<span class="badge">shadow</span> ` : ''}${v.rolled_back ? `rolled back: ${v.rolled_back}` : ''}</td></tr>`)}</tbody></table>
      <h3>History</h3>
      <table id="history"><thead><tr><th>when</th><th>act</th><th>version</th><th>before</th><th>why</th></tr></thead>
      <tbody>${(entry.history || []).slice().reverse().map((h) => html`<tr data-action=${h.action}><td>${ago(h.at_ms)}</td><td>${h.action.replace('_', ' ')}</td>
        <td class="mono" title=${h.id}>${short(h.id)}</td><td class="mono" title=${h.previous || ''}>${h.previous ? short(h.previous) : '–'}</td><td>${h.reason || ''}</td></tr>`)}</tbody></table>`
    : html`<p class="note">Not in the registry: loaded from the config.</p>`}
    <h3>Which version applied which offsets</h3>
    ${audit.data ? audit.data.generations.map((g) => html`<p><span class="badge">${g.role}</span> <span class="mono">${short(g.version)}</span> <span class="note">${g.ns}</span></p>
      <table><thead><tr><th>source</th><th class="num">partition</th><th class="num">offsets</th><th class="num">records</th><th>version</th><th>deployed</th></tr></thead>
      <tbody>${g.runs.map((r) => html`<tr><td>${r.source}</td><td class="num">${r.partition}</td><td class="num">${fmt(r.from)} – ${fmt(r.next)}</td><td class="num">${fmt(r.records)}</td>
        <td class="mono">${short(r.version)}</td><td>${r.deployed_ms ? `${ago(r.deployed_ms)} from ${r.from_file}` : '–'}</td></tr>`)}</tbody></table>`) : ''}
  </div>`;
}

function RolloutEditor({ plugin }) {
  const [text, setText] = useState(null);
  const [from, setFrom] = useState('');
  const [msg, setMsg] = useState(null);
  const [ask, setAsk] = useState(null);
  const path = `/v1/admin/rollout/${enc(plugin)}`;
  const load = () => get(path).then((r) => { setText(JSON.stringify(r.rollout, null, 2)); setFrom(r.from); }, (e) => setMsg({ error: e.message }));
  useEffect(() => { load(); }, [plugin]);
  const save = () => {
    let body;
    try { body = JSON.stringify(JSON.parse(text)); } catch (e) { setMsg({ error: `Not JSON: ${e.message}` }); return; }
    setAsk({
      title: `Change the rollout of ${plugin}?`, detail: 'Reads follow the new rules at once; the change is kept across restarts.', verb: 'Save',
      run: () => api('PUT', path, body, 'application/json').then((r) => { setText(JSON.stringify(r.rollout, null, 2)); setFrom(r.from); setMsg({ ok: 'Saved.' }); }, (e) => setMsg({ error: e.message })),
    });
  };
  const reset = () => setAsk({
    title: `Reset the rollout of ${plugin} to the config?`, detail: 'The rules set at runtime are dropped.', verb: 'Reset', danger: true,
    run: () => api('DELETE', path).then((r) => { setText(JSON.stringify(r.rollout, null, 2)); setFrom(r.from); setMsg({ ok: 'Reset to the config.' }); }, (e) => setMsg({ error: e.message })),
  });
  return html`<div id="rollout">
    <p class="note">Rules from the ${from || '…'}. Modes: source, projection, compare-return-source, compare-return-projection; rules match users, groups, percentages, and header or query attributes (see the README's rollout section).</p>
    <textarea id="rollout-text" class="mono" aria-label="rollout rules" value=${text ?? ''} onInput=${(e) => setText(e.target.value)}></textarea>
    <div class="row"><button id="rollout-save" class="primary" onClick=${save}>Save</button><button id="rollout-reset" class="danger" onClick=${reset}>Reset to the config</button></div>
    <${Confirm} ask=${ask} onDone=${() => setAsk(null)} /><${Message} msg=${msg} />
  </div>`;
}

function Mismatches({ plugin }) {
  const { data, error } = usePoll(`/v1/admin/mismatches/${enc(plugin)}?limit=20`, 5000);
  if (error) return html`<div class="error">${error}</div>`;
  if (!data) return html`<p class="note">Loading…</p>`;
  if (!data.mismatches.length) return html`<p class="note">No mismatch kept. Reads in compare or shadow mode record them.</p>`;
  return html`<div id="mismatches">${data.mismatches.map((m) => html`<div class="panel">
    <p>key <code>${m.key}</code> · ${m.mode} · ${ago(m.at_ms)}</p>
    <${SideBySide} left=${m.projection} right=${m.source} leftName="projection" rightName="source of truth" differences=${m.differences} /></div>`)}</div>`;
}

function Logs({ plugin }) {
  const { data, error } = usePoll(`/v1/admin/plugins/${enc(plugin)}/logs`, 3000);
  if (error) return html`<div class="error">${error}</div>`;
  if (!data) return html`<p class="note">Loading…</p>`;
  return data.lines.length ? html`<pre id="logs">${data.lines.join('\n')}</pre>` : html`<p class="note">The plugin has logged nothing.</p>`;
}

function DeadLetters({ plugin }) {
  const { data, error } = usePoll(`/v1/admin/dead-letters?plugin=${enc(plugin)}&limit=50`, 5000);
  if (error) return html`<div class="error">${error}</div>`;
  if (!data) return html`<p class="note">Loading…</p>`;
  if (!data.dead_letters.length) return html`<p class="note">No dead letters.</p>`;
  return html`<table id="dead-letters"><thead><tr><th>when</th><th>where</th><th>key</th><th>reason</th><th>event</th></tr></thead>
    <tbody>${data.dead_letters.map((d) => html`<tr><td>${ago(d.at_ms)}</td><td class="mono">${d.source}/${d.partition}@${d.offset}</td><td class="mono">${d.key ?? '–'}</td>
      <td><strong>${d.reason}</strong> <span class="note">(${d.stage})</span><br/>${d.error}</td>
      <td><pre>${d.raw ?? JSON.stringify(d.event, null, 2)}</pre></td></tr>`)}</tbody></table>`;
}

const TABS = [
  ['deploys', 'Deploys'], ['versions', 'Versions and audit'], ['rollout', 'Rollout'],
  ['mismatches', 'Mismatches'], ['logs', 'Logs'], ['dead', 'Dead letters'],
];

function Plugin({ plugin, tab }) {
  const { data, error } = usePoll('/v1/admin/overview');
  const hist = useHistory();
  const [, bump] = useState(0);
  const p = data && data.plugins.find((x) => x.plugin === plugin);
  const h = hist[plugin] || [];
  const last = h.length ? h[h.length - 1] : {};
  const show = tab || 'deploys';
  return html`<main>
    <p><a href="#/">← all plugins</a></p>
    <h2 id="plugin-name">${plugin}</h2>
    ${error ? html`<div class="error">${error}</div>` : ''}
    ${data && !p ? html`<div class="error">No plugin ${plugin} is loaded.</div>` : ''}
    ${p ? html`<p>version <span class="mono" title=${p.id}>${short(p.id)}</span> ${p.version} · ${p.population} · <${Health} p=${p} />
      · ${fmt(p.events.applied)} applied · ${fmt(p.events.dead_lettered)} dead letters · ${fmt(p.retried)} retried</p>
      <div class="charts">
        <${Chart} label="events/s" values=${h.map((s) => s.applied_per_s)} now=${fmt(last.applied_per_s)} />
        <${Chart} label="lag (records)" values=${h.map((s) => s.lag)} now=${fmt(last.lag)} />
        <${Chart} label="hit ratio" values=${h.map((s) => s.hit_ratio)} now=${pct(p.hit_ratio)} />
        <${Chart} label="mismatch ratio" values=${h.map((s) => s.mismatch_ratio)} now=${pct(last.mismatch_ratio)} />
      </div>` : ''}
    <div class="tabs" role="tablist">${TABS.map(([id, label]) => html`<button role="tab" id="tab-${id}" aria-selected=${show === id}
      onClick=${() => { location.hash = `#/plugin/${enc(plugin)}/${id}`; }}>${label}</button>`)}</div>
    ${show === 'deploys' ? html`<h3>Deploy a version</h3><${Upload} plugin=${plugin} onDone=${() => bump((n) => n + 1)} />
      <h3>Shadow generation</h3><${Shadow} plugin=${plugin} overview=${p} refresh=${() => bump((n) => n + 1)} />` : ''}
    ${show === 'versions' ? html`<${Versions} plugin=${plugin} />` : ''}
    ${show === 'rollout' ? html`<${RolloutEditor} plugin=${plugin} />` : ''}
    ${show === 'mismatches' ? html`<${Mismatches} plugin=${plugin} />` : ''}
    ${show === 'logs' ? html`<${Logs} plugin=${plugin} />` : ''}
    ${show === 'dead' ? html`<${DeadLetters} plugin=${plugin} />` : ''}
  </main>`;
}

// ---------------------------------------------------------------- sign-in and routes

function Login({ reason, onIn }) {
  const [value, setValue] = useState('');
  const [msg, setMsg] = useState(reason);
  const submit = async (e) => {
    e.preventDefault();
    token = value.trim();
    try {
      await get('/v1/admin/overview');
      sessionStorage.setItem(TOKEN_KEY, token);
      onIn();
    } catch (err) { setMsg(err.message); }
  };
  return html`<main class="login"><h2>Sign in</h2>
    <p>The console acts through the admin API: enter its token (<code>[http] admin_token</code> or <code>PROJECTOR_ADMIN_TOKEN</code>).</p>
    ${msg ? html`<div class="error" role="alert" id="login-error">${msg}</div>` : ''}
    <form onSubmit=${submit}><label for="token">admin token</label>
      <input id="token" type="password" autocomplete="current-password" value=${value} onInput=${(e) => setValue(e.target.value)} autofocus />
      <button id="sign-in" class="primary" type="submit">Sign in</button></form></main>`;
}

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  return parts[0] === 'plugin' && parts[1] ? { page: 'plugin', plugin: parts[1], tab: parts[2] } : { page: 'overview' };
}

function App() {
  const [auth, setAuth] = useState({ state: 'checking' });
  const [where, setWhere] = useState(route());
  useEffect(() => {
    onRefused = (reason) => setAuth({ state: 'login', reason });
    const moved = () => setWhere(route());
    window.addEventListener('hashchange', moved);
    get('/v1/admin/overview').then(() => setAuth({ state: 'in' }), (e) => {
      if (!(e instanceof Refused)) setAuth({ state: 'in' });
    });
    return () => window.removeEventListener('hashchange', moved);
  }, []);
  const out = () => { token = ''; sessionStorage.removeItem(TOKEN_KEY); setAuth({ state: 'login', reason: 'Signed out.' }); };
  return html`<header class="top"><h1>projector</h1>
      <nav><a href="#/">Plugins</a><a href="/metrics">Metrics</a><a href="/openapi.json">API</a></nav>
      <span class="status">${auth.state === 'in' && token ? html`<button id="sign-out" onClick=${out}>Sign out</button>` : ''}</span></header>
    ${auth.state === 'checking' ? html`<main><p class="note">Connecting…</p></main>` : ''}
    ${auth.state === 'login' ? html`<${Login} reason=${auth.reason} onIn=${() => setAuth({ state: 'in' })} />` : ''}
    ${auth.state === 'in' && where.page === 'overview' ? html`<${Overview} />` : ''}
    ${auth.state === 'in' && where.page === 'plugin' ? html`<${Plugin} plugin=${where.plugin} tab=${where.tab} />` : ''}`;
}

const root = document.getElementById('app');
root.textContent = '';
render(html`<${App} />`, root);

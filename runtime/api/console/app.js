// projector console: reads and acts through the admin API (see
// /openapi.json) with the token the operator enters; it has no rights of
// its own. Views are Preact components written as htm tagged templates.
import { html, render, useState, useEffect, useRef } from './vendor/htm-preact-3.1.1.mjs';
import { Chart, Spark, RANGES, SMOOTH_S, rates, rateNow, series } from './charts.js';
import { fmt, pct, basename, short, pretty, ago, duration } from './format.js';
import { api, get, enc, usePoll, useHistory, Refused, setToken, keepToken, forgetToken, hasToken, onRefusal } from './api.js';

// ---------------------------------------------------------------- small parts

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
        <th title="applied, ${SMOOTH_S} s average, last 5 min">events/s</th><th class="num">applied</th><th>lag per partition</th><th class="num">hit ratio</th>
        <th class="num">fallbacks</th><th class="num">mismatches</th><th class="num">dead letters</th><th class="num">retried</th><th>deploy</th></tr></thead>
      <tbody>${data.plugins.map((p) => {
    const h = hist[p.plugin] || [];
    const parts = p.lag.map((l) => ({ name: `${l.source}/${l.partition}`, now: l.lag, points: series(h, (s) => (s.lags || {})[`${l.source}/${l.partition}`] ?? 0) }));
    return html`<tr data-plugin=${p.plugin}>
        <td><a href="#/plugin/${enc(p.plugin)}"><strong>${p.plugin}</strong></a></td>
        <td><span class="mono" title=${p.id}>${short(p.id)}</span> ${p.version}<br/>
          <span class="note" title=${p.deployed ? p.deployed.from : ''}>${p.deployed ? `${ago(p.deployed.deployed_ms)} · ${basename(p.deployed.from)}` : 'from the config'}</span></td>
        <td>${p.population}${p.ttl_ms ? html`<br/><span class="note">ttl ${duration(p.ttl_ms / 1000)}</span>` : ''}</td>
        <td><${Health} p=${p} /></td>
        <td><${Spark} points=${rates(h)} label="events/s, ${SMOOTH_S} s average" /><span data-metric="events_per_s">${fmt(rateNow(h))}</span></td>
        <td class="num" data-metric="applied">${fmt(p.events.applied)}</td>
        <td><div class="lags">${parts.slice(0, 8).map((l) => html`<span class="mono">${l.name}</span><${Spark} points=${l.points} label="lag of ${l.name}, records" /><span data-metric="lag" data-partition=${l.name}>${fmt(l.now)}</span>`)}</div>
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
    ${data.services && data.services.length ? html`<h2>Services</h2>
    <table id="services"><thead><tr><th>service</th><th>breaker</th><th class="num">fetches</th><th class="num">requests</th><th class="num">in flight</th>
      <th class="num">coalesced</th><th class="num">fetched ahead</th><th class="num">batched</th><th class="num">from the record</th><th class="num">refused (breaker)</th><th class="num">errors</th><th class="num">p99</th></tr></thead>
      <tbody>${data.services.map((v) => html`<tr data-service=${v.service}>
        <td>${v.service}</td>
        <td><span class=${v.breaker === 'open' ? 'badge bad' : 'badge'} data-breaker=${v.breaker}>${v.breaker}</span>${v.breaker_opened ? html` <span class="note">opened ${fmt(v.breaker_opened)}×</span>` : ''}</td>
        <td class="num">${fmt(v.fetches)}</td><td class="num">${fmt(v.requests)}</td><td class="num">${fmt(v.in_flight)}</td>
        <td class="num">${fmt(v.coalesced)}</td><td class="num" data-metric="prefetched">${fmt(v.prefetched)}</td><td class="num" data-metric="batched">${fmt(v.batched)}</td><td class="num">${fmt(v.from_record)}</td><td class="num">${fmt(v.refused)}</td>
        <td class="num">${fmt(v.errors)}</td><td class="num">${v.p99_micros === null ? '–' : `≤ ${fmt(v.p99_micros)} µs`}</td></tr>`)}</tbody></table>` : ''}
    <${AddPlugin} />
  </main>`;
}

// ---------------------------------------------------------------- deploys

function Upload({ plugin, onDone, adding }) {
  const file = useRef(null);
  const [name, setName] = useState('');
  const [mode, setMode] = useState(adding ? 'replace' : 'shadow');
  const [method, setMethod] = useState('auto');
  const [promote, setPromote] = useState('');
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
      if (mode === 'shadow' && promote) q.set('promote', promote);
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
        <option value="auto">auto</option><option value="rebuild">rebuild from the log</option><option value="migrate">migrate the views</option></select></label>
        <label>promotion <select id="deploy-promote" value=${promote} onChange=${(e) => setPromote(e.target.value)}>
        <option value="">as configured</option><option value="manual">manual</option><option value="gated">gated (promotes itself)</option></select></label>` : ''}
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

const GATE_WORDS = {
  building: 'waiting for the build', checking: 'checking', held: 'held', watching: 'promoted, watching',
  passed: 'passed its watch', rolled_back: 'rolled back by its watch', stopped: 'stopped: an operator acted',
};

// A gated deploy's promotion gate: its state and each condition's figures.
function Gate({ gate }) {
  if (!gate) return null;
  const bad = gate.state === 'held' || gate.state === 'rolled_back';
  const mark = (c) => (c.ok === null ? '–' : c.ok ? '✓' : c.pending ? '…' : '✗');
  const cfg = gate.config;
  return html`<div class="panel" id="gate" data-gate=${gate.state}>
    <h3>Promotion gate <span class=${bad ? 'badge bad' : 'badge'} data-gate-state=${gate.state}>${GATE_WORDS[gate.state] || gate.state}</span></h3>
    ${gate.conditions.length ? html`<table><thead><tr><th></th><th>condition</th><th>figures</th></tr></thead>
      <tbody>${gate.conditions.map((c) => html`<tr data-condition=${c.name} data-ok=${String(c.ok)}>
        <td title=${c.ok === false && c.pending ? 'gathering' : ''}>${mark(c)}</td><td>${c.name}</td><td>${c.detail}</td></tr>`)}</tbody></table>` : ''}
    <p class="note">checked ${ago(gate.checked_ms)}, every ${duration(cfg.check_ms / 1000)} · promotes after ${duration(cfg.min_follow_ms / 1000)} and ${fmt(cfg.min_events)} events following, 
      ${fmt(cfg.min_keys)} keys compared with at most ${pct(cfg.max_mismatch)} different, at most ${pct(cfg.max_truth_mismatch)} against the source of truth
      · then watched ${duration(cfg.watch_ms / 1000)} and ${fmt(cfg.watch_events)} events</p>
  </div>`;
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
  // A shadow held (its dead letters run above the serving version's) is
  // promoted only when forced, after a confirmation that says why.
  const promote = (held) => setAsk({
    title: held ? `Promote ${short(st.id)} although its promotion is held?` : `Promote ${short(st.id)}?`,
    detail: `${held ? `It is held: ${held}. ` : ''}It serves reads and the live path at once; the version it replaces is kept current for a rollback.`,
    verb: held ? 'Promote anyway' : 'Promote',
    danger: Boolean(held),
    run: async () => {
      setMsg({ note: 'Promoting…' });
      try {
        const r = await api('POST', `${base}/promote${held ? '?force=true' : ''}`);
        setMsg({ ok: `Promoted: ${short(r.id)} serves.` });
        refresh();
      } catch (e) {
        if (e.code !== 'promotion_held') { setMsg({ error: e.message }); return; }
        setMsg(null);
        promote(e.detail);
      }
    },
  });
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
    ${st && st.gate ? html`<${Gate} gate=${st.gate} />` : ''}
    ${st && !kept ? html`<div class="panel"><${Progress} st=${st} />
      ${st.held ? html`<p class="held" data-held><strong>Promotion held:</strong> ${st.held}</p>` : ''}
      ${st.migrated !== null && st.migrated !== undefined ? html`<p class="note">${fmt(st.migrated)} views migrated, ${fmt(st.not_migrated)} left to populate.</p>` : ''}
      <div class="row gap-top">
        <label>sample <input id="compare-sample" size="6" value=${sample} onInput=${(e) => setSample(e.target.value)} /></label>
        <button id="compare" onClick=${compare}>Compare</button>
        <button id="promote" class="primary" disabled=${st.phase !== 'following'}
          onClick=${() => promote(st.held)}>${st.held ? 'Promote anyway…' : 'Promote'}</button>
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

// What the registry's history calls each act, in words.
const ACTS = {
  deploy: 'deploy', replace: 'replace', shadow: 'shadow build', promote: 'promote', rollback: 'rollback',
  runtime_rollback: 'rolled back by the runtime', retire: 'retire', remove: 'remove', redrive: 'redrive of dead letters',
  reconfigure: 'reconfigure', held: 'held by the promotion gate', watched: 'passed the promotion watch',
};

// The registry's entry of `plugin` (`GET /v1/admin/plugins`), polled.
function useEntry(plugin) {
  const reg = usePoll('/v1/admin/plugins', 5000);
  return { ...reg, entry: reg.data && reg.data.plugins.find((p) => p.plugin === plugin) };
}

// The role a version plays for its plugin, in words ('' for none).
function roleOf(entry, id) {
  if (!entry || !id) return '';
  if (id === (entry.running || entry.active)) return 'serving';
  if (id === entry.shadow) return 'shadow';
  if (id === entry.kept) return 'kept for rollback';
  const v = entry.versions.find((x) => x.id === id);
  return v && v.rolled_back ? 'rolled back' : '';
}

function Versions({ plugin }) {
  const reg = useEntry(plugin);
  const { entry } = reg;
  return html`<div id="versions">
    ${reg.error ? html`<div class="error">${reg.error}</div>` : ''}
    ${entry ? html`<table><thead><tr><th>version</th><th class="num">size</th><th>deployed</th><th>from</th><th>state</th></tr></thead>
      <tbody>${entry.versions.slice().reverse().map((v) => html`<tr><td class="mono" title=${v.id}>${short(v.id)}</td><td class="num">${fmt(v.size)}</td>
        <td>${ago(v.deployed_ms)}</td><td>${v.from}</td>
        <td>${v.id === entry.running ? html`<span class="badge">serving</span> ` : ''}${v.id === entry.active ? html`<span class="badge">active</span> ` : ''}${v.id === entry.kept ? html`<span class="badge" data-kept>kept for rollback</span> ` : ''}${v.id === entry.shadow ? html`<span class="badge">shadow</span> ` : ''}${v.rolled_back ? `rolled back: ${v.rolled_back}` : ''}</td></tr>`)}</tbody></table>
      <h3>History</h3>
      <table id="history"><thead><tr><th>when</th><th>act</th><th>version</th><th>before</th><th>why</th></tr></thead>
      <tbody>${(entry.history || []).slice().reverse().map((h) => html`<tr data-action=${h.action}><td>${ago(h.at_ms)}</td><td>${ACTS[h.action] || h.action.replaceAll('_', ' ')}</td>
        <td class="mono" title=${h.id}>${short(h.id)}</td><td class="mono" title=${h.previous || ''}>${h.previous ? short(h.previous) : '–'}</td><td>${h.reason || ''}</td></tr>`)}</tbody></table>`
    : html`<p class="note">Not in the registry: loaded from the config.</p>`}
    <${Audit} plugin=${plugin} />
  </div>`;
}

// Which version of `plugin` applied which offsets of each partition.
function Audit({ plugin }) {
  const { data, error } = usePoll(`/v1/admin/plugins/${enc(plugin)}/audit`, 5000);
  return html`<h3>Which version applied which offsets</h3>
    ${error ? html`<div class="error">${error}</div>` : ''}
    <div data-audit>${data ? data.generations.map((g) => html`<p><span class="badge">${g.role}</span> <span class="mono">${short(g.version)}</span> <span class="note">${g.ns}</span></p>
      <table><thead><tr><th>source</th><th class="num">partition</th><th class="num">offsets</th><th class="num">records</th><th>version</th><th>deployed</th></tr></thead>
      <tbody>${g.runs.map((r) => html`<tr><td>${r.source}</td><td class="num">${r.partition}</td><td class="num">${fmt(r.from)} – ${fmt(r.next)}</td><td class="num">${fmt(r.records)}</td>
        <td class="mono">${short(r.version)}</td><td>${r.deployed_ms ? `${ago(r.deployed_ms)} from ${r.from_file}` : '–'}</td></tr>`)}</tbody></table>`) : ''}</div>`;
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

// Dead letters of `plugin` (of one view key, with `viewKey`), filtered by
// the version that failed them, and sent back through the serving
// version: all those listed, or one.
function DeadLetters({ plugin, viewKey }) {
  const { entry } = useEntry(plugin);
  const [version, setVersion] = useState('');
  const [ask, setAsk] = useState(null);
  const [msg, setMsg] = useState(null);
  const q = new URLSearchParams({ plugin, limit: String(LETTERS_SHOWN) });
  if (version) q.set('version', version);
  if (viewKey) q.set('key', viewKey);
  const { data, error, reload } = usePoll(`/v1/admin/dead-letters?${q}`, 5000);
  const letters = data ? data.dead_letters : [];
  const serving = entry && (entry.running || entry.active);
  const redrive = (seqs) => setAsk({
    title: `Send ${seqs.length === 1 ? 'this dead letter' : `these ${seqs.length} dead letters`} back through the serving version${serving ? ` ${short(serving)}` : ''}?`,
    detail: 'They leave the dead letters at once and are applied within about a second; any that fail again come back as new dead letters.',
    verb: 'Send back',
    run: async () => {
      setMsg({ note: 'Sending back…' });
      const body = { plugin, seqs, ...(version ? { version } : {}), ...(viewKey ? { key: viewKey } : {}) };
      try {
        const r = await api('POST', '/v1/admin/dead-letters/redrive', JSON.stringify(body), 'application/json');
        setMsg({ ok: redriven(r) });
      } catch (e) { setMsg({ error: e.message }); }
      reload();
    },
  });
  return html`<div id="dead">
    <div class="row">
      <label>version <select id="dead-version" value=${version} onChange=${(e) => setVersion(e.target.value)}>
        <option value="">all versions</option>
        ${(entry ? entry.versions.slice().reverse() : []).map((v) => html`<option value=${v.id}>${short(v.id)} ${roleOf(entry, v.id)}</option>`)}
      </select></label>
      ${letters.length ? html`<button id="redrive" class="primary" onClick=${() => redrive(letters.map((d) => d.seq))}>Send back through the serving version</button>` : ''}
      <span class="note">${data ? `${fmt(letters.length)}${letters.length === LETTERS_SHOWN ? ' (the oldest)' : ''} shown` : ''}</span>
    </div>
    <${Confirm} ask=${ask} onDone=${() => setAsk(null)} /><${Message} msg=${msg} />
    ${error ? html`<div class="error">${error}</div>` : ''}
    ${!data ? html`<p class="note">Loading…</p>` : letters.length ? html`<${Letters} letters=${letters} entry=${entry} onRedrive=${(seq) => redrive([seq])} />`
    : html`<p class="note" data-empty>No dead letters${version ? ` of version ${short(version)}` : ''}${viewKey ? ' for this key' : ''}.</p>`}
  </div>`;
}

const LETTERS_SHOWN = 100;

// A redrive's answer, in words.
function redriven(r) {
  const skipped = r.skipped || [];
  return `${fmt(r.redriven)} dead ${r.redriven === 1 ? 'letter' : 'letters'} sent back through version ${short(r.version)}; they apply within a second.`
    + (skipped.length ? ` ${fmt(skipped.length)} skipped: ${skipped.map((x) => `#${x.seq} ${x.reason}`).join('; ')}.` : '');
}

// One dead letter a row: when, where, the version that failed it, why, and the event.
function Letters({ letters, entry, onRedrive }) {
  return html`<table id="dead-letters"><thead><tr><th>when</th><th>where</th><th>key</th><th>version</th><th>reason</th><th>event</th><th></th></tr></thead>
    <tbody>${letters.map((d) => html`<tr data-seq=${d.seq}><td>${ago(d.at_ms)}</td><td class="mono">${d.source}/${d.partition}@${d.offset}</td><td class="mono">${d.key ?? '–'}</td>
      <td data-version=${d.version || ''}>${d.version ? html`<span class="mono" title=${d.version}>${short(d.version)}</span> ${roleOf(entry, d.version) ? html`<span class="badge">${roleOf(entry, d.version)}</span>` : ''}` : '–'}</td>
      <td><strong>${d.reason}</strong> <span class="note">(${d.stage})</span><br/>${d.error}</td>
      <td><pre>${d.raw ?? JSON.stringify(d.event, null, 2)}</pre></td>
      <td>${d.plugin ? html`<button class="redrive-one" onClick=${() => onRedrive(d.seq)}>Send back</button>` : ''}</td></tr>`)}</tbody></table>`;
}

// A view looked up by key: what is stored, the key's dead letters, and
// which version applied which offsets.
function Lookup({ plugin, viewKey }) {
  const [typed, setTyped] = useState(viewKey || '');
  useEffect(() => setTyped(viewKey || ''), [viewKey]);
  const go = (e) => {
    e.preventDefault();
    if (typed) location.hash = `#/plugin/${enc(plugin)}/lookup/${enc(typed)}`;
  };
  return html`<div id="lookup">
    <form class="row gap-top" onSubmit=${go}>
      <label>view key <input id="lookup-key" size="40" value=${typed} onInput=${(e) => setTyped(e.target.value)} /></label>
      <button id="lookup-go" class="primary" type="submit">Look up</button></form>
    ${viewKey ? html`<${StoredView} plugin=${plugin} viewKey=${viewKey} />
      <${ViewHistory} plugin=${plugin} viewKey=${viewKey} />
      <h3>Dead letters of this key</h3><${DeadLetters} plugin=${plugin} viewKey=${viewKey} />`
    : html`<p class="note">The view stored under a key as it is (no read mode, fallback or population), with the versions it applied.</p>`}
    <${Audit} plugin=${plugin} />
  </div>`;
}

// The view's changes kept by the plugin's history, newest first, and the
// view as it was at a time the operator picks.
function ViewHistory({ plugin, viewKey }) {
  const path = `/v1/views/${enc(plugin)}/${enc(viewKey)}`;
  const { data, error, code } = usePoll(`${path}/history`, 5000);
  const [when, setWhen] = useState('');
  const [past, setPast] = useState(null);
  if (code === 'history_off') return html`<h3>History</h3><p class="note" id="history-off">${plugin} keeps no history of its views: set <code>[plugins.${plugin}] history = { versions = 50, ms = 604800000 }</code> to read views as they were.</p>`;
  if (error && !data) return html`<div class="error">${error}</div>`;
  if (!data) return null;
  const asOf = async (e) => {
    e.preventDefault();
    const ms = new Date(when).getTime();
    if (Number.isNaN(ms)) { setPast({ error: 'Pick a date and time first.' }); return; }
    try { setPast({ ms, data: await get(`${path}?as_of=${ms}`) }); } catch (err) { setPast({ ms, error: err.message }); }
  };
  const changes = [...data.changes].reverse();
  // Plugins that record their fetches name the answers each change used.
  const fetched = changes.some((c) => c.fetched);
  const builtFrom = (c) => (c.fetched || []).map((f) => html`<div class="mono" title=${`status ${f.status}${f.from_record ? ', from the record' : ''}${f.stale ? ', stale' : ''}`}>${f.service} ${f.path} <span class="note">${f.digest}</span></div>`);
  return html`<div id="view-history"><h3>History</h3>
    <p class="note">${fmt(data.changes.length)} changes kept (at most ${fmt(data.kept.versions)}, none older than ${duration(data.kept.ms / 1000)})</p>
    <form class="row" onSubmit=${asOf}><label>the view as of <input id="as-of" type="datetime-local" step="1" value=${when} onInput=${(e) => setWhen(e.target.value)} /></label>
      <button id="as-of-go" type="submit">Show</button></form>
    ${past && past.error ? html`<div class="error" id="as-of-result">${past.error}</div>` : ''}
    ${past && past.data ? html`<div class="panel" id="as-of-result"><p>As of ${new Date(past.ms).toLocaleString()}: the change committed ${new Date(past.data.at_ms).toLocaleString()} by version <span class="mono">${short(past.data.version)}</span></p><pre>${pretty(past.data.answer)}</pre></div>` : ''}
    <table id="history-changes"><thead><tr><th>committed</th><th>version</th><th>offsets then</th>${fetched ? html`<th>built from</th>` : ''}<th>the view after it</th></tr></thead>
      <tbody>${changes.map((c) => html`<tr data-at=${c.at_ms}>
        <td title=${new Date(c.at_ms).toISOString()}>${new Date(c.at_ms).toLocaleString()}</td>
        <td class="mono">${short(c.version)}</td>
        <td class="mono">${c.offsets.map((o) => `${o.source}/${o.partition}:${o.next}`).join(' ')}</td>
        ${fetched ? html`<td class="fetched">${builtFrom(c)}</td>` : ''}
        <td>${c.deleted ? html`<span class="badge bad">deleted</span>` : html`<details><summary>${c.view ? c.view.status : ''}</summary><pre>${pretty(c.answer)}</pre></details>`}</td></tr>`)}</tbody></table>
  </div>`;
}

function StoredView({ plugin, viewKey }) {
  const { data, error, code } = usePoll(`/v1/admin/plugins/${enc(plugin)}/views/${enc(viewKey)}`, 5000);
  if (code === 'view_not_found') return html`<p id="lookup-view" class="panel" data-absent>No view for key <code>${viewKey}</code>: ${plugin} stores nothing under it.</p>`;
  if (error && !data) return html`<div class="error">${error}</div>`;
  if (!data) return html`<p class="note">Loading…</p>`;
  return html`<div id="lookup-result">
    <p>Key <code>${data.key}</code> · <span class="badge" data-status=${data.status}>${data.status}</span>
      · its last event is from <span title=${new Date(data.updated_ms).toISOString()}>${ago(data.updated_ms)}</span> (the event's own time)</p>
    <h3>Highest version applied, per source</h3>
    <table id="lookup-versions"><thead><tr><th>source</th><th>version</th></tr></thead>
      <tbody>${Object.entries(data.versions).map(([source, v]) => html`<tr data-source=${source}><td>${source}</td><td class="mono">${v}</td></tr>`)}</tbody></table>
    <h3>The view</h3>
    ${data.view === null ? html`<p id="lookup-view" class="note">Nothing to render: the view is ${data.status}.</p>` : html`<pre id="lookup-view">${pretty(data.view)}</pre>`}
  </div>`;
}

const TABS = [
  ['deploys', 'Deploys'], ['versions', 'Versions and audit'], ['rollout', 'Rollout'],
  ['mismatches', 'Mismatches'], ['logs', 'Logs'], ['dead', 'Dead letters'], ['lookup', 'Look up a view'],
];

// The plugin's numbers over a time range the operator picks.
function Charts({ p, h }) {
  const [range, setRange] = useState(300);
  const last = h.length ? h[h.length - 1] : {};
  return html`<div class="row gap-top">
      <label>time range <select id="chart-range" value=${range} onChange=${(e) => setRange(Number(e.target.value))}>
        ${RANGES.map(([seconds, name]) => html`<option value=${seconds}>last ${name}</option>`)}</select></label>
      <span class="note">a sample a second; events/s averaged over ${SMOOTH_S} s</span></div>
    <div class="charts">
      <${Chart} title="events/s, ${SMOOTH_S} s average" kind="rate" points=${rates(h)} range=${range} now=${fmt(rateNow(h))} />
      <${Chart} title="lag" kind="records" points=${series(h, (s) => s.lag)} range=${range} now=${`${fmt(last.lag)} records`} />
      <${Chart} title="hit ratio" kind="ratio" points=${series(h, (s) => s.hit_ratio)} range=${range} now=${pct(p.hit_ratio)} empty="no lookups in this range" />
      <${Chart} title="mismatch ratio" kind="ratio" points=${series(h, (s) => s.mismatch_ratio)} range=${range} now=${pct(last.mismatch_ratio)} empty="no comparisons in this range" />
    </div>`;
}

function Plugin({ plugin, tab, viewKey }) {
  const { data, error } = usePoll('/v1/admin/overview');
  const hist = useHistory();
  const [, bump] = useState(0);
  const p = data && data.plugins.find((x) => x.plugin === plugin);
  const show = tab || 'deploys';
  return html`<main>
    <p><a href="#/">← all plugins</a></p>
    <h2 id="plugin-name">${plugin}</h2>
    ${error ? html`<div class="error">${error}</div>` : ''}
    ${data && !p ? html`<div class="error">No plugin ${plugin} is loaded.</div>` : ''}
    ${p ? html`<p>version <span class="mono" title=${p.id}>${short(p.id)}</span> ${p.version} · ${p.population} · <${Health} p=${p} />
      · ${fmt(p.events.applied)} applied · ${fmt(p.events.dead_lettered)} dead letters · ${fmt(p.retried)} retried</p>
      <${Charts} p=${p} h=${hist[plugin] || []} />` : ''}
    <div class="tabs" role="tablist">${TABS.map(([id, label]) => html`<button role="tab" id="tab-${id}" aria-selected=${show === id}
      onClick=${() => { location.hash = `#/plugin/${enc(plugin)}/${id}`; }}>${label}</button>`)}</div>
    ${show === 'deploys' ? html`<h3>Deploy a version</h3><${Upload} plugin=${plugin} onDone=${() => bump((n) => n + 1)} />
      <h3>Shadow generation</h3><${Shadow} plugin=${plugin} overview=${p} refresh=${() => bump((n) => n + 1)} />` : ''}
    ${show === 'versions' ? html`<${Versions} plugin=${plugin} />` : ''}
    ${show === 'rollout' ? html`<${RolloutEditor} plugin=${plugin} />` : ''}
    ${show === 'mismatches' ? html`<${Mismatches} plugin=${plugin} />` : ''}
    ${show === 'logs' ? html`<${Logs} plugin=${plugin} />` : ''}
    ${show === 'dead' ? html`<${DeadLetters} plugin=${plugin} />` : ''}
    ${show === 'lookup' ? html`<${Lookup} plugin=${plugin} viewKey=${viewKey} />` : ''}
  </main>`;
}

// ---------------------------------------------------------------- instances

const STATE_WORDS = {
  owned: 'owned', paused: 'paused (queue full)', restoring: 'restoring', unowned: 'no owner',
};

function Lag({ lag, caughtUp }) {
  if (lag === null || lag === undefined) return html`<span class="note" data-lag="unknown">unknown</span>`;
  return html`<span data-lag=${lag}>${fmt(lag)}</span> ${caughtUp ? html`<span class="badge" data-caught-up>caught up</span>` : html`<span class="badge bad">behind</span>`}`;
}

// The instances sharing the Kafka group and each partition's state.
function Instances() {
  const { data, error } = usePoll('/v1/admin/instances');
  if (!data) return html`<main>${error ? html`<div class="error">${error}</div>` : html`<p class="note">Loading…</p>`}</main>`;
  if (!data.members.length) return html`<main><h2>Instances</h2><p class="note" id="one-instance">${data.message || 'No other instance.'}</p></main>`;
  const parts = data.by_partition || [];
  const states = parts.reduce((n, p) => ({ ...n, [p.state]: (n[p.state] || 0) + 1 }), {});
  return html`<main><h2>Instances</h2>
    ${error ? html`<div class="error">Last refresh failed: ${error}</div>` : ''}
    <p class="note">${data.members.length} live instances · ${data.partitions} partitions: ${Object.entries(states).map(([k, n]) => `${n} ${STATE_WORDS[k] || k}`).join(', ')} · seen from ${short(data.instance)}</p>
    <table id="members"><thead><tr><th>instance</th><th>API</th><th class="num">owned</th><th>restoring</th><th class="num">standby for</th><th>last heard</th></tr></thead>
      <tbody>${data.members.map((m) => html`<tr data-instance=${m.instance}>
        <td class="mono">${m.instance}${m.me ? html` <span class="badge">this one</span>` : ''}</td>
        <td>${m.url ? html`<a href=${`${m.url}/console#/instances`}>${m.url}</a>` : html`<span class="note">not listening yet</span>`}</td>
        <td class="num">${m.owned.length}</td><td>${m.restoring.join(', ')}</td><td class="num">${m.standby.length}</td>
        <td>${(m.seen_ms_ago / 1000).toFixed(1)} s ago</td></tr>`)}</tbody></table>
    <h3>Partitions</h3>
    <table id="partitions"><thead><tr><th class="num">partition</th><th>owner</th><th>state</th><th>lag, records</th><th>standbys (changelog records behind)</th></tr></thead>
      <tbody>${parts.map((p) => html`<tr data-partition=${p.partition} data-state=${p.state} data-owner=${p.owner || ''}>
        <td class="num">${p.partition}</td>
        <td class="mono">${p.owner || '—'}</td>
        <td><span class=${p.state === 'owned' ? 'badge' : 'badge bad'}>${STATE_WORDS[p.state] || p.state}</span>
          ${p.restore ? html` <progress max=${p.restore.total} value=${p.restore.read}></progress> <span class="note">${fmt(p.restore.read)} of ${fmt(p.restore.total)}</span>` : ''}</td>
        <td>${p.owner ? html`<${Lag} lag=${p.lag} caughtUp=${p.caught_up} />` : ''}</td>
        <td>${p.standbys.length ? p.standbys.map((b) => html`<span class="mono" data-standby=${b.instance}>${short(b.instance)}</span> <${Lag} lag=${b.lag} caughtUp=${b.caught_up} /> `) : html`<span class="note">none</span>`}</td>
      </tr>`)}</tbody></table>
  </main>`;
}

// ---------------------------------------------------------------- sign-in and routes

function Login({ reason, onIn }) {
  const [value, setValue] = useState('');
  const [msg, setMsg] = useState(reason);
  const submit = async (e) => {
    e.preventDefault();
    setToken(value.trim());
    try {
      await get('/v1/admin/overview');
      keepToken();
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
  if (parts[0] === 'instances') return { page: 'instances' };
  return parts[0] === 'plugin' && parts[1] ? { page: 'plugin', plugin: parts[1], tab: parts[2], viewKey: parts[3] } : { page: 'overview' };
}

function App() {
  const [auth, setAuth] = useState({ state: 'checking' });
  const [where, setWhere] = useState(route());
  useEffect(() => {
    onRefusal((reason) => setAuth({ state: 'login', reason }));
    const moved = () => setWhere(route());
    window.addEventListener('hashchange', moved);
    get('/v1/admin/overview').then(() => setAuth({ state: 'in' }), (e) => {
      if (!(e instanceof Refused)) setAuth({ state: 'in' });
    });
    return () => window.removeEventListener('hashchange', moved);
  }, []);
  const out = () => { forgetToken(); setAuth({ state: 'login', reason: 'Signed out.' }); };
  return html`<header class="top"><h1>projector</h1>
      <nav><a href="#/">Plugins</a><a href="#/instances" id="nav-instances">Instances</a><a href="/metrics">Metrics</a><a href="/openapi.json">API</a></nav>
      <span class="status">${auth.state === 'in' && hasToken() ? html`<button id="sign-out" onClick=${out}>Sign out</button>` : ''}</span></header>
    ${auth.state === 'checking' ? html`<main><p class="note">Connecting…</p></main>` : ''}
    ${auth.state === 'login' ? html`<${Login} reason=${auth.reason} onIn=${() => setAuth({ state: 'in' })} />` : ''}
    ${auth.state === 'in' && where.page === 'overview' ? html`<${Overview} />` : ''}
    ${auth.state === 'in' && where.page === 'instances' ? html`<${Instances} />` : ''}
    ${auth.state === 'in' && where.page === 'plugin' ? html`<${Plugin} plugin=${where.plugin} tab=${where.tab} viewKey=${where.viewKey} />` : ''}`;
}

const root = document.getElementById('app');
root.textContent = '';
render(html`<${App} />`, root);

// Charts of the operator history (`GET /v1/admin/history`: one sample a
// second per plugin, the last 15 minutes), in plain SVG: a y axis with
// its unit and ticks, a time axis, rates smoothed by a moving average,
// and at most one point per pixel column, so that minutes of samples
// still draw a line.
import { html, useState, useEffect, useRef } from './vendor/htm-preact-3.1.1.mjs';
import { fmt, pct } from './format.js';

// The ranges a chart can show, in seconds (the server keeps 15 minutes).
export const RANGES = [[60, '1 min'], [300, '5 min'], [900, '15 min']];

// The moving average's window for rates, in seconds.
export const SMOOTH_S = 10;

// One number per sample, as points `{at_ms, v}` (v null when the sample has none).
export const series = (samples, pick) => samples.map((s) => ({ at_ms: s.at_ms, v: pick(s) ?? null }));

// Events applied per second, averaged over the SMOOTH_S seconds up to each sample.
export function rates(samples) {
  const out = [];
  let sum = 0;
  let from = 0;
  samples.forEach((s, i) => {
    sum += s.applied_per_s;
    while (samples[from].at_ms <= s.at_ms - SMOOTH_S * 1000) {
      sum -= samples[from].applied_per_s;
      from += 1;
    }
    out.push({ at_ms: s.at_ms, v: Math.max(0, sum / (i - from + 1)) });
  });
  return out;
}

// The smoothed rate now: the events/s figure every page shows.
export function rateNow(samples) {
  const r = rates(samples.slice(-SMOOTH_S * 2));
  return r.length ? r[r.length - 1].v : null;
}

// The means of `points` in `columns` equal slices of [start, end]: at most
// one point per column, placed at its middle.
function columnMeans(points, start, end, columns) {
  const width = (end - start) / columns;
  const sums = new Float64Array(columns);
  const counts = new Uint32Array(columns);
  for (const p of points) {
    if (p.v === null || p.at_ms < start || p.at_ms > end) continue;
    const c = Math.min(columns - 1, Math.floor((p.at_ms - start) / width));
    sums[c] += p.v;
    counts[c] += 1;
  }
  const out = [];
  counts.forEach((n, c) => { if (n) out.push({ at_ms: start + (c + 0.5) * width, v: sums[c] / n }); });
  return out;
}

// The top of a y axis: the smallest 1, 2, 2.5 or 5 × 10^k at or above `max`.
function axisTop(max) {
  if (!(max > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= max * (1 - 1e-9));
}

const compact = (v) => v.toLocaleString('en-US', { notation: 'compact', maximumFractionDigits: 2 });

// How each kind of chart writes its numbers: the axis unit, a tick, a value.
const KINDS = {
  rate: { unit: 'events/s', tick: compact, value: fmt },
  records: { unit: 'records', tick: compact, value: fmt },
  ratio: { unit: '%', tick: (v) => `${compact(v * 100)} %`, value: pct, cap: 1 },
};

// A span of seconds in words, and a time that long before the newest sample.
const span = (s) => (s < 120 ? `${Math.round(s)} s` : `${Number((s / 60).toFixed(1))} min`);
const before = (s) => (s <= 0 ? 'now' : `−${span(s)}`);

// The width an element is drawn at, in CSS pixels, followed as it changes.
function useWidth(ref, fallback) {
  const [width, setWidth] = useState(fallback);
  useEffect(() => {
    if (!ref.current || typeof ResizeObserver === 'undefined') return undefined;
    const watch = new ResizeObserver(([e]) => setWidth(Math.max(160, Math.round(e.contentRect.width))));
    watch.observe(ref.current);
    return () => watch.disconnect();
  }, []);
  return width;
}

// What a chart of `points` over the last `range` seconds draws: the
// window's ends, its highest and last values, and the points per column.
function shown(points, range, columns) {
  const end = points.length ? points[points.length - 1].at_ms : Date.now();
  const start = end - range * 1000;
  const inside = points.filter((p) => p.v !== null && p.at_ms >= start);
  const highest = inside.length ? Math.max(...inside.map((p) => p.v)) : null;
  const last = inside.length ? inside[inside.length - 1].v : null;
  return { start, end, highest, last, drawn: columnMeans(inside, start, end, Math.max(1, columns)) };
}

const HEIGHT = 132;
const PAD = { left: 56, right: 12, top: 8, bottom: 22 };

// A chart: `kind` is rate, records or ratio; `now` the figure shown beside
// the title; `empty` what to say when the range holds no value.
export function Chart({ title, kind, points, range, now, empty = 'waiting for samples' }) {
  const ref = useRef(null);
  const width = useWidth(ref, 320);
  const k = KINDS[kind];
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const w = shown(points, range, Math.floor(plotW));
  const top = Math.min(k.cap ?? Infinity, axisTop(w.highest));
  const x = (t) => (PAD.left + ((t - w.start) / (w.end - w.start)) * plotW).toFixed(1);
  const y = (v) => (PAD.top + plotH - (Math.min(v, top) / top) * plotH).toFixed(1);
  const ticks = [0, top / 2, top];
  const times = [w.start, (w.start + w.end) / 2, w.end];
  const summary = w.last === null ? `${title}: ${empty}`
    : `${title}, last ${span(range)}: now ${k.value(w.last)}, highest ${k.value(w.highest)}`;
  return html`<figure class="chart">
    <figcaption class="label"><span>${title}</span><strong>${now}</strong></figcaption>
    <svg ref=${ref} class="plot" viewBox="0 0 ${width} ${HEIGHT}" role="img" aria-label=${summary}>
      <title>${summary}</title>
      <g class="grid">${ticks.map((v) => html`<line x1=${PAD.left} x2=${width - PAD.right} y1=${y(v)} y2=${y(v)} />`)}</g>
      <g class="axis" data-axis="y">
        <text class="unit" transform="translate(12 ${PAD.top + plotH / 2}) rotate(-90)" text-anchor="middle">${k.unit}</text>
        ${ticks.map((v) => html`<text x=${PAD.left - 5} y=${y(v)} dy="0.32em" text-anchor="end">${k.tick(v)}</text>`)}</g>
      <g class="axis" data-axis="time">${times.map((t, i) => html`<text x=${x(t)} y=${HEIGHT - 6}
        text-anchor=${['start', 'middle', 'end'][i]}>${before((w.end - t) / 1000)}</text>`)}</g>
      ${w.drawn.length > 1 ? html`<polyline points=${w.drawn.map((p) => `${x(p.at_ms)},${y(p.v)}`).join(' ')} />`
    : html`<text class="axis" x=${PAD.left + plotW / 2} y=${PAD.top + plotH / 4} dy="0.32em" text-anchor="middle">${empty}</text>`}
    </svg></figure>`;
}

// A small line without axes, for a table cell: the last `range` seconds,
// one point per pixel column of its 120.
export function Spark({ points, label, range = 300 }) {
  const W = 120;
  const H = 24;
  const w = shown(points, range, W);
  if (w.drawn.length < 2) return html`<svg class="spark" role="img" aria-label="${label}: not enough samples yet"></svg>`;
  const top = axisTop(w.highest);
  const line = w.drawn.map((p) => `${(((p.at_ms - w.start) / (w.end - w.start)) * W).toFixed(1)},${(H - 1 - (p.v / top) * (H - 2)).toFixed(1)}`).join(' ');
  const summary = `${label}, last ${span(range)}: now ${fmt(w.last)}, highest ${fmt(w.highest)}`;
  return html`<svg class="spark" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label=${summary}>
    <title>${summary}</title><polyline points=${line} /></svg>`;
}

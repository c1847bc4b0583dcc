// How the console writes numbers, times and ids: in words, the same way
// on every page.

export const fmt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US', { maximumFractionDigits: 1 }));
export const pct = (r) => (r === null || r === undefined ? '–' : `${(r * 100).toFixed(1)} %`);
export const basename = (path) => String(path).split('/').pop();
export const short = (id) => (id ? id.slice(0, 12) : '–');
export const pretty = (v) => (typeof v === 'string' ? v : JSON.stringify(v, null, 2) ?? 'absent');

export function ago(ms) {
  if (!ms) return '–';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
}

export function duration(s) {
  if (s === null || s === undefined) return '–';
  if (s < 90) return `${Math.ceil(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// How the console calls the admin API: with the operator's token (kept
// for the browser tab only), and as hooks that poll while a view is shown.
import { useState, useEffect } from './vendor/htm-preact-3.1.1.mjs';

const TOKEN_KEY = 'projector.admin_token';
const POLL_MS = 2000;
const WINDOW_S = 900; // samples kept: all the server has (15 minutes)

// ---------------------------------------------------------------- the token

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let onRefused = () => {};

// Calls from now on carry `t`; `keepToken` keeps it for the browser tab.
export const setToken = (t) => { token = t; };
export const keepToken = () => sessionStorage.setItem(TOKEN_KEY, token);
export const forgetToken = () => { token = ''; sessionStorage.removeItem(TOKEN_KEY); };
export const hasToken = () => Boolean(token);
// `fn(reason)` is called when the API refuses the token.
export const onRefusal = (fn) => { onRefused = fn; };

// ---------------------------------------------------------------- calls

export class Refused extends Error {}

export async function api(method, path, body, type) {
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
    e.detail = (data && data.message) || text;
    throw e;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const enc = encodeURIComponent;

// Polls `path` every `ms` while the component is shown: `{data, error,
// code, reload}`, the last answer kept through a failed refresh (not
// through a change of path).
export function usePoll(path, ms = POLL_MS) {
  const [state, setState] = useState({ path: null, data: null });
  const [turn, setTurn] = useState(0);
  useEffect(() => {
    if (!path) return undefined;
    let live = true;
    const tick = () => get(path).then(
      (data) => live && setState({ path, data }),
      (e) => live && !(e instanceof Refused) && setState((s) => ({ path, data: s.path === path ? s.data : null, error: e.message, code: e.code })),
    );
    tick();
    const id = setInterval(tick, ms);
    return () => { live = false; clearInterval(id); };
  }, [path, ms, turn]);
  const mine = state.path === path ? state : {};
  return { data: mine.data ?? null, error: mine.error ?? null, code: mine.code ?? null, reload: () => setTurn((n) => n + 1) };
}

// The history of every plugin, fetched incrementally.
const history = { since: 0, plugins: {} };
export function useHistory() {
  const [, bump] = useState(0);
  useEffect(() => {
    let live = true;
    const tick = () => get(`/v1/admin/history?since_ms=${history.since}`).then((h) => {
      for (const samples of Object.values(h.plugins)) {
        for (const s of samples) history.since = Math.max(history.since, s.at_ms);
      }
      // By the server's clock, which the samples' times are.
      const oldest = history.since - WINDOW_S * 1000;
      for (const [name, samples] of Object.entries(h.plugins)) {
        history.plugins[name] = (history.plugins[name] || []).concat(samples).filter((s) => s.at_ms > oldest);
      }
      if (live) bump((n) => n + 1);
    }, () => {});
    tick();
    const id = setInterval(tick, POLL_MS);
    return () => { live = false; clearInterval(id); };
  }, []);
  return history.plugins;
}

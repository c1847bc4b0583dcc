// @projector/guest: projector plugins in TypeScript or JavaScript.
//
// A plugin is a function from its settings to a `Projection`: the same
// shape as the Rust SDK's trait (configure, info, keys, apply, render,
// snapshot, migrate, compare). `definePlugin` turns it into the exports of
// the WIT world `plugin` (guest-sdk/wit/plugin.wit), hiding its packed
// encodings: events arrive typed, states are JSON values (stored as UTF-8
// JSON), results and errors are plain values and exceptions.
//
//     import { definePlugin, badInput } from '@projector/guest';
//     export const { projection, comparison } = definePlugin((settings) => ({ ... }));
//
// A plugin that declares its settings (`definePlugin(configure, { settings:
// ['max_unread', 'source'] })`) gets them typed, and a setting it does not
// declare is refused before `configure` runs, as the Rust SDK refuses it.
//
// Versions, duplicates, stale events and population are the host's job,
// done before `apply` is called: a plugin sees only the events it must fold.

import { log as hostLog } from 'projector:plugin/host@0.2.1';
import { fetch as hostFetch } from 'projector:plugin/enrichment@0.2.1';

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type ErrorKind = 'bad-input' | 'transient' | 'internal';

/** What a plugin throws when it cannot do what was asked. */
export class PluginError extends Error {
  readonly kind: ErrorKind;
  constructor(kind: ErrorKind, message: string) {
    super(message);
    this.kind = kind;
  }
  /** The WIT `plugin-error` this error crosses to the host as. */
  get payload(): { kind: ErrorKind; message: string } {
    return { kind: this.kind, message: this.message };
  }
}

/** The event or answer is not what the plugin understands (dead-lettered). */
export const badInput = (message: string): PluginError => new PluginError('bad-input', message);
/** A dependency failed; the event is retried later. */
export const transient = (message: string): PluginError => new PluginError('transient', message);
/** The plugin's own invariant broke. */
export const internal = (message: string): PluginError => new PluginError('internal', message);

/** One decoded event, whatever format it arrived in. */
export interface Event {
  readonly id: string;
  /** Business type, e.g. `MessageSent`. */
  readonly type: string;
  /** Producing service or table: one entry of a view's version vector. */
  readonly source: string;
  /** Entity key the event was partitioned by. */
  readonly key: string;
  /** Monotonic per source. */
  readonly version: bigint;
  /** Event time, ms since the Unix epoch. */
  readonly timeMs: number;
  /** The payload as JSON text. */
  readonly payloadText: string;
  /** The payload parsed, once per event however many keys use it. */
  payload<T = Json>(): T;
}

/** Type of the event `projector recollect` hands to `apply`, once per key. */
export const RECOLLECT = 'projector.recollect';

export interface Info {
  name: string;
  /** The plugin's own version label (the host identifies code by hash). */
  version: string;
  /** `eager`: events create views; `lazy`: views come from the source of truth. */
  population: 'lazy' | 'eager';
  /** What an event older than the view does: `invalidate` it or be `ignore`d. */
  stalePolicy: 'invalidate' | 'ignore';
  /** Whether `render` reads `nowMs` (false: a rendered answer is kept until the view changes). */
  renderUsesTime: boolean;
}

/**
 * What one event did to a key's state (changed in place by `apply`). Any
 * other answer is a type error, and a dead letter at run time.
 */
export type Change = 'updated' | 'unchanged' | 'delete' | 'invalidate';
const CHANGES = { updated: true, unchanged: true, delete: true, invalidate: true } satisfies Record<Change, true>;

export interface Difference {
  /** Where the answers differ, e.g. `/conversations/3/id`. */
  path: string;
  /** Short machine-friendly reason, used as a metric label. */
  reason: string;
  projection?: string;
  source?: string;
}

/** A projection over states of type `S` (any JSON value). */
export interface Projection<S> {
  info(): Info;
  /** A key's state before its first event. */
  empty(): S;
  /** The view keys an event touches; empty when it touches none. */
  keys(event: Event): string[];
  /** Apply one event to a key's state, in place. */
  apply(key: string, state: S, event: Event): Change;
  /** The JSON a reader receives, at read time `nowMs`. */
  render(key: string, state: S, nowMs: number): Json;
  /** A state, and the source versions it reflects, from the source of truth's answer. */
  snapshot?(key: string, answer: Json): { state: S; versions: Array<[string, number | bigint]> };
  /** Convert a state written by an earlier version (default: keep it as it is; null: cannot). */
  migrate?(key: string, old: Json, fromVersion: string): S | null;
  /** Compare two answers (default: structural JSON equality, see `jsonDifferences`). */
  compare?(key: string, projection: Json, source: Json): Difference[];
}

// ---------------------------------------------------------------- host imports

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;

/** Write a line to the host's log for this plugin. */
export function log(level: (typeof LEVELS)[number], message: string): void {
  hostLog(level, message);
}

export interface Fetched {
  status: number;
  body: Uint8Array;
  /** Served from the host's cache past its time to live. */
  stale: boolean;
  json<T = Json>(): T;
}

/**
 * Read `path` of the allow-listed `service` through the host (its cache,
 * deadline and size bound). A failure throws a transient `PluginError`
 * (the event is retried), or a bad-input one for a service not allowed.
 */
export function fetch(service: string, path: string, options: { fresh?: boolean } = {}): Fetched {
  let got: { status: number; body: Uint8Array; stale: boolean };
  try {
    got = hostFetch(service, path, options.fresh === true);
  } catch (e) {
    const err = (e as { payload?: { tag: string; val?: unknown } }).payload;
    if (err && err.tag === 'not-allowed') throw badInput(`fetch ${service}${path}: not allowed: ${String(err.val)}`);
    throw transient(`fetch ${service}${path}: ${err ? `${err.tag}${err.val === undefined ? '' : ` ${String(err.val)}`}` : String(e)}`);
  }
  return {
    ...got,
    json<T>(): T {
      try {
        return JSON.parse(decoder.decode(got.body)) as T;
      } catch (e) {
        throw badInput(`fetch ${service}${path}: not JSON: ${(e as Error).message}`);
      }
    },
  };
}

// ---------------------------------------------------------------- JSON differences

/** Structural differences between two JSON values, with JSON-pointer-like paths. */
export function jsonDifferences(projection: Json, source: Json): Difference[] {
  const out: Difference[] = [];
  diffInto('', projection, source, out);
  return out;
}

const isObject = (v: Json): v is { [key: string]: Json } => typeof v === 'object' && v !== null && !Array.isArray(v);

function diffInto(path: string, a: Json, b: Json, out: Difference[]): void {
  if (isObject(a) && isObject(b)) {
    for (const k of Object.keys(a)) {
      if (k in b) diffInto(`${path}/${k}`, a[k], b[k], out);
      else out.push({ path: `${path}/${k}`, reason: 'only-in-projection', projection: JSON.stringify(a[k]) });
    }
    for (const k of Object.keys(b)) {
      if (!(k in a)) out.push({ path: `${path}/${k}`, reason: 'only-in-source', source: JSON.stringify(b[k]) });
    }
  } else if (Array.isArray(a) && Array.isArray(b)) {
    for (let i = 0; i < Math.max(a.length, b.length); i += 1) {
      if (i < a.length && i < b.length) diffInto(`${path}/${i}`, a[i], b[i], out);
      else if (i < a.length) out.push({ path: `${path}/${i}`, reason: 'only-in-projection', projection: JSON.stringify(a[i]) });
      else out.push({ path: `${path}/${i}`, reason: 'only-in-source', source: JSON.stringify(b[i]) });
    }
  } else if (JSON.stringify(a) !== JSON.stringify(b)) {
    out.push({ path: path || '/', reason: 'value', projection: JSON.stringify(a), source: JSON.stringify(b) });
  }
}

// ---------------------------------------------------------------- settings

/** The settings a plugin declared, as its `configure` gets them: each one optional. */
export type Settings<K extends string> = { readonly [name in K]?: Json };

/** What a plugin declares besides its `configure`. */
export interface PluginOptions<K extends string> {
  /**
   * The names of the settings the plugin accepts. A setting not among them
   * is refused before `configure` runs, as bad input naming it and the
   * declared one it is closest to (`unknown setting "max_unreed" (did you
   * mean "max_unread"?); the plugin accepts max_unread, source`), so a
   * misspelled setting fails the deploy instead of being ignored. Without
   * it any settings pass; `[]` accepts none.
   */
  readonly settings: readonly K[];
}

/** Refuse `settings` unless it is an object naming only `declared` ones (the Rust SDK's `settings::check`). */
function checkSettings(declared: readonly string[], settings: Json): void {
  if (typeof settings !== 'object' || settings === null || Array.isArray(settings)) {
    throw badInput(`settings: expected a JSON object, got ${JSON.stringify(settings)}`);
  }
  const unknown = Object.keys(settings)
    .filter((name) => !declared.includes(name))
    .map((name) => {
      const meant = closest(name, declared);
      return meant === undefined ? JSON.stringify(name) : `${JSON.stringify(name)} (did you mean ${JSON.stringify(meant)}?)`;
    });
  if (unknown.length === 0) return;
  const accepted = declared.length ? declared.join(', ') : 'no settings';
  throw badInput(`unknown setting${unknown.length === 1 ? '' : 's'} ${unknown.join(', ')}; the plugin accepts ${accepted}`);
}

/** The declared name nearest `name`, if near enough to be a typo: one edit in three characters (at least one), ignoring case. */
function closest(name: string, declared: readonly string[]): string | undefined {
  const lower = name.toLowerCase();
  const allowed = Math.max(1, Math.floor(Array.from(lower).length / 3));
  let best: { name: string; edits: number } | undefined;
  for (const d of declared) {
    const edits = distance(lower, d.toLowerCase());
    if (edits <= allowed && (best === undefined || edits < best.edits)) best = { name: d, edits };
  }
  return best?.name;
}

/** Edits (insert, delete, substitute, swap two neighbours) from `x` to `y`. */
function distance(x: string, y: string): number {
  const a = Array.from(x);
  const b = Array.from(y);
  let before: number[] = new Array<number>(b.length + 1).fill(0);
  let last: number[] = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i += 1) {
    const row: number[] = new Array<number>(b.length + 1).fill(i);
    for (let j = 1; j <= b.length; j += 1) {
      row[j] = Math.min(last[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1), last[j] + 1, row[j - 1] + 1);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j], before[j - 2] + 1);
    }
    before = last;
    last = row;
  }
  return last[b.length];
}

// ---------------------------------------------------------------- the WIT exports

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Span { start: number; len: number }
interface WitEvent { id: string; eventType: string; source: string; key: string; version: bigint; timeMs: bigint; payload: string }
interface PackedEvent { id: Span; eventType: Span; source: Span; key: Span; version: bigint; timeMs: bigint; payload: Span }
interface KeyRun { key: Span; state?: Span; events: Span }
interface PackedRuns { keys: string; states: Uint8Array; events: Uint32Array; runs: KeyRun[] }
type Outcome = { tag: 'put'; val: Uint8Array } | { tag: 'delete' } | { tag: 'invalidate' } | { tag: 'skip' };
interface ApplyResult { outcome: Outcome; applied: number; error?: { kind: ErrorKind; message: string } }

class SdkEvent implements Event {
  private parsed: { value: unknown } | undefined;
  constructor(
    readonly id: string,
    readonly type: string,
    readonly source: string,
    readonly key: string,
    readonly version: bigint,
    readonly timeMs: number,
    readonly payloadText: string,
  ) {}
  payload<T>(): T {
    if (!this.parsed) {
      try {
        this.parsed = { value: JSON.parse(this.payloadText) };
      } catch (e) {
        throw badInput(`event ${this.id}: payload is not JSON: ${(e as Error).message}`);
      }
    }
    return this.parsed.value as T;
  }
}

/** Cuts spans of UTF-8 bytes out of a text; ASCII text (the usual case) needs no re-encoding. */
class Spans {
  private readonly bytes: Uint8Array | undefined;
  constructor(private readonly text: string) {
    // eslint-disable-next-line no-control-regex
    this.bytes = /^[\x00-\x7f]*$/.test(text) ? undefined : encoder.encode(text);
  }
  get(span: Span): string {
    const end = span.start + span.len;
    if (!this.bytes) {
      if (end > this.text.length) throw badInput('a span lies outside its text');
      return this.text.slice(span.start, end);
    }
    if (end > this.bytes.length) throw badInput('a span lies outside its text');
    return decoder.decode(this.bytes.subarray(span.start, end));
  }
}

function asPluginError(e: unknown): PluginError {
  if (e instanceof PluginError) return e;
  return internal(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
}

function describe(value: unknown): string {
  if (typeof value === 'string') return `'${value}'`;
  if (value === undefined) return 'undefined';
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function decodeState<S>(bytes: Uint8Array): S {
  try {
    return JSON.parse(decoder.decode(bytes)) as S;
  } catch (e) {
    throw internal(`decode state: ${(e as Error).message}`);
  }
}

const encodeState = (state: unknown): Uint8Array => encoder.encode(JSON.stringify(state));

/** Fold a run of events into one outcome, as the Rust SDK's `apply_run`. */
function applyRun<S>(p: Projection<S>, key: string, state: Uint8Array | undefined, events: Event[]): ApplyResult {
  let current: S | undefined;
  try {
    current = state === undefined ? undefined : decodeState<S>(state);
  } catch (e) {
    return { outcome: { tag: 'skip' }, applied: 0, error: asPluginError(e).payload };
  }
  const existed = current !== undefined;
  let dirty = false;
  let applied = 0;
  let error: ApplyResult['error'];
  for (const event of events) {
    if (current === undefined) current = p.empty();
    let change: Change;
    try {
      change = p.apply(key, current, event);
    } catch (e) {
      error = asPluginError(e).payload;
      break;
    }
    if (typeof change !== 'string' || !Object.hasOwn(CHANGES, change)) {
      // Plain JavaScript, or a cast, got past the type: the event is dead-lettered, not taken as no change.
      const known = Object.keys(CHANGES).map((c) => `'${c}'`).join(', ');
      error = internal(`apply of ${key} returned ${describe(change)}, not one of ${known}`).payload;
      break;
    }
    if (change === 'updated') dirty = true;
    else if (change === 'delete') { current = undefined; dirty = true; } else if (change === 'invalidate') return { outcome: { tag: 'invalidate' }, applied: applied + 1 };
    applied += 1;
  }
  // Creating a view is a change even when the events left the empty state as it was.
  dirty = dirty || (!existed && applied > 0);
  let outcome: Outcome;
  if (!dirty) outcome = { tag: 'skip' };
  else if (current === undefined) outcome = existed ? { tag: 'delete' } : { tag: 'skip' };
  else outcome = { tag: 'put', val: encodeState(current) };
  return { outcome, applied, error };
}

function keysOf<S>(p: Projection<S>, events: Event[]) {
  return events.map((e) => {
    try {
      return { tag: 'ok' as const, val: p.keys(e) };
    } catch (err) {
      return { tag: 'err' as const, val: asPluginError(err).payload };
    }
  });
}

const fromWit = (e: WitEvent): Event => new SdkEvent(e.id, e.eventType, e.source, e.key, e.version, Number(e.timeMs), e.payload);

/** The WIT exports of a plugin whose states are `S`. */
export type PluginExports<S> = ReturnType<typeof exportsOf<S>>;

/**
 * The exports of the WIT world `plugin` for the projection `configure`
 * builds from its settings. Export both from the plugin's entry module:
 * `export const { projection, comparison } = definePlugin(...)`. With
 * `options.settings`, `configure` gets only the settings declared there
 * (see `PluginOptions`).
 */
export function definePlugin<S>(configure: (settings: Json) => Projection<S>): PluginExports<S>;
export function definePlugin<S, const K extends string>(
  configure: (settings: Settings<K>) => Projection<S>,
  options: PluginOptions<K>,
): PluginExports<S>;
export function definePlugin<S>(configure: (settings: never) => Projection<S>, options?: PluginOptions<string>): PluginExports<S> {
  // Either overload's `configure` takes what `exportsOf` hands it: any
  // settings, or only declared ones once checked.
  return exportsOf(configure as (settings: Json) => Projection<S>, options?.settings);
}

function exportsOf<S>(configure: (settings: Json) => Projection<S>, declared: readonly string[] | undefined) {
  let plugin: Projection<S> | undefined;
  const the = (): Projection<S> => {
    if (!plugin) throw internal('called before configure');
    return plugin;
  };
  // Errors a plugin throws cross as the WIT `plugin-error` (`payload`).
  const guard = <T>(f: () => T): T => {
    try {
      return f();
    } catch (e) {
      throw asPluginError(e);
    }
  };

  class Batch {
    private readonly events: Event[];
    constructor(packed: { text: string; events: PackedEvent[] }) {
      const text = new Spans(packed.text);
      this.events = packed.events.map((p) => new SdkEvent(
        text.get(p.id), text.get(p.eventType), text.get(p.source), text.get(p.key),
        p.version, Number(p.timeMs), text.get(p.payload),
      ));
    }
    keys(start: number, count: number) {
      return keysOf(the(), this.events.slice(start, start + count));
    }
    apply(runs: PackedRuns): ApplyResult[] {
      const p = the();
      const keys = new Spans(runs.keys);
      return runs.runs.map((r) => {
        const end = r.events.start + r.events.len;
        if (end > runs.events.length || (r.state && r.state.start + r.state.len > runs.states.length)) {
          return { outcome: { tag: 'skip' }, applied: 0, error: badInput('a run lies outside its batch').payload };
        }
        const events: Event[] = [];
        for (let i = r.events.start; i < end; i += 1) {
          const e = this.events[runs.events[i]];
          if (!e) return { outcome: { tag: 'skip' }, applied: 0, error: badInput('an event index lies outside the batch').payload };
          events.push(e);
        }
        const state = r.state ? runs.states.subarray(r.state.start, r.state.start + r.state.len) : undefined;
        return applyRun(p, keys.get(r.key), state, events);
      });
    }
  }

  const projection = {
    configure(settings: string) {
      return guard(() => {
        let parsed: Json;
        try {
          parsed = JSON.parse(settings) as Json;
        } catch (e) {
          throw badInput(`settings are not JSON: ${(e as Error).message}`);
        }
        if (declared) checkSettings(declared, parsed);
        plugin = configure(parsed);
        return plugin.info();
      });
    },
    keys(events: WitEvent[]) {
      return keysOf(the(), events.map(fromWit));
    },
    apply(key: string, state: Uint8Array | undefined, events: WitEvent[]): ApplyResult {
      return applyRun(the(), key, state, events.map(fromWit));
    },
    Batch,
    render(key: string, state: Uint8Array, nowMs: bigint): string {
      return guard(() => JSON.stringify(the().render(key, decodeState<S>(state), Number(nowMs))));
    },
    fromSnapshot(key: string, answer: string) {
      return guard(() => {
        const p = the();
        if (!p.snapshot) throw badInput('this plugin builds no view from the source of truth');
        let parsed: Json;
        try {
          parsed = JSON.parse(answer) as Json;
        } catch (e) {
          throw badInput(`the answer for ${key} is not JSON: ${(e as Error).message}`);
        }
        const { state, versions } = p.snapshot(key, parsed);
        return { state: encodeState(state), versions: versions.map(([s, v]) => [s, BigInt(v)]) };
      });
    },
    migrate(key: string, state: Uint8Array, fromVersion: string): Uint8Array | undefined {
      return guard(() => {
        const p = the();
        let old: Json;
        try {
          old = decodeState<Json>(state);
        } catch {
          return undefined;
        }
        if (!p.migrate) return encodeState(old);
        const next = p.migrate(key, old, fromVersion);
        return next === null ? undefined : encodeState(next);
      });
    },
  };

  const comparison = {
    compare(key: string, projectionAnswer: string, sourceAnswer: string) {
      let a: Json;
      let b: Json;
      try {
        a = JSON.parse(projectionAnswer) as Json;
        b = JSON.parse(sourceAnswer) as Json;
      } catch (e) {
        return { tag: 'different', val: [{ path: '/', reason: 'unreadable', projection: (e as Error).message }] };
      }
      const p = the();
      const differences = p.compare ? p.compare(key, a, b) : jsonDifferences(a, b);
      return differences.length ? { tag: 'different', val: differences } : { tag: 'equal' };
    },
  };

  return { projection, comparison };
}

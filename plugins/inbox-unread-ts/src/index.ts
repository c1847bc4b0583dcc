// inbox-unread in TypeScript: a user's unread conversations on a site
// (seed 000), the same views as the Rust plugin in plugins/inbox-unread.
//
// View key: `{user_id}:{site_id}`. The view holds that user's unread
// conversation ids on that site, newest first, bounded (`max_unread`,
// default 1000). Versions per key with the invalidate policy; lazy
// population from the legacy endpoint's answer.
//
// Events (payload fields; every event's time is its update time):
// - `MessageSent {site_id, conversation_id, sender_id, participants}`
// - `ConversationRead {site_id, conversation_id, user_id}`
// - `ConversationArchived` / `ConversationUnarchived` / `ConversationDeleted
//   {site_id, conversation_id, participants}`
// - `ParticipantAdded {site_id, conversation_id, user_id, unread?}` and
//   `ParticipantRemoved {site_id, conversation_id, user_id}`

import { badInput, definePlugin, type Difference, type Event, type Json, type Projection, type Settings } from '@projector/guest';

interface Entry {
  id: string;
  /** Time of the last message, ms since the epoch. */
  updated: number;
  /** Archived conversations stay tracked but are not shown. */
  archived: boolean;
}

/** A view's state: unread entries, newest first. */
interface Unread {
  entries: Entry[];
}

interface Message { site_id: string; conversation_id: string; sender_id: string; participants: string[] }
interface ForUser { site_id: string; conversation_id: string; user_id: string; unread: boolean }
interface ForConversation { site_id: string; conversation_id: string; participants: string[] }

// Payloads are checked as the Rust plugin's serde types check them: a
// missing or mistyped field is bad input (a dead letter).
type Obj = { [key: string]: Json };

function object(e: Event): Obj {
  const p = e.payload<Json>();
  if (typeof p !== 'object' || p === null || Array.isArray(p)) throw badInput(`${e.type}: the payload is not an object`);
  return p;
}

function str(e: Event, p: Obj, field: string): string {
  const v = p[field];
  if (typeof v !== 'string') throw badInput(`${e.type}: ${field}: expected a string`);
  return v;
}

function strs(e: Event, p: Obj, field: string): string[] {
  const v = p[field];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw badInput(`${e.type}: ${field}: expected a list of strings`);
  return v as string[];
}

const message = (e: Event): Message => {
  const p = object(e);
  return { site_id: str(e, p, 'site_id'), conversation_id: str(e, p, 'conversation_id'), sender_id: str(e, p, 'sender_id'), participants: strs(e, p, 'participants') };
};

const forUser = (e: Event): ForUser => {
  const p = object(e);
  const unread = p.unread ?? false;
  if (typeof unread !== 'boolean') throw badInput(`${e.type}: unread: expected a boolean`);
  return { site_id: str(e, p, 'site_id'), conversation_id: str(e, p, 'conversation_id'), user_id: str(e, p, 'user_id'), unread };
};

const forConversation = (e: Event): ForConversation => {
  const p = object(e);
  return { site_id: str(e, p, 'site_id'), conversation_id: str(e, p, 'conversation_id'), participants: strs(e, p, 'participants') };
};

/** The view key for a user on a site. */
function viewKey(user: string, site: string): string {
  if (!user || !site || user.includes(':') || site.includes(':')) {
    throw badInput(`bad user or site id: ${JSON.stringify(user)}, ${JSON.stringify(site)}`);
  }
  return `${user}:${site}`;
}

const userOf = (key: string): string => {
  const i = key.indexOf(':');
  return i < 0 ? key : key.slice(0, i);
};

const position = (s: Unread, id: string): number => s.entries.findIndex((e) => e.id === id);

function remove(s: Unread, id: string): boolean {
  const i = position(s, id);
  if (i < 0) return false;
  s.entries.splice(i, 1);
  return true;
}

/** Mark `id` unread at `updated`, keeping newest first and the bound. */
function touch(s: Unread, id: string, updated: number, max: number): void {
  const i = position(s, id);
  let at = updated;
  if (i >= 0) at = Math.max(s.entries.splice(i, 1)[0].updated, updated);
  // Before the first entry that is older, or as old with a smaller id.
  let j = s.entries.findIndex((e) => e.updated < at || (e.updated === at && e.id < id));
  if (j < 0) j = s.entries.length;
  s.entries.splice(j, 0, { id, updated: at, archived: false });
  if (s.entries.length > max) s.entries.length = max;
}

function setArchived(s: Unread, id: string, archived: boolean): boolean {
  const i = position(s, id);
  if (i < 0 || s.entries[i].archived === archived) return false;
  s.entries[i].archived = archived;
  return true;
}

interface Shown { id: string; last_message_at: number }

function shownOf(answer: Json): Shown[] {
  const list = typeof answer === 'object' && answer !== null && !Array.isArray(answer) ? answer.conversations : undefined;
  if (list === undefined) throw new Error('no `conversations` field');
  if (!Array.isArray(list)) throw new Error('`conversations` is not a list');
  return list.map((c) => {
    if (typeof c !== 'object' || c === null || Array.isArray(c) || typeof c.id !== 'string' || typeof c.last_message_at !== 'number') {
      throw new Error('a conversation needs a string `id` and a number `last_message_at`');
    }
    return { id: c.id, last_message_at: c.last_message_at };
  });
}

const diff = (path: string, reason: string, projection?: number, source?: number): Difference => ({
  path, reason, projection: projection?.toString(), source: source?.toString(),
});

/** The settings it accepts: any other is refused at deploy. */
const SETTINGS = ['max_unread', 'source'] as const;

function configure(s: Settings<(typeof SETTINGS)[number]>): Projection<Unread> {
  const maxUnread = s.max_unread ?? 1000;
  if (typeof maxUnread !== 'number' || !Number.isInteger(maxUnread) || maxUnread < 0) {
    throw badInput('inbox-unread settings: max_unread must be a whole number');
  }
  if (maxUnread === 0) throw badInput('inbox-unread settings: max_unread must be at least 1');
  const source = s.source ?? 'inbox';
  if (typeof source !== 'string') throw badInput('inbox-unread settings: source must be a string');

  return {
    info: () => ({
      name: 'inbox-unread', version: '0.1.0', population: 'lazy', stalePolicy: 'invalidate',
      // Unread conversations do not age: a rendered inbox stays right until the view changes.
      renderUsesTime: false,
    }),

    empty: () => ({ entries: [] }),

    keys(e) {
      switch (e.type) {
        case 'MessageSent': {
          const m = message(e);
          const keys = [viewKey(m.sender_id, m.site_id)];
          for (const p of m.participants) if (p !== m.sender_id) keys.push(viewKey(p, m.site_id));
          // Consecutive duplicates only, as Rust's `Vec::dedup`.
          return keys.filter((k, i) => i === 0 || k !== keys[i - 1]);
        }
        case 'ConversationRead': case 'ParticipantAdded': case 'ParticipantRemoved': {
          const u = forUser(e);
          return [viewKey(u.user_id, u.site_id)];
        }
        case 'ConversationArchived': case 'ConversationUnarchived': case 'ConversationDeleted': {
          const c = forConversation(e);
          return c.participants.map((p) => viewKey(p, c.site_id));
        }
        default:
          return [];
      }
    },

    apply(key, state, e) {
      let changed = false;
      switch (e.type) {
        case 'MessageSent': {
          const m = message(e);
          if (userOf(key) === m.sender_id) changed = remove(state, m.conversation_id);
          else { touch(state, m.conversation_id, e.timeMs, maxUnread); changed = true; }
          break;
        }
        case 'ConversationRead': case 'ParticipantRemoved':
          changed = remove(state, forUser(e).conversation_id);
          break;
        case 'ParticipantAdded': {
          const u = forUser(e);
          if (u.unread) touch(state, u.conversation_id, e.timeMs, maxUnread);
          changed = u.unread;
          break;
        }
        case 'ConversationArchived':
          changed = setArchived(state, forConversation(e).conversation_id, true);
          break;
        case 'ConversationUnarchived':
          changed = setArchived(state, forConversation(e).conversation_id, false);
          break;
        case 'ConversationDeleted':
          changed = remove(state, forConversation(e).conversation_id);
          break;
        default:
      }
      return changed ? 'updated' : 'unchanged';
    },

    render(_key, state) {
      const shown = state.entries.filter((e) => !e.archived).map((e) => ({ id: e.id, last_message_at: e.updated }));
      return { count: shown.length, conversations: shown };
    },

    snapshot(key, answer) {
      let conversations: Shown[];
      try {
        conversations = shownOf(answer);
      } catch (e) {
        throw badInput(`legacy answer for ${key}: ${(e as Error).message}`);
      }
      const state: Unread = { entries: [] };
      for (const c of conversations) touch(state, c.id, c.last_message_at, maxUnread);
      const a = answer as Obj;
      const versions: Array<[string, number]> = [];
      if (a.versions && typeof a.versions === 'object' && !Array.isArray(a.versions)) {
        for (const name of Object.keys(a.versions).sort()) versions.push([name, Number(a.versions[name])]);
      }
      if (typeof a.version === 'number') versions.push([source, a.version]);
      return { state, versions };
    },

    // Equal when both hold the same conversations with the same times, in
    // newest-first order; ids sharing a timestamp may come in any order.
    compare(_key, projection, src) {
      let a: Shown[];
      let b: Shown[];
      try {
        a = shownOf(projection);
      } catch (e) {
        let other: string | undefined;
        try { shownOf(src); } catch (e2) { other = (e2 as Error).message; }
        return [{ path: '/', reason: 'unreadable', projection: (e as Error).message, source: other }];
      }
      try {
        b = shownOf(src);
      } catch (e) {
        return [{ path: '/', reason: 'unreadable', source: (e as Error).message }];
      }
      const byId = (list: Shown[]) => new Map(list.map((s) => [s.id, s.last_message_at]));
      const [ma, mb] = [byId(a), byId(b)];
      const diffs: Difference[] = [];
      for (const id of [...ma.keys()].sort()) {
        const ta = ma.get(id) as number;
        const tb = mb.get(id);
        if (tb === undefined) diffs.push(diff(`/conversations/${id}`, 'extra', ta));
        else if (tb !== ta) diffs.push(diff(`/conversations/${id}/last_message_at`, 'timestamp', ta, tb));
      }
      for (const id of [...mb.keys()].sort()) {
        if (!ma.has(id)) diffs.push(diff(`/conversations/${id}`, 'missing', undefined, mb.get(id)));
      }
      if (diffs.length === 0) {
        const order = (list: Shown[]) => list.map((s) => s.last_message_at);
        const sortedDesc = (v: number[]) => v.every((x, i) => i === 0 || v[i - 1] >= x);
        if (!sortedDesc(order(a)) || !sortedDesc(order(b))) {
          diffs.push({ path: '/conversations', reason: 'order', projection: `[${order(a).join(', ')}]`, source: `[${order(b).join(', ')}]` });
        }
      }
      return diffs;
    },
  };
}

export const { projection, comparison } = definePlugin(configure, { settings: SETTINGS });

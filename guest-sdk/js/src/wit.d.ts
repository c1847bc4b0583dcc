// The host's imports, as componentize-js binds them (guest-sdk/wit/plugin.wit).
declare module 'projector:plugin/host@0.2.1' {
  export function log(level: 'trace' | 'debug' | 'info' | 'warn' | 'error', message: string): void;
}

declare module 'projector:plugin/enrichment@0.2.1' {
  /** Throws `{ payload: fetch-error }` when there is no answer. */
  export function fetch(service: string, path: string, fresh: boolean): { status: number; body: Uint8Array; stale: boolean };
}

// What the JavaScript engine in the component provides beyond ES2022.
declare class TextEncoder {
  encode(input?: string): Uint8Array;
}
declare class TextDecoder {
  decode(input?: Uint8Array): string;
}

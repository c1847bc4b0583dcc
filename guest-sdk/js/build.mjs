#!/usr/bin/env node
// Build a projector plugin written in TypeScript or JavaScript into a
// WebAssembly component of the world `plugin` (../wit/plugin.wit):
//
//   projector-js-build ENTRY.ts OUT.wasm
//
// esbuild bundles the entry and the SDK into one module (the WIT imports
// stay imports); componentize-js embeds it in its JavaScript engine. No
// ahead-of-time compilation (it would fetch a native tool on first use).
import { build } from 'esbuild';
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const [entry, out] = process.argv.slice(2);
if (!entry || !out) {
  console.error('usage: projector-js-build ENTRY.ts OUT.wasm');
  process.exit(2);
}
const started = Date.now();
const dir = await mkdtemp(join(tmpdir(), 'projector-js-'));
try {
  const bundle = join(dir, 'plugin.js');
  await build({
    entryPoints: [entry],
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    mainFields: ['module', 'main'],
    target: 'es2022',
    outfile: bundle,
    external: ['projector:*'],
    logLevel: 'warning',
  });
  const { component } = await componentize({
    sourcePath: bundle,
    witPath: fileURLToPath(new URL('../wit', import.meta.url)),
    worldName: 'plugin',
    // Nothing of WASI the plugin world does not need: the host grants none.
    disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
  });
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, component);
  const mib = (component.length / (1 << 20)).toFixed(1);
  console.error(`built ${out} (${mib} MiB) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} finally {
  await rm(dir, { recursive: true, force: true });
}

#!/usr/bin/env node
// Build a projector plugin written in TypeScript or JavaScript into a
// WebAssembly component of the world `plugin` (../wit/plugin.wit):
//
//   projector-js-build ENTRY.ts OUT.wasm
//
// The TypeScript compiler type-checks the project first (what `tsc
// --noEmit` says of the tsconfig.json nearest the entry; strict settings
// when there is none and the entry is TypeScript): a type error fails the
// build with tsc's messages. esbuild bundles the entry and the SDK into one
// module (the WIT imports stay imports); componentize-js embeds it in its
// JavaScript engine. No ahead-of-time compilation (it would fetch a native
// tool on first use).
import { build } from 'esbuild';
import ts from 'typescript';
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const [entry, out] = process.argv.slice(2);
if (!entry || !out) {
  console.error('usage: projector-js-build ENTRY.ts OUT.wasm');
  process.exit(2);
}
const started = Date.now();
typeCheck(resolve(entry));
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

/** Exit 1 with tsc's messages when the project does not type-check. */
function typeCheck(entry) {
  const config = ts.findConfigFile(dirname(entry), ts.sys.fileExists);
  let options;
  let files;
  if (config) {
    const parsed = ts.getParsedCommandLineOfConfigFile(config, { noEmit: true }, {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => fail([d]),
    });
    if (parsed.errors.length) fail(parsed.errors);
    options = parsed.options;
    files = parsed.fileNames.includes(entry) ? parsed.fileNames : [...parsed.fileNames, entry];
  } else if (/\.[cm]?tsx?$/.test(entry)) {
    options = {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ES2022,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      lib: ['lib.es2022.d.ts'],
      types: [],
    };
    files = [entry, fileURLToPath(new URL('src/wit.d.ts', import.meta.url))];
  } else {
    return; // JavaScript with no tsconfig.json: nothing to check
  }
  const diagnostics = ts.getPreEmitDiagnostics(ts.createProgram(files, options));
  if (diagnostics.length) fail(diagnostics);
}

function fail(diagnostics) {
  const host = {
    getCanonicalFileName: (f) => f,
    getCurrentDirectory: ts.sys.getCurrentDirectory,
    getNewLine: () => ts.sys.newLine,
  };
  console.error(ts.formatDiagnostics(diagnostics, host).trimEnd());
  const errors = diagnostics.filter((d) => d.category === ts.DiagnosticCategory.Error).length;
  console.error(`${entry}: ${errors} type error${errors === 1 ? '' : 's'}: not built`);
  process.exit(1);
}

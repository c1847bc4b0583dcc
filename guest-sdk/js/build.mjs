#!/usr/bin/env node
// Build a projector plugin written in TypeScript or JavaScript into a
// WebAssembly component of the world `plugin` (../wit/plugin.wit):
//
//   projector-js-build [--aot] ENTRY.ts OUT.wasm
//
// The TypeScript compiler type-checks the project first (what `tsc
// --noEmit` says of the tsconfig.json nearest the entry; strict settings
// when there is none and the entry is TypeScript): a type error fails the
// build with tsc's messages. esbuild bundles the entry and the SDK into one
// module (the WIT imports stay imports); componentize-js embeds it in its
// JavaScript engine. With `--aot` the plugin's functions are compiled ahead
// of time by weval (a partial evaluator of the engine's interpreter): a
// faster and larger component. weval is the binary `$WEVAL` names, else
// `weval` on the PATH (`cargo install weval --version 0.5.0 --locked`); it
// is never downloaded.
import { build } from 'esbuild';
import ts from 'typescript';
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, mkdtemp, writeFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const aot = args[0] === '--aot';
const [entry, out] = aot ? args.slice(1) : args;
if (!entry || !out || entry.startsWith('-')) {
  console.error('usage: projector-js-build [--aot] ENTRY.ts OUT.wasm');
  process.exit(2);
}
const weval = aot ? wevalBinary() : undefined;
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
    ...(weval ? { enableAot: true, wevalBin: weval } : {}),
  });
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, component);
  const mib = (component.length / (1 << 20)).toFixed(1);
  const how = weval ? ', compiled ahead of time' : '';
  console.error(`built ${out} (${mib} MiB${how}) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} finally {
  await rm(dir, { recursive: true, force: true });
}

/**
 * The weval binary `--aot` runs: `$WEVAL`, else `weval` on the PATH. The
 * engine's inline caches it uses were made by weval 0.5.0.
 */
function wevalBinary() {
  const named = process.env.WEVAL;
  const found = named
    ? (existsSync(named) ? named : undefined)
    : process.env.PATH?.split(delimiter).map((d) => join(d, 'weval')).find((f) => existsSync(f));
  if (found) return found;
  console.error(
    `${named ? `WEVAL=${named}: no such file` : 'weval is not on the PATH'}: --aot needs weval 0.5.0 ` +
      '(cargo install weval --version 0.5.0 --locked, then put it on the PATH or name it in WEVAL)',
  );
  process.exit(2);
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

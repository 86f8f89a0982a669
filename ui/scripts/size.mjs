// Measures the JavaScript of a first visit, gzipped: the entry chunk and its static imports,
// and that plus the overview page (the first page after logging in) with everything it
// imports. Fails the build when the first visit is over the budget.
import { readFileSync, readdirSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const BUDGET_KB = 150;
const dist = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'backend', 'static');
const manifest = JSON.parse(readFileSync(join(dist, '.vite', 'manifest.json'), 'utf8'));
const gz = (file) => gzipSync(readFileSync(join(dist, file)), { level: 9 }).length;

function closure(key, seen = new Set()) {
  const chunk = manifest[key];
  if (!chunk || seen.has(chunk.file)) return seen;
  seen.add(chunk.file);
  for (const dep of chunk.imports ?? []) closure(dep, seen);
  return seen;
}
const jsBytes = (files) => [...files].filter((f) => f.endsWith('.js')).reduce((n, f) => n + gz(f), 0);

const entryKey = Object.keys(manifest).find((k) => manifest[k].isEntry);
const entry = closure(entryKey);
const firstPage = closure('src/pages/Overview.svelte', new Set(entry));
const all = readdirSync(join(dist, 'assets')).filter((f) => f.endsWith('.js'));
const kb = (n) => (n / 1024).toFixed(1);

const entryBytes = jsBytes(entry);
const firstBytes = jsBytes(firstPage);
console.log(`initial JS (entry): ${kb(entryBytes)} kB gzipped in ${entry.size} file(s)`);
console.log(`first visit (entry + overview page + charts): ${kb(firstBytes)} kB gzipped (budget ${BUDGET_KB} kB)`);
console.log(`all JS, every page: ${kb(all.reduce((n, f) => n + gz(join('assets', f)), 0))} kB gzipped in ${all.length} file(s)`);
if (firstBytes > BUDGET_KB * 1024) {
  console.error(`the first visit loads more than ${BUDGET_KB} kB of JavaScript`);
  process.exit(1);
}

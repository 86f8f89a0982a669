// Measures the JavaScript a first visit downloads: the entry chunk named in index.html plus
// the chunks it imports statically (modulepreload). Fails when it is over the budget.
import { readFileSync, readdirSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const BUDGET_KB = 150;
const dist = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'backend', 'static');
const html = readFileSync(join(dist, 'index.html'), 'utf8');
const initial = new Set(
  [...html.matchAll(/(?:src|href)="\/(assets\/[^"]+\.js)"/g)].map((m) => m[1]),
);
const gz = (file) => gzipSync(readFileSync(join(dist, file)), { level: 9 }).length;
let initialBytes = 0;
for (const file of initial) initialBytes += gz(file);
let allBytes = 0;
const all = readdirSync(join(dist, 'assets')).filter((f) => f.endsWith('.js'));
for (const file of all) allBytes += gz(join('assets', file));
const kb = (n) => (n / 1024).toFixed(1);
console.log(`initial JS: ${kb(initialBytes)} kB gzipped in ${initial.size} file(s) (budget ${BUDGET_KB} kB)`);
console.log(`all JS (including lazy pages): ${kb(allBytes)} kB gzipped in ${all.length} file(s)`);
if (initialBytes > BUDGET_KB * 1024) {
  console.error(`initial JS is over the ${BUDGET_KB} kB budget`);
  process.exit(1);
}

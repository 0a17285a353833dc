// Validates AsyncAPI documents with the AsyncAPI initiative's own parser (schema and Spectral
// rules): prints every diagnostic, exits 1 when any is an error (or a warning, with --strict).
//   node validate.mjs [--strict] FILE...
import { Parser, fromFile } from '@asyncapi/parser';

const SEVERITY = ['error', 'warning', 'info', 'hint'];
const args = process.argv.slice(2);
const strict = args.includes('--strict');
const files = args.filter((a) => a !== '--strict');
if (files.length === 0) {
  console.error('usage: node validate.mjs [--strict] FILE...');
  process.exit(2);
}

const parser = new Parser();
let failed = false;
for (const file of files) {
  const { document, diagnostics } = await fromFile(parser, file).parse();
  for (const d of diagnostics) {
    const where = d.path && d.path.length ? ` at ${d.path.join('.')}` : '';
    console.log(`${file}: ${SEVERITY[d.severity] ?? d.severity} ${d.code}${where}: ${d.message}`);
  }
  const bad = diagnostics.filter((d) => d.severity === 0 || (strict && d.severity === 1));
  if (!document || bad.length > 0) {
    failed = true;
    console.log(`${file}: INVALID`);
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()}`);
  }
}
process.exit(failed ? 1 : 0);

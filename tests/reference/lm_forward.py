#!/usr/bin/env python3
"""An independent, plain-Python forward pass of the Llama / Qwen2 / Qwen3 decoder for checking
`flotilla lm score`: reads a model directory in Hugging Face's layout (config.json,
model.safetensors in F32, BF16 or F16) and, for each line of token ids in a file, prints the
log-probability of each token after the first given the ones before it (a JSON array per line).

Written from the models' published equations (RMSNorm, rotary embedding with rotate-half,
grouped-query causal attention, SwiGLU), with no numerical library, so it shares no code with
Flotilla. Slow: meant for tiny models and short sequences.

    python3 tests/reference/lm_forward.py MODEL_DIR TOKENS_FILE
"""
import json
import math
import struct
import sys


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[base + start:base + end]
        dtype = info["dtype"]
        if dtype == "F32":
            values = list(struct.unpack("<%df" % (len(raw) // 4), raw))
        elif dtype == "F16":
            values = list(struct.unpack("<%de" % (len(raw) // 2), raw))
        elif dtype == "BF16":
            halves = struct.unpack("<%dH" % (len(raw) // 2), raw)
            values = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
        else:
            raise SystemExit("unsupported dtype %s for %s" % (dtype, name))
        out[name] = (info["shape"], values)
    return out


def matrix(t):
    shape, v = t
    rows, cols = shape
    return [v[r * cols:(r + 1) * cols] for r in range(rows)]


def linear(x, w, b=None):
    # x: list of vectors; w: [out][in]
    out = []
    for row in x:
        y = [sum(wi * xi for wi, xi in zip(wr, row)) for wr in w]
        if b is not None:
            y = [a + c for a, c in zip(y, b)]
        out.append(y)
    return out


def rms_norm(v, weight, eps):
    ms = sum(a * a for a in v) / len(v)
    s = 1.0 / math.sqrt(ms + eps)
    return [w * a * s for w, a in zip(weight, v)]


def rope(v, pos, theta):
    d = len(v)
    half = d // 2
    out = [0.0] * d
    for i in range(half):
        freq = pos / (theta ** (2 * i / d))
        c, s = math.cos(freq), math.sin(freq)
        # rotate_half pairs element i with element i + d/2
        out[i] = v[i] * c - v[i + half] * s
        out[i + half] = v[i + half] * c + v[i] * s
    return out


def silu(a):
    return a / (1.0 + math.exp(-a))


def log_probs(cfg, w, tokens):
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim", H // nh)
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    qwen3 = cfg["model_type"] == "qwen3"
    bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)
    emb = matrix(w["model.embed_tokens.weight"])
    x = [list(emb[t]) for t in tokens]
    T = len(tokens)
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        get = lambda n: w[p + n][1]
        h = [rms_norm(v, get("input_layernorm.weight"), eps) for v in x]
        q = linear(h, matrix(w[p + "self_attn.q_proj.weight"]), get("self_attn.q_proj.bias") if bias else None)
        k = linear(h, matrix(w[p + "self_attn.k_proj.weight"]), get("self_attn.k_proj.bias") if bias else None)
        v = linear(h, matrix(w[p + "self_attn.v_proj.weight"]), get("self_attn.v_proj.bias") if bias else None)
        heads_q = [[q[t][i * hd:(i + 1) * hd] for i in range(nh)] for t in range(T)]
        heads_k = [[k[t][i * hd:(i + 1) * hd] for i in range(nkv)] for t in range(T)]
        heads_v = [[v[t][i * hd:(i + 1) * hd] for i in range(nkv)] for t in range(T)]
        if qwen3:
            heads_q = [[rms_norm(a, get("self_attn.q_norm.weight"), eps) for a in row] for row in heads_q]
            heads_k = [[rms_norm(a, get("self_attn.k_norm.weight"), eps) for a in row] for row in heads_k]
        heads_q = [[rope(a, t, theta) for a in heads_q[t]] for t in range(T)]
        heads_k = [[rope(a, t, theta) for a in heads_k[t]] for t in range(T)]
        attn = []
        for t in range(T):
            out = []
            for i in range(nh):
                kv = i // (nh // nkv)
                scores = [sum(a * b for a, b in zip(heads_q[t][i], heads_k[s][kv])) / math.sqrt(hd) for s in range(t + 1)]
                m = max(scores)
                e = [math.exp(a - m) for a in scores]
                z = sum(e)
                out += [sum(e[s] / z * heads_v[s][kv][d] for s in range(t + 1)) for d in range(hd)]
            attn.append(out)
        o = linear(attn, matrix(w[p + "self_attn.o_proj.weight"]))
        x = [[a + b for a, b in zip(x[t], o[t])] for t in range(T)]
        h = [rms_norm(v, get("post_attention_layernorm.weight"), eps) for v in x]
        g = linear(h, matrix(w[p + "mlp.gate_proj.weight"]))
        u = linear(h, matrix(w[p + "mlp.up_proj.weight"]))
        act = [[silu(a) * b for a, b in zip(gr, ur)] for gr, ur in zip(g, u)]
        d = linear(act, matrix(w[p + "mlp.down_proj.weight"]))
        x = [[a + b for a, b in zip(x[t], d[t])] for t in range(T)]
    x = [rms_norm(v, w["model.norm.weight"][1], eps) for v in x]
    head = emb if cfg.get("tie_word_embeddings", False) else matrix(w["lm_head.weight"])
    result = []
    for t in range(T - 1):
        logits = [sum(a * b for a, b in zip(row, x[t])) for row in head]
        m = max(logits)
        lse = m + math.log(sum(math.exp(a - m) for a in logits))
        result.append(logits[tokens[t + 1]] - lse)
    return result


def main():
    model_dir, tokens_file = sys.argv[1], sys.argv[2]
    with open(model_dir + "/config.json") as f:
        cfg = json.load(f)
    w = read_safetensors(model_dir + "/model.safetensors")
    with open(tokens_file) as f:
        for line in f:
            if line.strip():
                print(json.dumps(log_probs(cfg, w, json.loads(line))))


if __name__ == "__main__":
    main()

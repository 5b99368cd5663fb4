#include "models/inference.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>

#include "core/error.hpp"

namespace flotilla::models {
namespace {

constexpr int64_t kPanel = 16;  // outputs per panel of a packed matrix

// A weight matrix as pieces stacked along its output (q, k and v of a layer; gate and up).
struct Matrix {
  std::vector<at::Tensor> pieces;  // [rows_i, in], contiguous: the model's float32 tensors or bfloat16 copies
  int64_t rows = 0;
  // Float32 only: the whole matrix again in panels of kPanel outputs, [panels, in, kPanel], zero
  // past the last output, for products with few rows (panel_product).
  at::Tensor panels;
};

Matrix matrix(const std::vector<at::Tensor>& from, bool bf16, bool pack) {
  Matrix m;
  for (const auto& t : from) {
    m.pieces.push_back(bf16 ? t.detach().to(at::kBFloat16).contiguous() : t.detach());
    m.rows += t.size(0);
  }
  if (!bf16 && pack) {
    const int64_t in = from.front().size(1), n = (m.rows + kPanel - 1) / kPanel;
    at::Tensor whole = at::zeros({n * kPanel, in});
    int64_t row = 0;
    for (const auto& t : from) whole.narrow(0, row, t.size(0)).copy_(t.detach()), row += t.size(0);
    m.panels = whole.view({n, kPanel, in}).transpose(1, 2).contiguous();
  }
  return m;
}

// Up to this many rows (decode steps) a float32 product runs on panel_product, over weights laid
// out for it once (Matrix::panels), rather than on OpenBLAS's sgemm, which copies (packs) the
// weights on every call: profiled at 8 rows, the copy took as long as the arithmetic, and sgemm
// ran at 39-47 GFLOP/s on one core. Measured on the bench's 133M model, the panels' decode was
// faster than sgemm's at 8, 32 and 64 rows (450.7 against 382.6 tok/s at 32, 519.2 against
// 449.8 at 64); prefill chunks (hundreds of rows) stay on sgemm.
constexpr int64_t kPanelRows = 64;

#if defined(__x86_64__)
// y[0..cols) (+)= the 16 outputs in lo, hi.
__attribute__((target("avx2,fma"), always_inline)) inline void store_panel_row(float* y, __m256 lo, __m256 hi, int64_t cols,
                                                                                bool accumulate) {
  if (cols == kPanel) {
    if (accumulate) lo = _mm256_add_ps(lo, _mm256_loadu_ps(y)), hi = _mm256_add_ps(hi, _mm256_loadu_ps(y + 8));
    _mm256_storeu_ps(y, lo);
    _mm256_storeu_ps(y + 8, hi);
    return;
  }
  alignas(32) float v[kPanel];
  _mm256_store_ps(v, lo);
  _mm256_store_ps(v + 8, hi);
  for (int64_t c = 0; c < cols; ++c) y[c] = accumulate ? y[c] + v[c] : v[c];
}

// y[i][0..cols) (+)= x[i] . panel for rows i of x (ldx apart), one panel [K][kPanel]: two
// accumulators of 8 outputs per row, each k step two weight loads and a broadcast per row. The
// rows are a parameter pack so that every accumulator has a constant index and stays in a
// register (with a loop over an index, GCC kept the array on the stack and stored all of it on
// every k step, which halved the kernel's speed).
template <size_t... I>
__attribute__((target("avx2,fma"), always_inline)) inline void panel_rows(std::index_sequence<I...>, const float* x, int64_t ldx,
                                                                           const float* panel, int64_t K, float* y, int64_t ldy,
                                                                           int64_t cols, bool accumulate) {
  constexpr size_t R = sizeof...(I);
  __m256 a0[R], a1[R];
  ((a0[I] = _mm256_setzero_ps(), a1[I] = _mm256_setzero_ps()), ...);
  for (int64_t k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_loadu_ps(panel + k * kPanel), w1 = _mm256_loadu_ps(panel + k * kPanel + 8);
    ((a0[I] = _mm256_fmadd_ps(w0, _mm256_broadcast_ss(x + static_cast<int64_t>(I) * ldx + k), a0[I]),
      a1[I] = _mm256_fmadd_ps(w1, _mm256_broadcast_ss(x + static_cast<int64_t>(I) * ldx + k), a1[I])),
     ...);
  }
  (store_panel_row(y + static_cast<int64_t>(I) * ldy, a0[I], a1[I], cols, accumulate), ...);
}

// out[:, panels [p0, p1)] (+)= x [N, K] times those panels: each panel serves the rows of x in
// groups of at most 6 (12 accumulators), the groups as even as N allows.
__attribute__((target("avx2,fma"))) void panel_product(const at::Tensor& out, const at::Tensor& x, const at::Tensor& panels,
                                                       int64_t outputs, int64_t p0, int64_t p1, bool accumulate) {
  const int64_t N = x.size(0), K = x.size(1), ldx = x.stride(0), ldy = out.stride(0);
  const float *xs = x.data_ptr<float>(), *ps = panels.data_ptr<float>();
  float* ys = out.data_ptr<float>();
  const int64_t groups = (N + 5) / 6;
  for (int64_t p = p0; p < p1; ++p) {
    const float* panel = ps + p * K * kPanel;
    const int64_t cols = std::min(kPanel, outputs - p * kPanel);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t r0 = N * g / groups, r1 = N * (g + 1) / groups;
      const float* xr = xs + r0 * ldx;
      float* yr = ys + r0 * ldy + p * kPanel;
      switch (r1 - r0) {
        case 6: panel_rows(std::make_index_sequence<6>(), xr, ldx, panel, K, yr, ldy, cols, accumulate); break;
        case 5: panel_rows(std::make_index_sequence<5>(), xr, ldx, panel, K, yr, ldy, cols, accumulate); break;
        case 4: panel_rows(std::make_index_sequence<4>(), xr, ldx, panel, K, yr, ldy, cols, accumulate); break;
        case 3: panel_rows(std::make_index_sequence<3>(), xr, ldx, panel, K, yr, ldy, cols, accumulate); break;
        case 2: panel_rows(std::make_index_sequence<2>(), xr, ldx, panel, K, yr, ldy, cols, accumulate); break;
        default: panel_rows(std::make_index_sequence<1>(), xr, ldx, panel, K, yr, ldy, cols, accumulate); break;
      }
    }
  }
}

bool has_avx2() {
  static const bool yes = (__builtin_cpu_init(), __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
  return yes;
}
#else
bool has_avx2() { return false; }
void panel_product(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, bool) {}
#endif

// out [N, n] (+)= x [N, K] w^T with sgemm on the calling thread; `out` may be a column range of a
// wider matrix.
void product(const at::Tensor& out, const at::Tensor& x, const at::Tensor& w, bool accumulate) {
  if (accumulate) {
    at::Tensor(out).addmm_(x, w.t());
  } else {
    at::Tensor o = out;
    at::mm_out(o, x, w.t());
  }
}

// out [N, m.rows] = (or +=) x [N, in] m^T. Float32: the output columns split evenly over the
// threads, each a single-threaded product writing its columns of `out` in place, so a weight is
// read once per step whatever the thread count. Bfloat16: oneDNN's matmul, which threads itself.
void linear(const at::Tensor& out, const at::Tensor& x, const Matrix& m, bool accumulate) {
  if (m.pieces.front().scalar_type() == at::kBFloat16) {
    const at::Tensor xb = x.to(at::kBFloat16);
    int64_t col = 0;
    for (const auto& w : m.pieces) {
      const at::Tensor y = at::mm(xb, w.t());
      at::Tensor o = out.narrow(1, col, w.size(0));
      accumulate ? o.add_(y) : o.copy_(y);
      col += w.size(0);
    }
    return;
  }
  const int64_t N = x.size(0);
  if (m.panels.defined() && N <= kPanelRows && has_avx2() && x.is_contiguous() && out.stride(1) == 1) {
    const int64_t panels = m.panels.size(0), parts = std::min<int64_t>(panels, at::get_num_threads());
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        panel_product(out, x, m.panels, m.rows, panels * t / parts, panels * (t + 1) / parts, accumulate);
    });
    return;
  }
  const int64_t parts = std::clamp<int64_t>(m.rows / 128, 1, at::get_num_threads());
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t a = m.rows * p / parts, b = m.rows * (p + 1) / parts;
      int64_t col = 0;
      for (const auto& w : m.pieces) {
        const int64_t lo = std::max(a, col), hi = std::min(b, col + w.size(0));
        if (lo < hi) {
          product(out.narrow(1, lo, hi - lo), x, w.narrow(0, lo - col, hi - lo), accumulate);
        }
        col += w.size(0);
      }
    }
  });
}

}  // namespace

void split_mm(const at::Tensor& out, const at::Tensor& x, const at::Tensor& w) {
  if (w.scalar_type() != at::kFloat) throw Error("split_mm takes float32 weights");
  Matrix m;
  m.pieces = {w};
  m.rows = w.size(0);
  linear(out, x, m, false);  // no panels: sgemm
}

namespace {

// Runs f(i) for i in [0, n) over the threads, interleaved (task costs that grow with i, as
// attention's with the position, stay balanced).
template <class F>
void interleaved(int64_t n, F f) {
  const int64_t T = std::min<int64_t>(at::get_num_threads(), n);
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t i = t; i < n; i += T) f(i);
  });
}

// y = w * x / rms(x) for one vector [D] (y may be x: Qwen3's q_norm and k_norm run in place).
void rms_row(float* y, const float* x, const float* w, int64_t D, double eps) {
  float ss = 0;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < D; ++i) ss += x[i] * x[i];
  const float s = 1.0f / std::sqrt(ss / static_cast<float>(D) + static_cast<float>(eps));
#pragma omp simd
  for (int64_t i = 0; i < D; ++i) y[i] = w[i] * (x[i] * s);
}

// The same over the rows of x [N, H].
void rms_norm(const at::Tensor& y, const at::Tensor& x, const at::Tensor& w, double eps) {
  const int64_t N = x.size(0), H = x.size(1);
  const float *xs = x.data_ptr<float>(), *ws = w.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  at::parallel_for(0, N, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) rms_row(ys + r * H, xs + r * H, ws, H, eps);
  });
}

// The rotary embedding of one head's vector [D] in place (rotate-half convention).
void rotate(float* v, const float* cos, const float* sin, int64_t D) {
  const int64_t half = D / 2;
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float a = v[i], b = v[i + half];
    v[i] = a * cos[i] - b * sin[i];
    v[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Four dot products of a [n] with b0..b3 [n], as four independent sums.
inline __attribute__((always_inline)) void dot4(const float* a, const float* b0, const float* b1, const float* b2, const float* b3,
                                                int64_t n, float* out) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t i = 0; i < n; ++i) s0 += a[i] * b0[i], s1 += a[i] * b1[i], s2 += a[i] * b2[i], s3 += a[i] * b3[i];
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

// What one attention task reads and writes (InferenceModel::Impl::attention).
struct Attend {
  const float *q, *k, *v;
  float* out;
  int64_t width, kv, group, D, block_size;
  float scale;
};

// Row r's queries of key/value head h against positions [0, L) of its sequence (block table
// `table`), softmax-weighted values into its output. Scores for four positions are computed at
// once, so each query vector is read once per four keys.
inline __attribute__((always_inline)) void attend_body(const Attend& a, int64_t r, int64_t h, const std::vector<int64_t>& table,
                                                       int64_t L) {
  thread_local std::vector<float> scores;
  const int64_t G = a.group, D = a.D, bs = a.block_size;
  scores.resize(static_cast<size_t>(G * L));
  const float* q = a.q + r * a.width + h * G * D;
  float* o = a.out + r * G * a.kv * D + h * G * D;
  auto key = [&](int64_t j) { return a.k + ((table[static_cast<size_t>(j / bs)] * bs + j % bs) * a.kv + h) * D; };
  int64_t j = 0;
  for (; j + 4 <= L; j += 4) {
    const float *k0 = key(j), *k1 = key(j + 1), *k2 = key(j + 2), *k3 = key(j + 3);
    for (int64_t g = 0; g < G; ++g) dot4(q + g * D, k0, k1, k2, k3, D, scores.data() + g * L + j);
  }
  for (; j < L; ++j)
    for (int64_t g = 0; g < G; ++g) scores[static_cast<size_t>(g * L + j)] = dot(q + g * D, key(j), D);
  for (int64_t g = 0; g < G; ++g) {
    float* sc = scores.data() + g * L;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < L; ++i) m = std::max(m, sc[i] *= a.scale);
    float sum = 0;
    for (int64_t i = 0; i < L; ++i) sum += (sc[i] = std::exp(sc[i] - m));
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < L; ++i) sc[i] *= inv;
  }
  std::fill(o, o + G * D, 0.0f);
  for (int64_t i = 0; i < L; ++i) {
    const float* v = a.v + ((table[static_cast<size_t>(i / bs)] * bs + i % bs) * a.kv + h) * D;
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[static_cast<size_t>(g * L + i)];
      float* og = o + g * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) og[d] += p * v[d];
    }
  }
}

void attend_plain(const Attend& a, int64_t r, int64_t h, const std::vector<int64_t>& table, int64_t L) {
  attend_body(a, r, h, table, L);
}
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void attend_avx2(const Attend& a, int64_t r, int64_t h, const std::vector<int64_t>& table, int64_t L) {
  attend_body(a, r, h, table, L);
}
#else
void attend_avx2(const Attend& a, int64_t r, int64_t h, const std::vector<int64_t>& table, int64_t L) { attend_body(a, r, h, table, L); }
#endif

struct Layer {
  at::Tensor ln1, ln2, q_norm, k_norm, q_bias, k_bias, v_bias;  // the model's float32 tensors (biases may be undefined)
  Matrix qkv, o, gate_up, down;
};

// A [rows, cols] float32 scratch matrix kept between steps, grown when a step needs more rows.
at::Tensor scratch(at::Tensor& buffer, int64_t rows, int64_t cols) {
  if (!buffer.defined() || buffer.size(0) < rows) buffer = at::empty({std::max<int64_t>(rows, 64), cols}, at::kFloat);
  return buffer.narrow(0, 0, rows);
}

}  // namespace

void StepRows::add(const std::vector<int64_t>& table, int64_t block_size, int64_t first_position, const int32_t* ids, int64_t n,
                   bool logits) {
  if (static_cast<int64_t>(table.size()) * block_size < first_position + n)
    throw Error("a sequence's block table does not cover position " + std::to_string(first_position + n - 1));
  runs.push_back({static_cast<int64_t>(tokens.size()), n, &table, logits});
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = first_position + i;
    tokens.push_back(ids[i]);
    positions.push_back(p);
    slots.push_back(table[static_cast<size_t>(p / block_size)] * block_size + p % block_size);
  }
}

struct InferenceModel::Impl {
  CausalLm& model;
  const LmConfig config;
  const TensorParallel& tp;
  std::string weights;
  int64_t heads = 0, kv_heads = 0, D = 0, units = 0, vocab_rows = 0;
  at::Tensor embed, final_norm;
  std::vector<Layer> layers;
  Matrix head;
  std::vector<std::pair<at::Tensor, int64_t>> watched;  // bfloat16's sources and their versions when copied
  at::Tensor cos, sin;                                  // [positions, D], grown on demand
  at::Tensor x_, h_, qkv_, attn_, gu_, act_, tmp_;

  Impl(CausalLm& m, std::string w) : model(m), config(m.config()), tp(m.tensor_parallel()), weights(std::move(w)) {
    if (weights != "float32" && weights != "bfloat16")
      throw ConfigError("generation weights '" + weights + "' are not one of float32, bfloat16");
    if (config.head != "lm") throw ConfigError("generation needs a language-model head; this model has a " + config.head + " head");
    read();
  }

  void read() {
    std::map<std::string, at::Tensor> p;
    for (auto& [name, t] : model.named_parameters()) p[name] = t.detach();
    auto get = [&](const std::string& name) {
      auto it = p.find(name);
      if (it == p.end()) throw Error("the model has no parameter " + name);
      return it->second;
    };
    auto maybe = [&](const std::string& name) { return p.count(name) ? p[name] : at::Tensor(); };
    const bool bf16 = weights == "bfloat16", pack = !bf16 && has_avx2();
    watched.clear();
    layers.clear();
    embed = get("model.embed_tokens.weight");
    final_norm = get("model.norm.weight");
    vocab_rows = embed.size(0);
    D = config.head_dim;
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      const std::string n = "model.layers." + std::to_string(l) + ".";
      Layer L;
      L.ln1 = get(n + "input_layernorm.weight");
      L.ln2 = get(n + "post_attention_layernorm.weight");
      L.q_norm = maybe(n + "self_attn.q_norm.weight");
      L.k_norm = maybe(n + "self_attn.k_norm.weight");
      L.q_bias = maybe(n + "self_attn.q_proj.bias");
      L.k_bias = maybe(n + "self_attn.k_proj.bias");
      L.v_bias = maybe(n + "self_attn.v_proj.bias");
      const std::vector<at::Tensor> qkv = {get(n + "self_attn.q_proj.weight"), get(n + "self_attn.k_proj.weight"),
                                           get(n + "self_attn.v_proj.weight")};
      const std::vector<at::Tensor> gate_up = {get(n + "mlp.gate_proj.weight"), get(n + "mlp.up_proj.weight")};
      const at::Tensor o = get(n + "self_attn.o_proj.weight"), down = get(n + "mlp.down_proj.weight");
      L.qkv = matrix(qkv, bf16, pack);
      L.gate_up = matrix(gate_up, bf16, pack);
      L.o = matrix({o}, bf16, pack);
      L.down = matrix({down}, bf16, pack);
      heads = qkv[0].size(0) / D;
      kv_heads = qkv[1].size(0) / D;
      units = gate_up[0].size(0);
      for (const auto& t : {qkv[0], qkv[1], qkv[2], gate_up[0], gate_up[1], o, down}) watched.emplace_back(t, t._version());
      layers.push_back(std::move(L));
    }
    const at::Tensor h = p.count("lm_head.weight") ? p["lm_head.weight"] : embed;
    head = matrix({h}, bf16, pack);
    watched.emplace_back(h, h._version());
    if (!bf16 && !pack) watched.clear();  // float32 alone reads the model's tensors themselves
  }

  // Bfloat16 copies and packed panels follow the model's parameters (a weight update, a load).
  void refresh() {
    for (const auto& [t, version] : watched)
      if (t._version() != version) return read();
  }

  void ensure_rope(int64_t positions) {
    if (cos.defined() && cos.size(0) >= positions) return;
    const int64_t n = std::max<int64_t>(positions, cos.defined() ? 2 * cos.size(0) : 256);
    const at::Tensor inv_freq = 1.0 / at::pow(config.rope_theta, at::arange(0, D, 2, at::kDouble) / static_cast<double>(D));
    const at::Tensor freqs = at::arange(n, at::kDouble).unsqueeze(1) * inv_freq;
    const at::Tensor emb = at::cat({freqs, freqs}, -1);
    cos = emb.cos().to(at::kFloat).contiguous();
    sin = emb.sin().to(at::kFloat).contiguous();
  }

  at::Tensor embed_rows(const at::Tensor& tokens) {
    if (!tp.vocab_parallel || tp.size == 1) return at::embedding(embed, tokens);
    const at::Tensor local = tokens - tp.rank * vocab_rows;
    const at::Tensor inside = ((local >= 0) & (local < vocab_rows)).unsqueeze(-1).to(at::kFloat);
    at::Tensor x = at::embedding(embed, local.clamp(0, vocab_rows - 1)) * inside;
    tp.all_reduce(x);
    return x;
  }

  // x += a m^T, summed over the tensor-parallel group first when the layer is split.
  void residual(const at::Tensor& x, const at::Tensor& a, const Matrix& m) {
    if (tp.size == 1) return linear(x, a, m, true);
    at::Tensor t = scratch(tmp_, x.size(0), x.size(1));
    linear(t, a, m, false);
    tp.all_reduce(t);
    x.add_(t);
  }

  // Per row: biases, Qwen3's per-head norms and the rotation of q and k, in place in qkv;
  // then the keys and values to their cache slots.
  void prepare_qkv(const at::Tensor& qkv, const StepRows& s, const Layer& L, at::Tensor& k_pool, at::Tensor& v_pool) {
    const int64_t N = qkv.size(0), width = qkv.size(1), KV = kv_heads, H = heads;
    float* base = qkv.data_ptr<float>();
    float *kp = k_pool.data_ptr<float>(), *vp = v_pool.data_ptr<float>();
    const float *cs = cos.data_ptr<float>(), *sn = sin.data_ptr<float>();
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
    const float *qb = ptr(L.q_bias), *kb = ptr(L.k_bias), *vb = ptr(L.v_bias), *qn = ptr(L.q_norm), *kn = ptr(L.k_norm);
    const double eps = config.rms_norm_eps;
    at::parallel_for(0, N, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* q = base + r * width;
        float* k = q + H * D;
        float* v = k + KV * D;
        if (qb) {
          for (int64_t i = 0; i < H * D; ++i) q[i] += qb[i];
          for (int64_t i = 0; i < KV * D; ++i) k[i] += kb[i], v[i] += vb[i];
        }
        const float *c = cs + s.positions[static_cast<size_t>(r)] * D, *sr = sn + s.positions[static_cast<size_t>(r)] * D;
        for (int64_t h = 0; h < H; ++h) {
          if (qn) rms_row(q + h * D, q + h * D, qn, D, eps);
          rotate(q + h * D, c, sr, D);
        }
        for (int64_t h = 0; h < KV; ++h) {
          if (kn) rms_row(k + h * D, k + h * D, kn, D, eps);
          rotate(k + h * D, c, sr, D);
        }
        const int64_t slot = s.slots[static_cast<size_t>(r)];
        std::copy(k, k + KV * D, kp + slot * KV * D);
        std::copy(v, v + KV * D, vp + slot * KV * D);
      }
    });
  }

  // out [N, heads*D]: each row's queries against its sequence's keys at positions up to its own,
  // read from the cache's blocks in place. One task per (row, key/value head) serves the head's
  // `group` query heads with one read of each key and value; tasks run AVX2 code where the CPU
  // has it.
  void attention(const at::Tensor& out, const at::Tensor& qkv, const StepRows& s, const std::vector<int32_t>& run_of,
                 const at::Tensor& k_pool, const at::Tensor& v_pool, int64_t block_size) {
    Attend a;
    a.width = qkv.size(1), a.kv = kv_heads, a.group = heads / kv_heads, a.D = D, a.block_size = block_size;
    a.q = qkv.data_ptr<float>(), a.k = k_pool.data_ptr<float>(), a.v = v_pool.data_ptr<float>(), a.out = out.data_ptr<float>();
    a.scale = 1.0f / std::sqrt(static_cast<float>(D));
    const bool avx2 = has_avx2();
    interleaved(qkv.size(0) * kv_heads, [&](int64_t item) {
      const int64_t r = item / kv_heads;
      const auto& table = *s.runs[static_cast<size_t>(run_of[static_cast<size_t>(r)])].blocks;
      const int64_t L = s.positions[static_cast<size_t>(r)] + 1;
      if (avx2) attend_avx2(a, r, item % kv_heads, table, L);
      else attend_plain(a, r, item % kv_heads, table, L);
    });
  }

  // act [N, units] = silu(gate) * up, from gate_up [N, 2 * units].
  void silu_mul(const at::Tensor& act, const at::Tensor& gu) {
    const int64_t N = gu.size(0), U = units;
    const float* g = gu.data_ptr<float>();
    float* a = act.data_ptr<float>();
    at::parallel_for(0, N, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float *gr = g + r * 2 * U, *ur = gr + U;
        float* ar = a + r * U;
        for (int64_t i = 0; i < U; ++i) ar[i] = gr[i] / (1.0f + std::exp(-gr[i])) * ur[i];
      }
    });
  }

  at::Tensor forward(const StepRows& s, KvCache& cache) {
    at::NoGradGuard no_grad;
    refresh();
    const int64_t N = static_cast<int64_t>(s.tokens.size());
    if (N == 0) return at::empty({0, config.vocab_size});
    if (static_cast<int64_t>(cache.k.size()) != config.num_hidden_layers || cache.k[0].size(1) != kv_heads || cache.k[0].size(2) != D)
      throw Error("the KV cache was not made for this model");
    std::vector<int32_t> run_of(static_cast<size_t>(N));
    std::vector<int64_t> last;  // rows whose logits are wanted
    int64_t top = 0;
    for (size_t i = 0; i < s.runs.size(); ++i) {
      const auto& run = s.runs[i];
      std::fill(run_of.begin() + run.first, run_of.begin() + run.first + run.rows, static_cast<int32_t>(i));
      if (run.logits) last.push_back(run.first + run.rows - 1);
    }
    for (int64_t p : s.positions) top = std::max(top, p);
    for (int64_t slot : s.slots)
      if (slot < 0 || slot >= cache.k[0].size(0)) throw Error("a cache slot is outside the KV cache");
    ensure_rope(top + 1);
    const int64_t hidden = config.hidden_size;
    at::Tensor x = scratch(x_, N, hidden);
    x.copy_(embed_rows(at::tensor(s.tokens, at::kLong)));
    const at::Tensor h = scratch(h_, N, hidden), qkv = scratch(qkv_, N, (heads + 2 * kv_heads) * D),
                     attn = scratch(attn_, N, heads * D), gu = scratch(gu_, N, 2 * units), act = scratch(act_, N, units);
    for (size_t l = 0; l < layers.size(); ++l) {
      const Layer& L = layers[l];
      rms_norm(h, x, L.ln1, config.rms_norm_eps);
      linear(qkv, h, L.qkv, false);
      prepare_qkv(qkv, s, L, cache.k[l], cache.v[l]);
      attention(attn, qkv, s, run_of, cache.k[l], cache.v[l], cache.block_size);
      residual(x, attn, L.o);
      rms_norm(h, x, L.ln2, config.rms_norm_eps);
      linear(gu, h, L.gate_up, false);
      silu_mul(act, gu);
      residual(x, act, L.down);
    }
    const at::Tensor xs = x.index_select(0, at::tensor(last, at::kLong));
    const at::Tensor hs = at::empty_like(xs);
    rms_norm(hs, xs, final_norm, config.rms_norm_eps);
    at::Tensor logits = at::empty({xs.size(0), head.rows}, at::kFloat);
    linear(logits, hs, head, false);
    return tp.vocab_parallel && tp.size > 1 ? tp.all_gather_last(logits) : logits;
  }
};

InferenceModel::InferenceModel(CausalLm& model, const std::string& weights) : impl_(std::make_unique<Impl>(model, weights)) {}
InferenceModel::~InferenceModel() = default;
at::Tensor InferenceModel::forward(const StepRows& step, KvCache& cache) { return impl_->forward(step, cache); }
const std::string& InferenceModel::weights() const { return impl_->weights; }

}  // namespace flotilla::models

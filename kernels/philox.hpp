#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
// counter-based generator. The same (key, counter) gives the same numbers on any thread, backend
// or machine, which is what makes a run independent of how its environments are spread.
#include <cstdint>

#include "kernels/hd.hpp"

namespace flotilla::kernels {

struct Philox4x32 {
  uint32_t c[4];
  uint32_t k[2];

  FLOTILLA_HD static uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t& hi) {
    const uint64_t p = static_cast<uint64_t>(a) * b;
    hi = static_cast<uint32_t>(p >> 32);
    return static_cast<uint32_t>(p);
  }

  // Ten rounds over the counter with the key; returns four 32-bit words.
  FLOTILLA_HD void generate(uint32_t out[4]) const {
    uint32_t x0 = c[0], x1 = c[1], x2 = c[2], x3 = c[3];
    uint32_t k0 = k[0], k1 = k[1];
    for (int round = 0; round < 10; ++round) {
      uint32_t hi0, hi1;
      const uint32_t lo0 = mulhilo(0xD2511F53u, x0, hi0);
      const uint32_t lo1 = mulhilo(0xCD9E8D57u, x2, hi1);
      x0 = hi1 ^ x1 ^ k0;
      x1 = lo1;
      x2 = hi0 ^ x3 ^ k1;
      x3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    out[0] = x0;
    out[1] = x1;
    out[2] = x2;
    out[3] = x3;
  }
};

// The random stream of one environment for one episode: key = run seed, counter = (env index,
// episode number, draw). Draws are consumed four words at a time.
class EnvRng {
 public:
  FLOTILLA_HD EnvRng(uint64_t seed, uint64_t env_index, uint32_t episode) {
    gen_.k[0] = static_cast<uint32_t>(seed);
    gen_.k[1] = static_cast<uint32_t>(seed >> 32);
    gen_.c[0] = static_cast<uint32_t>(env_index);
    gen_.c[1] = static_cast<uint32_t>(env_index >> 32);
    gen_.c[2] = episode;
    gen_.c[3] = 0;
  }
  FLOTILLA_HD uint32_t next_u32() {
    if (used_ == 4) {
      gen_.generate(buf_);
      ++gen_.c[3];
      used_ = 0;
    }
    return buf_[used_++];
  }
  // Uniform in [0, 1) with 53 random bits.
  FLOTILLA_HD double uniform() {
    const uint64_t hi = next_u32() >> 5, lo = next_u32() >> 6;
    return (static_cast<double>(hi) * 67108864.0 + static_cast<double>(lo)) * (1.0 / 9007199254740992.0);
  }
  FLOTILLA_HD double uniform(double low, double high) { return low + (high - low) * uniform(); }

 private:
  Philox4x32 gen_;
  uint32_t buf_[4] = {0, 0, 0, 0};
  int used_ = 4;
};

}  // namespace flotilla::kernels

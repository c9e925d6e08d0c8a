// jaxlenet's CPU kernels, called from XLA through its FFI (see cpu_kernels.py, which compiles this
// file on first use). x86-64 with AVX-512F; cpu_kernels_supported() says whether this CPU has it.
//
// JaxlenetConvWeightGrad: the weight gradient of a stride-1 channels-last convolution,
//   dw[o, i, j, c] = sum over n, h, w of dy[n, h, w, o] * x[n, h + i, w + j, c],
// for x (N, H, W, C) already padded, dy (N, H-KH+1, W-KW+1, O), dw (O, KH, KW, C), float32.
// XLA computes it as a matmul over im2col patches that it first writes out (LeNet's second
// convolution: 18 MB per batch, a third of the step's time spent copying). Here the patches are
// never built: kernel row i of an output position reads KW*C contiguous floats of x, which go
// straight into AVX-512 registers, multiplied by a few of dy's channels at a time.

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kFilterBlock = 5;  // dy channels per register tile: 5 x 4 accumulators + 4 loads
constexpr int kChunk = 64;       // floats of a kernel row per register tile: 4 registers

struct Shape {
  int64_t n, h, w, c, o, kh, kw;
  int64_t ho() const { return h - kh + 1; }
  int64_t wo() const { return w - kw + 1; }
  int64_t row() const { return kw * c; }  // floats of x under one kernel row
};

// Adds to acc (O, KH, KW*C) the contribution of output rows [h0, h1) of one image, for filters
// [o0, o0 + OB), kernel row i and floats [s0, s0 + len) of that kernel row (len <= 16 * NV).
// The loops over r and v are unrolled by force: left to itself, GCC 12 keeps the accumulators in
// memory and stores all 20 of them at every output position (2.7x slower).
template <int OB, int NV>
void Tile(const Shape& s, const float* x, const float* dy, float* acc, int64_t h0, int64_t h1,
          int64_t o0, int64_t i, int64_t s0, int64_t len) {
  const int tail = static_cast<int>(len - 16 * (NV - 1));
  const __mmask16 last = static_cast<__mmask16>((1u << tail) - 1);
  __m512 a[OB][NV];
#pragma GCC unroll 16
  for (int r = 0; r < OB; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) a[r][v] = _mm512_setzero_ps();
  const int64_t wo = s.wo(), c = s.c, o = s.o;
  const float* xp = x + (h0 + i) * s.w * c + s0;
  const float* dp = dy + h0 * wo * o + o0;
  for (int64_t h = h0; h < h1; ++h, xp += (s.w - wo) * c) {
    for (int64_t w = 0; w < wo; ++w, xp += c, dp += o) {
      __m512 xv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        xv[v] = v < NV - 1 ? _mm512_loadu_ps(xp + 16 * v) : _mm512_maskz_loadu_ps(last, xp + 16 * v);
#pragma GCC unroll 16
      for (int r = 0; r < OB; ++r) {
        const __m512 d = _mm512_set1_ps(dp[r]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) a[r][v] = _mm512_fmadd_ps(d, xv[v], a[r][v]);
      }
    }
  }
  float* out = acc + (o0 * s.kh + i) * s.row() + s0;
#pragma GCC unroll 16
  for (int r = 0; r < OB; ++r, out += s.kh * s.row()) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v)
      _mm512_storeu_ps(out + 16 * v, _mm512_add_ps(_mm512_loadu_ps(out + 16 * v), a[r][v]));
    float* tail_out = out + 16 * (NV - 1);
    _mm512_mask_storeu_ps(tail_out, last,
                          _mm512_add_ps(_mm512_maskz_loadu_ps(last, tail_out), a[r][NV - 1]));
  }
}

using TileFn = void (*)(const Shape&, const float*, const float*, float*, int64_t, int64_t,
                        int64_t, int64_t, int64_t, int64_t);

template <int OB>
TileFn TileFor(int nv) {
  switch (nv) {
    case 1: return Tile<OB, 1>;
    case 2: return Tile<OB, 2>;
    case 3: return Tile<OB, 3>;
    default: return Tile<OB, 4>;
  }
}

TileFn TileFor(int ob, int nv) {
  switch (ob) {
    case 1: return TileFor<1>(nv);
    case 2: return TileFor<2>(nv);
    case 3: return TileFor<3>(nv);
    case 4: return TileFor<4>(nv);
    default: return TileFor<5>(nv);
  }
}

// Images [n0, n1) into acc, a few output rows at a time so that their x and dy stay in cache
// while every register tile passes over them.
void WeightGradImages(const Shape& s, const float* x, const float* dy, float* acc, int64_t n0,
                      int64_t n1) {
  const int64_t row_bytes = (s.wo() * s.o + s.w * s.c) * 4;
  const int64_t rows = std::max<int64_t>(1, (48 << 10) / row_bytes);
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * s.h * s.w * s.c;
    const float* dyn = dy + n * s.ho() * s.wo() * s.o;
    for (int64_t h0 = 0; h0 < s.ho(); h0 += rows) {
      const int64_t h1 = std::min(s.ho(), h0 + rows);
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t s0 = 0; s0 < s.row(); s0 += kChunk) {
          const int64_t len = std::min<int64_t>(kChunk, s.row() - s0);
          for (int64_t o0 = 0; o0 < s.o; o0 += kFilterBlock) {
            const int ob = static_cast<int>(std::min<int64_t>(kFilterBlock, s.o - o0));
            TileFor(ob, static_cast<int>((len + 15) / 16))(s, xn, dyn, acc, h0, h1, o0, i, s0,
                                                           len);
          }
        }
    }
  }
}

int UsableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

ffi::Error ConvWeightGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw) {
  const auto xd = x.dimensions(), dd = dy.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || dd.size() != 4 || wd.size() != 4) {
    return ffi::Error::InvalidArgument("conv weight gradient: x, dy and dw must be 4-D");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], dd[3], wd[1], wd[2]};
  if (dd[0] != s.n || dd[1] != s.ho() || dd[2] != s.wo() || wd[0] != s.o || wd[3] != s.c ||
      s.ho() < 1 || s.wo() < 1) {
    return ffi::Error::InvalidArgument(
        "conv weight gradient: expected x (N, H, W, C), dy (N, H-KH+1, W-KW+1, O) and "
        "dw (O, KH, KW, C)");
  }
  const int64_t size = s.o * s.kh * s.row();
  const int threads = static_cast<int>(std::min<int64_t>(UsableCpus(), std::max<int64_t>(s.n, 1)));
  std::vector<std::vector<float>> partial(threads, std::vector<float>(size, 0.0f));
  auto work = [&](int t) {
    WeightGradImages(s, x.typed_data(), dy.typed_data(), partial[t].data(), s.n * t / threads,
                     s.n * (t + 1) / threads);
  };
  std::vector<std::thread> helpers;
  for (int t = 1; t < threads; ++t) helpers.emplace_back(work, t);
  work(0);
  for (auto& helper : helpers) helper.join();
  float* out = dw->typed_data();
  std::copy(partial[0].begin(), partial[0].end(), out);
  for (int t = 1; t < threads; ++t)
    for (int64_t k = 0; k < size; ++k) out[k] += partial[t][k];
  return ffi::Error::Success();
}

}  // namespace

extern "C" int cpu_kernels_supported() { return __builtin_cpu_supports("avx512f"); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvWeightGrad, ConvWeightGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

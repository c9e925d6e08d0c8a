// jaxlenet's CPU kernels, called from XLA through its FFI (see kernels.py, which compiles this
// file on first use). x86-64, built for AVX-512F or for AVX2 with FMA (kernels.py picks the one
// this CPU has; a few lines below map vector operations onto either). cpu_kernels_supported()
// says whether this CPU runs the instructions the library was built with. All arrays are float32,
// channels-last, and x is padded already.
//
// JaxlenetConvParamGrads: the weight and bias gradients of a stride-1 convolution,
//   dw[o, i, j, c] = sum over n, h, w of dy[n, h, w, o] * x[n, h + i, w + j, c],
//   db[o] = sum over n, h, w of dy[n, h, w, o],
// for x (N, H, W, C), dy (N, H-KH+1, W-KW+1, O), dw (O, KH, KW, C), db (O).
// XLA computes it as a matmul over im2col patches that it first writes out (LeNet's second
// convolution: 18 MB per batch, a third of the step's time spent copying). Here the patches are
// never built: kernel row i of an output position reads KW*C contiguous floats of x, which go
// straight into AVX-512 registers, multiplied by a few of dy's channels at a time.
//
// JaxlenetConvForward: a stride-1 convolution with few input channels,
//   y[n, h, w, o] = b[o] + sum over i, j, c of x[n, h + i, w + j, c] * wt[i, j, c, o],
// for x (N, H, W, C), wt (KH, KW, C, O), b (O), y (N, H-KH+1, W-KW+1, O). Register tiles of 4
// output positions by up to 80 filters; each input value is broadcast once per tile. LeNet's first
// layer (as 2x2 blocks: 4 channels, 80 filters) runs at ~170 GFLOP/s here, where XLA's
// convolution reaches ~80.
//
// JaxlenetConvMaxForward: JaxlenetConvForward for jaxlenet's convolution fused with a max pool,
// and the max over each window's positions, with the first position that holds it.
//
// JaxlenetConvPoolParamGrads: JaxlenetConvParamGrads for jaxlenet's convolution fused with a max
// pool, whose P*O filters are P window positions times O filters, given the first position
// holding each maximum and the maximum's cotangent instead of the convolution's whole cotangent.
//
// Register tiles are sized to the vector registers: 32 of 16 floats with AVX-512, 16 of 8 with
// AVX2.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The vector operations the kernels use: kLanes floats a vector, and a Mask selecting the first
// few lanes of one.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
using Vec = __m512;
using Mask = __mmask16;
inline Mask FirstLanes(int n) { return static_cast<Mask>((1u << n) - 1); }
inline Vec Zero() { return _mm512_setzero_ps(); }
inline Vec Broadcast(float f) { return _mm512_set1_ps(f); }
inline Vec Load(const float* p) { return _mm512_loadu_ps(p); }
inline Vec LoadFirst(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline void StoreFirst(Mask m, float* p, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec MulAdd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
#define JAXLENET_ISA_SUPPORTED __builtin_cpu_supports("avx512f")
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8;
using Vec = __m256;
using Mask = __m256i;
inline Mask FirstLanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vec Zero() { return _mm256_setzero_ps(); }
inline Vec Broadcast(float f) { return _mm256_set1_ps(f); }
inline Vec Load(const float* p) { return _mm256_loadu_ps(p); }
inline Vec LoadFirst(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
inline void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline void StoreFirst(Mask m, float* p, Vec v) { _mm256_maskstore_ps(p, m, v); }
inline Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec MulAdd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
#define JAXLENET_ISA_SUPPORTED (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
#else
#error "jaxlenet's kernels need AVX-512F, or AVX2 and FMA"
#endif
constexpr bool kWide = kLanes == 16;

// The vectors that hold `len` floats, and the mask of the last one's lanes.
inline int VectorsFor(int64_t len) { return static_cast<int>((len + kLanes - 1) / kLanes); }
inline Mask LastLanes(int64_t len) {
  return FirstLanes(static_cast<int>(len - kLanes * (VectorsFor(len) - 1)));
}

// dy channels by vectors of a kernel row per register tile: 5 x 4 accumulators + 4 loads, or
// 3 x 3 + 3 with AVX2.
constexpr int kFilterBlock = kWide ? 5 : 3;
constexpr int kChunk = kLanes * (kWide ? 4 : 3);  // floats of a kernel row per register tile
// Filters per register tile where registers hold filters: 5 vectors, or 3 with AVX2.
constexpr int kFilterChunk = kLanes * (kWide ? 5 : 3);

struct Shape {
  int64_t n, h, w, c, o, kh, kw;
  // Rows on top and bottom and columns left and right of x known to be zero (padding): the
  // forward kernel skips the kernel taps that read nothing else.
  int64_t zero_top = 0, zero_bottom = 0, zero_left = 0, zero_right = 0;
  int64_t ho() const { return h - kh + 1; }
  int64_t wo() const { return w - kw + 1; }
  int64_t row() const { return kw * c; }  // floats of x under one kernel row
};

// Adds to acc (O, KH, KW*C) the contribution of output rows [h0, h1) of one image, for filters
// [o0, o0 + OB), kernel row i and floats [s0, s0 + len) of that kernel row (len <= kLanes * NV).
// The loops over r and v are unrolled by force: left to itself, GCC 12 keeps the accumulators in
// memory and stores all 20 of them at every output position (2.7x slower).
template <int OB, int NV>
void Tile(const Shape& s, const float* x, const float* dy, float* acc, int64_t h0, int64_t h1,
          int64_t o0, int64_t i, int64_t s0, int64_t len) {
  const Mask last = LastLanes(len);
  Vec a[OB][NV];
#pragma GCC unroll 16
  for (int r = 0; r < OB; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) a[r][v] = Zero();
  const int64_t wo = s.wo(), c = s.c, o = s.o;
  const float* xp = x + (h0 + i) * s.w * c + s0;
  const float* dp = dy + h0 * wo * o + o0;
  for (int64_t h = h0; h < h1; ++h, xp += (s.w - wo) * c) {
    for (int64_t w = 0; w < wo; ++w, xp += c, dp += o) {
      Vec xv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        xv[v] = v < NV - 1 ? Load(xp + kLanes * v) : LoadFirst(last, xp + kLanes * v);
#pragma GCC unroll 16
      for (int r = 0; r < OB; ++r) {
        const Vec d = Broadcast(dp[r]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) a[r][v] = MulAdd(d, xv[v], a[r][v]);
      }
    }
  }
  float* out = acc + (o0 * s.kh + i) * s.row() + s0;
#pragma GCC unroll 16
  for (int r = 0; r < OB; ++r, out += s.kh * s.row()) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v)
      Store(out + kLanes * v, Add(Load(out + kLanes * v), a[r][v]));
    float* tail_out = out + kLanes * (NV - 1);
    StoreFirst(last, tail_out, Add(LoadFirst(last, tail_out), a[r][NV - 1]));
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

// One image x (H, W, C), dy (Ho, Wo, O) into acc, a few output rows at a time so that their x
// and dy stay in cache while every register tile passes over them.
void WeightGradImage(const Shape& s, const float* x, const float* dy, float* acc) {
  const int64_t row_bytes = (s.wo() * s.o + s.w * s.c) * 4;
  const int64_t rows = std::max<int64_t>(1, (48 << 10) / row_bytes);
  for (int64_t h0 = 0; h0 < s.ho(); h0 += rows) {
    const int64_t h1 = std::min(s.ho(), h0 + rows);
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t s0 = 0; s0 < s.row(); s0 += kChunk) {
        const int64_t len = std::min<int64_t>(kChunk, s.row() - s0);
        for (int64_t o0 = 0; o0 < s.o; o0 += kFilterBlock) {
          const int ob = static_cast<int>(std::min<int64_t>(kFilterBlock, s.o - o0));
          TileFor(ob, VectorsFor(len))(s, x, dy, acc, h0, h1, o0, i, s0, len);
        }
      }
  }
}

// Runs body(begin, end, chunk) over [0, items) cut into `chunks` equal chunks (the last one
// shorter), on the calling thread and on tasks on XLA's intra-op thread pool. The caller claims
// chunks too, so the work gets done even when every pool thread is busy: a task that starts late
// finds nothing left, and touches nothing but the counters, which live as long as the last task
// that holds them. Results kept per chunk and combined in chunk order are the same whichever
// thread ran which chunk.
struct Counters {
  std::atomic<int64_t> next{0}, done{0};
};

template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t items, int64_t chunks, const Body& body) {
  if (items <= 0) return;
  const int64_t size = (items + chunks - 1) / chunks;
  chunks = (items + size - 1) / size;
  auto counters = std::make_shared<Counters>();
  auto work = [counters, chunks, size, items, &body] {
    for (int64_t chunk; (chunk = counters->next.fetch_add(1)) < chunks;) {
      body(chunk * size, std::min(items, (chunk + 1) * size), chunk);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 0; t < std::min<int64_t>(pool.num_threads(), chunks - 1); ++t) {
    pool.Schedule([work] { work(); });
  }
  work();
  while (counters->done.load(std::memory_order_acquire) < chunks) _mm_pause();
}

// Chunks of images: a fixed number, so that sums do not depend on the machine's thread count,
// and enough that a thread which starts late still takes a share.
constexpr int64_t kImageChunks = 16;

// Few channels (a network's first layer): kernel rows too short to fill registers, so the
// registers hold kLanes filters each instead, for TB kernel taps (i, j, c) at a time, and every
// value of x is broadcast once per tile. Adds image x's contribution to acc (KH*KW*C, O),
// tap-major, for taps [t0, t0 + TB) at offsets `tap` into x and filters [o0, o0 + kLanes * NV).
template <int TB, int NV>
void TapTile(const Shape& s, const float* x, const float* dy, float* acc, const int64_t* tap,
             int64_t t0, int64_t o0, Mask last) {
  Vec a[TB][NV];
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) a[t][v] = Zero();
  const float* dp = dy + o0;
  for (int64_t h = 0; h < s.ho(); ++h) {
    const float* xp = x + h * s.w * s.c;
    for (int64_t w = 0; w < s.wo(); ++w, xp += s.c, dp += s.o) {
      Vec dv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        dv[v] = v < NV - 1 ? Load(dp + kLanes * v) : LoadFirst(last, dp + kLanes * v);
#pragma GCC unroll 16
      for (int t = 0; t < TB; ++t) {
        const Vec xb = Broadcast(xp[tap[t0 + t]]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) a[t][v] = MulAdd(xb, dv[v], a[t][v]);
      }
    }
  }
  float* out = acc + t0 * s.o + o0;
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t, out += s.o) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v) Store(out + kLanes * v, Add(Load(out + kLanes * v), a[t][v]));
    float* tail_out = out + kLanes * (NV - 1);
    StoreFirst(last, tail_out, Add(LoadFirst(last, tail_out), a[t][NV - 1]));
  }
}

using TapTileFn = void (*)(const Shape&, const float*, const float*, float*, const int64_t*,
                           int64_t, int64_t, Mask);

template <int TB>
TapTileFn TapTileFor(int nv) {
  switch (nv) {
    case 1: return TapTile<TB, 1>;
    case 2: return TapTile<TB, 2>;
    case 3: return TapTile<TB, 3>;
    case 4: return TapTile<TB, 4>;
    default: return TapTile<TB, 5>;
  }
}

TapTileFn TapTileFor(int tb, int nv) {
  switch (tb) {
    case 1: return TapTileFor<1>(nv);
    case 2: return TapTileFor<2>(nv);
    case 3: return TapTileFor<3>(nv);
    default: return TapTileFor<4>(nv);
  }
}

// Kernel taps per register tile: 4 x 5 accumulators + 5 loads, or 3 x 3 + 3 with AVX2.
constexpr int kTapBlock = kWide ? 4 : 3;
constexpr int kShortRow = 32;  // kernel rows of fewer floats take the tap tiles

// The offset in an image of x of each kernel tap (i, j, c), from the output position's.
std::vector<int64_t> TapOffsets(const Shape& s) {
  std::vector<int64_t> tap(s.kh * s.row());
  for (int64_t i = 0; i < s.kh; ++i)
    for (int64_t jc = 0; jc < s.row(); ++jc) tap[i * s.row() + jc] = i * s.w * s.c + jc;
  return tap;
}

// One image x (H, W, C), dy (Ho, Wo, O) into acc (KH*KW*C, O) by tap tiles.
void TapWeightGradImage(const Shape& s, const float* x, const float* dy, float* acc,
                        const std::vector<int64_t>& tap) {
  const int64_t taps = static_cast<int64_t>(tap.size());
  for (int64_t o0 = 0; o0 < s.o; o0 += kFilterChunk) {
    const int len = static_cast<int>(std::min<int64_t>(kFilterChunk, s.o - o0));
    const int nv = VectorsFor(len);
    const Mask last = LastLanes(len);
    for (int64_t t0 = 0; t0 < taps; t0 += kTapBlock) {
      const int tb = static_cast<int>(std::min<int64_t>(kTapBlock, taps - t0));
      TapTileFor(tb, nv)(s, x, dy, acc, tap.data(), t0, o0, last);
    }
  }
}

// The weight gradient (O, KH, KW*C) and bias gradient (O) into w_out and b_out, from x and the
// cotangent of every image n, which dy_of_image(n, scratch) returns (scratch: a buffer it may
// fill and point into).
template <typename DyOfImage>
void ParamGrads(ffi::ThreadPool& pool, const Shape& s, const float* x,
                const DyOfImage& dy_of_image, float* w_out, float* b_out) {
  const int64_t size = s.o * s.kh * s.row();
  const bool by_taps = s.row() < kShortRow;
  const std::vector<int64_t> tap = by_taps ? TapOffsets(s) : std::vector<int64_t>();
  // Per chunk: the weight gradient ((O, KH, KW*C), or tap-major (KH*KW*C, O) by taps), then the
  // bias gradient (O).
  std::vector<std::vector<float>> partial(std::min(s.n, kImageChunks),
                                          std::vector<float>(size + s.o, 0.0f));
  ParallelFor(pool, s.n, partial.size(), [&](int64_t n0, int64_t n1, int64_t chunk) {
    float* sum = partial[chunk].data();
    std::vector<float> scratch, image(s.o);
    for (int64_t n = n0; n < n1; ++n) {
      const float* xn = x + n * s.h * s.w * s.c;
      const float* dyn = dy_of_image(n, scratch);
      if (by_taps) {
        TapWeightGradImage(s, xn, dyn, sum, tap);
      } else {
        WeightGradImage(s, xn, dyn, sum);
      }
      // The bias gradient image by image: short float32 sums, added up, lose less than one
      // long one.
      std::fill(image.begin(), image.end(), 0.0f);
      const float* d = dyn;
      for (int64_t k = 0; k < s.ho() * s.wo(); ++k, d += s.o)
        for (int64_t o = 0; o < s.o; ++o) image[o] += d[o];
      for (int64_t o = 0; o < s.o; ++o) sum[size + o] += image[o];
    }
  });
  std::fill(w_out, w_out + size, 0.0f);
  std::fill(b_out, b_out + s.o, 0.0f);
  const int64_t taps = s.kh * s.row();
  for (const auto& sum : partial) {
    for (int64_t k = 0; k < size; ++k)
      w_out[k] += by_taps ? sum[(k % taps) * s.o + k / taps] : sum[k];
    for (int64_t o = 0; o < s.o; ++o) b_out[o] += sum[size + o];
  }
}

ffi::Error ConvParamGrads(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db) {
  const auto xd = x.dimensions(), dd = dy.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || dd.size() != 4 || wd.size() != 4 || db->dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("conv parameter gradients: x, dy and dw must be 4-D, db 1-D");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], dd[3], wd[1], wd[2]};
  if (dd[0] != s.n || dd[1] != s.ho() || dd[2] != s.wo() || wd[0] != s.o || wd[3] != s.c ||
      db->dimensions()[0] != s.o || s.ho() < 1 || s.wo() < 1) {
    return ffi::Error::InvalidArgument(
        "conv parameter gradients: expected x (N, H, W, C), dy (N, H-KH+1, W-KW+1, O), "
        "dw (O, KH, KW, C) and db (O)");
  }
  const float* dyp = dy.typed_data();
  const int64_t image = s.ho() * s.wo() * s.o;
  ParamGrads(pool, s, x.typed_data(),
             [&](int64_t n, std::vector<float>&) { return dyp + n * image; },
             dw->typed_data(), db->typed_data());
  return ffi::Error::Success();
}

// The same for a convolution whose P*O outputs are P positions of a max pool's windows times O
// filters (jaxlenet's convolution fused with its pool), given for every window and filter the
// first position holding the maximum, `first` (N, Ho, Wo, O), and the maximum's cotangent, `dmax`
// (N, Ho, Wo, O): the convolution's cotangent is dmax at that position and 0 at the others. It is
// rebuilt one image at a time in cache rather than written out whole (12 MB for LeNet's first
// layer).
ffi::Error ConvPoolParamGrads(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::S32> first, ffi::Buffer<ffi::F32> dmax,
                              ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db) {
  const auto xd = x.dimensions(), fd = first.dimensions(), md = dmax.dimensions(),
             wd = dw->dimensions();
  if (xd.size() != 4 || fd.size() != 4 || md.size() != 4 || wd.size() != 4 ||
      db->dimensions().size() != 1) {
    return ffi::Error::InvalidArgument(
        "conv-pool parameter gradients: x, first, dmax and dw must be 4-D, db 1-D");
  }
  const int64_t filters = fd[3];
  const Shape s{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[2]};
  if (filters < 1 || s.o % filters || fd[0] != s.n || fd[1] != s.ho() || fd[2] != s.wo() ||
      md[0] != fd[0] || md[1] != fd[1] || md[2] != fd[2] || md[3] != fd[3] || wd[3] != s.c ||
      db->dimensions()[0] != s.o || s.ho() < 1 || s.wo() < 1) {
    return ffi::Error::InvalidArgument(
        "conv-pool parameter gradients: expected x (N, H, W, C), first and dmax "
        "(N, H-KH+1, W-KW+1, O), dw (P*O, KH, KW, C) and db (P*O)");
  }
  const int64_t positions = s.o / filters, cells = s.ho() * s.wo();
  const int32_t* firstp = first.typed_data();
  const float* dmaxp = dmax.typed_data();
  ParamGrads(pool, s, x.typed_data(),
             [&](int64_t n, std::vector<float>& scratch) {
               scratch.assign(cells * s.o, 0.0f);
               const int32_t* f = firstp + n * cells * filters;
               const float* m = dmaxp + n * cells * filters;
               float* cell = scratch.data();
               for (int64_t k = 0; k < cells; ++k, f += filters, m += filters, cell += s.o)
                 for (int64_t o = 0; o < filters; ++o) {
                   // No position holds a NaN maximum: its window passes no gradient.
                   if (f[o] >= 0 && f[o] < positions) cell[f[o] * filters + o] = m[o];
                 }
               return static_cast<const float*>(scratch.data());
             },
             dw->typed_data(), db->typed_data());
  return ffi::Error::Success();
}

// Output positions [w, w + PB) of row h of one image into that row's output `row` (Wo, O),
// filters [o0, o0 + kLanes * NV) (the last register masked to `last`), bias included.
template <int PB, int NV>
void ForwardTile(const Shape& s, const float* x, const float* wt, const float* b, float* row,
                 int64_t h, int64_t w, int64_t o0, Mask last) {
  Vec a[PB][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const Vec bias = v < NV - 1 ? Load(b + o0 + kLanes * v) : LoadFirst(last, b + o0 + kLanes * v);
#pragma GCC unroll 16
    for (int p = 0; p < PB; ++p) a[p][v] = bias;
  }
  const int64_t i0 = std::max<int64_t>(0, s.zero_top - h),
                i1 = std::min(s.kh, s.h - s.zero_bottom - h),
                j0 = std::max<int64_t>(0, s.zero_left - (w + PB - 1)),
                j1 = std::min(s.kw, s.w - s.zero_right - w);
  for (int64_t i = i0; i < i1; ++i) {
    const float* xr = x + ((h + i) * s.w + w) * s.c;
    const float* wr = wt + (i * s.row() + j0 * s.c) * s.o + o0;
    for (int64_t jc = j0 * s.c; jc < j1 * s.c; ++jc, wr += s.o) {  // (j, c): contiguous in x
      Vec wv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        wv[v] = v < NV - 1 ? Load(wr + kLanes * v) : LoadFirst(last, wr + kLanes * v);
#pragma GCC unroll 16
      for (int p = 0; p < PB; ++p) {
        const Vec xb = Broadcast(xr[p * s.c + jc]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) a[p][v] = MulAdd(xb, wv[v], a[p][v]);
      }
    }
  }
  float* out = row + w * s.o + o0;
#pragma GCC unroll 16
  for (int p = 0; p < PB; ++p, out += s.o) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v) Store(out + kLanes * v, a[p][v]);
    StoreFirst(last, out + kLanes * (NV - 1), a[p][NV - 1]);
  }
}

using ForwardTileFn = void (*)(const Shape&, const float*, const float*, const float*, float*,
                               int64_t, int64_t, int64_t, Mask);

template <int PB>
ForwardTileFn ForwardTileFor(int nv) {
  switch (nv) {
    case 1: return ForwardTile<PB, 1>;
    case 2: return ForwardTile<PB, 2>;
    case 3: return ForwardTile<PB, 3>;
    case 4: return ForwardTile<PB, 4>;
    default: return ForwardTile<PB, 5>;
  }
}

ForwardTileFn ForwardTileFor(int pb, int nv) {
  switch (pb) {
    case 1: return ForwardTileFor<1>(nv);
    case 4: return ForwardTileFor<4>(nv);
    default: return ForwardTileFor<6>(nv);
  }
}

// Vectors of filters by output positions per forward tile: 5 x 4 with AVX-512. With AVX2's 16
// registers, 3 x 4 where the filters fit in 3 vectors, else chunks of 2 x 6 (LeNet's first layer
// as 2x2 blocks, 80 filters: 2.3 ms against 4.2 in chunks of 3 x 3).
struct ForwardBlocking {
  int vectors, positions;
};

ForwardBlocking ForwardBlockingFor(int64_t filters) {
  if (kWide) return {5, 4};
  const int vectors = VectorsFor(filters);
  return vectors == 3 ? ForwardBlocking{3, 4} : ForwardBlocking{std::min(vectors, 2), 6};
}

// Output row h of image x (H, W, C) into row (Wo, O).
void ForwardRow(const Shape& s, const float* x, const float* wt, const float* b, float* row,
                int64_t h) {
  const ForwardBlocking blocking = ForwardBlockingFor(s.o);
  const int64_t chunk = kLanes * blocking.vectors;
  for (int64_t o0 = 0; o0 < s.o; o0 += chunk) {
    const int len = static_cast<int>(std::min<int64_t>(chunk, s.o - o0));
    const int nv = VectorsFor(len);
    const Mask last = LastLanes(len);
    const ForwardTileFn block = ForwardTileFor(blocking.positions, nv),
                        single = ForwardTileFor(1, nv);
    int64_t w = 0;
    for (; w + blocking.positions <= s.wo(); w += blocking.positions)
      block(s, x, wt, b, row, h, w, o0, last);
    for (; w < s.wo(); ++w) single(s, x, wt, b, row, h, w, o0, last);
  }
}

void ForwardImages(const Shape& s, const float* x, const float* wt, const float* b, float* y,
                   int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * s.h * s.w * s.c;
    float* yn = y + n * s.ho() * s.wo() * s.o;
    for (int64_t h = 0; h < s.ho(); ++h) ForwardRow(s, xn, wt, b, yn + h * s.wo() * s.o, h);
  }
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wt,
                       ffi::Buffer<ffi::F32> b, ffi::Span<const int64_t> zero_border,
                       ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = wt.dimensions(), bd = b.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || bd.size() != 1 || yd.size() != 4) {
    return ffi::Error::InvalidArgument("conv forward: x, wt and y must be 4-D, b 1-D");
  }
  Shape s{xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1]};
  if (wd[2] != s.c || bd[0] != s.o || yd[0] != s.n || yd[1] != s.ho() || yd[2] != s.wo() ||
      yd[3] != s.o || s.ho() < 1 || s.wo() < 1) {
    return ffi::Error::InvalidArgument(
        "conv forward: expected x (N, H, W, C), wt (KH, KW, C, O), b (O) and "
        "y (N, H-KH+1, W-KW+1, O)");
  }
  if (zero_border.size() != 4 || *std::min_element(zero_border.begin(), zero_border.end()) < 0) {
    return ffi::Error::InvalidArgument(
        "conv forward: zero_border must be 4 counts >= 0 (rows top, bottom, columns left, right)");
  }
  s.zero_top = zero_border[0];
  s.zero_bottom = zero_border[1];
  s.zero_left = zero_border[2];
  s.zero_right = zero_border[3];
  ParallelFor(pool, s.n, std::min(s.n, kImageChunks), [&](int64_t n0, int64_t n1, int64_t) {
    ForwardImages(s, x.typed_data(), wt.typed_data(), b.typed_data(), y->typed_data(), n0, n1);
  });
  return ffi::Error::Success();
}


// A convolution whose P*O filters are P positions of a max pool's windows times O filters
// (jaxlenet's convolution fused with its pool), and the max over the positions: for x (N, H, W,
// C), wt (KH, KW, C, P*O) and b (P*O), top (N, H-KH+1, W-KW+1, O) is the max over p of filter
// p*O + o (NaN where one of them is), and first (same shape, int32) the first p holding it (P
// where the max is NaN). The convolution's output is written one row at a time into a buffer in
// cache, not out whole (12 MB for LeNet's first layer, which XLA then read three times).
ffi::Error ConvMaxForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wt,
                          ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> top,
                          ffi::ResultBuffer<ffi::S32> first) {
  const auto xd = x.dimensions(), wd = wt.dimensions(), bd = b.dimensions(),
             td = top->dimensions(), fd = first->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || bd.size() != 1 || td.size() != 4 || fd.size() != 4) {
    return ffi::Error::InvalidArgument("conv-max forward: x, wt, top and first must be 4-D, b 1-D");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1]};
  const int64_t filters = td[3];
  if (wd[2] != s.c || bd[0] != s.o || filters < 1 || s.o % filters || td[0] != s.n ||
      td[1] != s.ho() || td[2] != s.wo() || fd[0] != td[0] || fd[1] != td[1] ||
      fd[2] != td[2] || fd[3] != td[3] || s.ho() < 1 || s.wo() < 1) {
    return ffi::Error::InvalidArgument(
        "conv-max forward: expected x (N, H, W, C), wt (KH, KW, C, P*O), b (P*O), and top and "
        "first (N, H-KH+1, W-KW+1, O)");
  }
  const int32_t positions = static_cast<int32_t>(s.o / filters);
  const float* xp = x.typed_data();
  float* topp = top->typed_data();
  int32_t* firstp = first->typed_data();
  ParallelFor(pool, s.n, std::min(s.n, kImageChunks), [&](int64_t n0, int64_t n1, int64_t) {
    std::vector<float> row(s.wo() * s.o);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t h = 0; h < s.ho(); ++h) {
        ForwardRow(s, xp + n * s.h * s.w * s.c, wt.typed_data(), b.typed_data(), row.data(), h);
        const int64_t out = ((n * s.ho() + h) * s.wo()) * filters;
        // Loops over the filters innermost, contiguous in memory, so that GCC vectorizes them.
        for (int64_t w = 0; w < s.wo(); ++w) {
          const float* __restrict cell = row.data() + w * s.o;
          float* __restrict t = topp + out + w * filters;
          int32_t* __restrict f = firstp + out + w * filters;
          for (int64_t o = 0; o < filters; ++o) t[o] = cell[o];
          for (int32_t p = 1; p < positions; ++p)
            for (int64_t o = 0; o < filters; ++o) {
              const float v = cell[p * filters + o];
              t[o] = (v > t[o] || v != v) ? v : t[o];  // a NaN, once there, stays
            }
          for (int64_t o = 0; o < filters; ++o) f[o] = positions;
          for (int32_t p = positions - 1; p >= 0; --p)
            for (int64_t o = 0; o < filters; ++o)
              f[o] = cell[p * filters + o] == t[o] ? p : f[o];
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" int cpu_kernels_supported() { return JAXLENET_ISA_SUPPORTED; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvParamGrads, ConvParamGrads,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("zero_border")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvPoolParamGrads, ConvPoolParamGrads,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvMaxForward, ConvMaxForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

// jaxlenet's CPU kernels, called from XLA through its FFI (see kernels.py, which compiles this
// file on first use). x86-64, built for AVX-512F or for AVX2 with FMA (kernels.py picks the one
// this CPU has; a few lines below map vector operations onto either). cpu_kernels_supported()
// says whether this CPU runs the instructions the library was built with. All arrays are float32
// and channels-last.
//
// JaxlenetConvParamGrads: the weight and bias gradients of a stride-1 convolution,
//   dw[o, i, j, c] = sum over n, h, w of dy[n, h, w, o] * x[n, h + i, w + j, c],
//   db[o] = sum over n, h, w of dy[n, h, w, o],
// for x (N, H, W, C) padded already, dy (N, H-KH+1, W-KW+1, O), dw (O, KH, KW, C), db (O).
// XLA computes it as a matmul over im2col patches that it first writes out (LeNet's second
// convolution: 18 MB per batch, a third of the step's time spent copying). Here the patches are
// never built: kernel row i of an output position reads KW*C contiguous floats of x, which go
// straight into AVX-512 registers, multiplied by a few of dy's channels at a time.
//
// JaxlenetConvForward: a stride-1 convolution,
//   y[n, h, w, o] = b[o] + sum over i, j, c of xp[n, h + i, w + j, c] * wt[i, j, c, o],
// for x (N, H, W, C) zero-padded into xp by the attribute `padding` (rows top, bottom, columns
// left, right), wt (KH, KW, C, O), b (O), y (N, Hp-KH+1, Wp-KW+1, O). Register tiles of a
// few output positions by a chunk of filters, whose weights are repacked once per call; each
// input value is broadcast once per tile. On 2 Zen 3 cores, LeNet's first layer (as 2x2 blocks:
// 4 channels, 80 filters) runs at ~170 GFLOP/s where XLA's convolution reaches ~80, and the
// second (20 channels, 50 filters) at ~160 where YNNPACK's reaches ~130.
//
// JaxlenetConvInputGrad: the input gradient of a stride-1 convolution,
//   dx[n, y, x, c] = sum over h, w, i, j, o with h + i - top = y, w + j - left = x of
//                    dy[n, h, w, o] * wr[o, i, j, c],
// for dy (N, Ho, Wo, O), wr (O, KH, KW, C) and the forward convolution's `padding`: dy times the
// weight by the forward tiles, each product added where it falls inside the image.
//
// JaxlenetConvMaxForward: JaxlenetConvForward for jaxlenet's convolution fused with a max pool,
// and the max over each window's positions, with the first position that holds it.
//
// JaxlenetConvPoolInputGrad: the input gradient of a convolution followed by such a pool, from
// the first maximum's position and cotangent: one kernel's worth per window and filter whose
// cotangent is not zero.
//
// JaxlenetConvPoolForward: JaxlenetConvForward followed by a max pool over non-overlapping
// windows of its output, with the first position of each window that holds the max; the
// convolution's rows stay in cache.
//
// JaxlenetConvPoolParamGrads: the weight and bias gradients of a stride-1 convolution followed
// by a max pool of non-overlapping ph x pw windows (attribute `window`), given the maximum's
// cotangent dmax (N, Hp, Wp, O) and the first position p = pi * pw + pj of each window holding
// it, first (N, Hp, Wp, O) (ph * pw where the maximum is NaN: the window passes nothing):
//   dw[o, i, j, c] = sum over n, h, w of dmax[n, h, w, o] * x[n, ph*h + pi + i, pw*w + pj + j, c],
//   db[o] = sum over n, h, w of dmax[n, h, w, o],
// for x (N, H, W, C) padded already, dw (O, KH, KW, C). One patch of x per window and filter
// whose cotangent is not zero: a quarter of the convolution's arithmetic for 2x2 windows, and
// about half of that behind a ReLU, which passes nothing where the max is <= 0.
//
// Register tiles are sized to the vector registers: 32 of 16 floats with AVX-512, 16 of 8 with
// AVX2.

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
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
using Lanes = __mmask16;  // a truth value per lane
inline Lanes Greater(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
inline Lanes Equal(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
inline Lanes IsNaN(Vec a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
inline Lanes Either(Lanes a, Lanes b) { return a | b; }
inline Vec Select(Lanes m, Vec a, Vec b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
using Ints = __m512i;
inline Ints BroadcastInt(int32_t k) { return _mm512_set1_epi32(k); }
inline Ints SelectInts(Lanes m, Ints a, Ints b) { return _mm512_mask_blend_epi32(m, b, a); }
inline void StoreInts(int32_t* p, Ints v) { _mm512_storeu_si512(p, v); }
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
using Lanes = __m256;  // a truth value per lane: all bits set or none
inline Lanes Greater(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
inline Lanes Equal(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
inline Lanes IsNaN(Vec a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
inline Lanes Either(Lanes a, Lanes b) { return _mm256_or_ps(a, b); }
inline Vec Select(Lanes m, Vec a, Vec b) { return _mm256_blendv_ps(b, a, m); }  // m ? a : b
using Ints = __m256i;
inline Ints BroadcastInt(int32_t k) { return _mm256_set1_epi32(k); }
inline Ints SelectInts(Lanes m, Ints a, Ints b) {
  return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m));
}
inline void StoreInts(int32_t* p, Ints v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
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
// 5 x 2 + 2 with AVX2.
constexpr int kFilterBlock = 5;
constexpr int kChunk = kLanes * (kWide ? 4 : 2);  // floats of a kernel row per register tile
// Filters per register tile where registers hold filters: 5 vectors, or 2 with AVX2.
constexpr int kFilterChunk = kLanes * (kWide ? 5 : 2);

struct Shape {
  int64_t n, h, w, c, o, kh, kw;
  // Zero rows on top and bottom and columns left and right of x (padding), counted in h and w:
  // the forward kernel skips the kernel taps that read nothing else.
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  bool padded() const { return pad_top || pad_bottom || pad_left || pad_right; }
  int64_t ho() const { return h - kh + 1; }
  int64_t wo() const { return w - kw + 1; }
  int64_t row() const { return kw * c; }  // floats of x under one kernel row
};

// Whether `padding` is the 4 zero-padding counts the padded kernels take: rows on top and
// bottom, columns left and right, each >= 0.
bool IsPadding(ffi::Span<const int64_t> padding) {
  return padding.size() == 4 && *std::min_element(padding.begin(), padding.end()) >= 0;
}

// The shape of a stride-1 convolution with KH x KW kernels from C channels to O filters, over N
// images (H, W) zero-padded by `padding` (IsPadding): h and w count the padding.
Shape PaddedShape(int64_t n, int64_t h, int64_t w, int64_t c, int64_t o, int64_t kh, int64_t kw,
                  ffi::Span<const int64_t> padding) {
  Shape s{n, h + padding[0] + padding[1], w + padding[2] + padding[3], c, o, kh, kw};
  s.pad_top = padding[0];
  s.pad_bottom = padding[1];
  s.pad_left = padding[2];
  s.pad_right = padding[3];
  return s;
}

// Where each output position (h, w) of an image, in order, starts reading x: (h * W + w) * C.
// The weight-gradient tiles run over an image's positions in one loop: a loop per row of 10
// positions (LeNet's second layer) cost ~15% more.
std::vector<int64_t> PositionOffsets(const Shape& s) {
  std::vector<int64_t> offsets;
  offsets.reserve(s.ho() * s.wo());
  for (int64_t h = 0; h < s.ho(); ++h)
    for (int64_t w = 0; w < s.wo(); ++w) offsets.push_back((h * s.w + w) * s.c);
  return offsets;
}

// Adds to acc (O, KH, KW*C) the contribution of output positions [p0, p1) of one image (their
// offsets into x in `offsets`), for filters [o0, o0 + OB), kernel row i and floats [s0, s0 +
// len) of that kernel row (len <= kLanes * NV; MASKED where len < kLanes * NV: masked loads,
// slow on Zen 3, only where they are needed).
// The loops over r and v are unrolled by force: left to itself, GCC 12 keeps the accumulators in
// memory and stores all 20 of them at every output position (2.7x slower).
template <int OB, int NV, bool MASKED>
void Tile(const Shape& s, const float* x, const float* dy, float* acc, const int64_t* offsets,
          int64_t p0, int64_t p1, int64_t o0, int64_t i, int64_t s0, int64_t len) {
  const Mask last = LastLanes(len);
  Vec a[OB][NV];
#pragma GCC unroll 16
  for (int r = 0; r < OB; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) a[r][v] = Zero();
  const float* xi = x + i * s.w * s.c + s0;
  const float* dp = dy + p0 * s.o + o0;
  for (int64_t p = p0; p < p1; ++p, dp += s.o) {
    const float* xp = xi + offsets[p];
    Vec xv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      xv[v] = (v < NV - 1 || !MASKED) ? Load(xp + kLanes * v) : LoadFirst(last, xp + kLanes * v);
#pragma GCC unroll 16
    for (int r = 0; r < OB; ++r) {
      const Vec d = Broadcast(dp[r]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) a[r][v] = MulAdd(d, xv[v], a[r][v]);
    }
  }
  float* out = acc + (o0 * s.kh + i) * s.row() + s0;
#pragma GCC unroll 16
  for (int r = 0; r < OB; ++r, out += s.kh * s.row()) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v)
      Store(out + kLanes * v, Add(Load(out + kLanes * v), a[r][v]));
    float* tail_out = out + kLanes * (NV - 1);
    if (MASKED) {
      StoreFirst(last, tail_out, Add(LoadFirst(last, tail_out), a[r][NV - 1]));
    } else {
      Store(tail_out, Add(Load(tail_out), a[r][NV - 1]));
    }
  }
}

using TileFn = void (*)(const Shape&, const float*, const float*, float*, const int64_t*, int64_t,
                        int64_t, int64_t, int64_t, int64_t, int64_t);

template <int OB, int NV>
TileFn TileFor(bool masked) {
  if constexpr (NV * kLanes <= kChunk) {
    return masked ? Tile<OB, NV, true> : Tile<OB, NV, false>;
  } else {
    return nullptr;
  }
}

template <int OB>
TileFn TileFor(int nv, bool masked) {
  switch (nv) {
    case 1: return TileFor<OB, 1>(masked);
    case 2: return TileFor<OB, 2>(masked);
    case 3: return TileFor<OB, 3>(masked);
    default: return TileFor<OB, 4>(masked);
  }
}

TileFn TileFor(int ob, int nv, bool masked) {
  switch (ob) {
    case 1: return TileFor<1>(nv, masked);
    case 2: return TileFor<2>(nv, masked);
    case 3: return TileFor<3>(nv, masked);
    case 4: return TileFor<4>(nv, masked);
    default: return TileFor<5>(nv, masked);
  }
}

// One image x (H, W, C), dy (Ho, Wo, O) into acc, a few output rows at a time so that their x
// and dy stay in cache while every register tile passes over them.
void WeightGradImage(const Shape& s, const float* x, const float* dy, float* acc,
                     const std::vector<int64_t>& offsets) {
  const int64_t row_bytes = (s.wo() * s.o + s.w * s.c) * 4;
  const int64_t rows = std::max<int64_t>(1, (48 << 10) / row_bytes);
  for (int64_t h0 = 0; h0 < s.ho(); h0 += rows) {
    const int64_t p0 = h0 * s.wo(), p1 = std::min(s.ho(), h0 + rows) * s.wo();
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t s0 = 0; s0 < s.row(); s0 += kChunk) {
        const int64_t len = std::min<int64_t>(kChunk, s.row() - s0);
        for (int64_t o0 = 0; o0 < s.o; o0 += kFilterBlock) {
          const int ob = static_cast<int>(std::min<int64_t>(kFilterBlock, s.o - o0));
          TileFor(ob, VectorsFor(len), len % kLanes != 0)(s, x, dy, acc, offsets.data(), p0, p1,
                                                          o0, i, s0, len);
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
// tap-major, for taps [t0, t0 + TB) at offsets `tap` into x from each output position's offset
// (`offsets`), and filters [o0, o0 + kLanes * NV) (the last vector MASKED to `last` where the
// chunk is not whole).
template <int TB, int NV, bool MASKED>
void TapTile(const Shape& s, const float* x, const float* dy, float* acc, const int64_t* tap,
             const int64_t* offsets, int64_t t0, int64_t o0, Mask last) {
  Vec a[TB][NV];
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) a[t][v] = Zero();
  int64_t taps[TB];
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t) taps[t] = tap[t0 + t];
  const float* dp = dy + o0;
  for (int64_t p = 0; p < s.ho() * s.wo(); ++p, dp += s.o) {
    const float* xp = x + offsets[p];
    Vec dv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      dv[v] = (v < NV - 1 || !MASKED) ? Load(dp + kLanes * v) : LoadFirst(last, dp + kLanes * v);
#pragma GCC unroll 16
    for (int t = 0; t < TB; ++t) {
      const Vec xb = Broadcast(xp[taps[t]]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) a[t][v] = MulAdd(xb, dv[v], a[t][v]);
    }
  }
  float* out = acc + t0 * s.o + o0;
#pragma GCC unroll 16
  for (int t = 0; t < TB; ++t, out += s.o) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v) Store(out + kLanes * v, Add(Load(out + kLanes * v), a[t][v]));
    float* tail_out = out + kLanes * (NV - 1);
    if (MASKED) {
      StoreFirst(last, tail_out, Add(LoadFirst(last, tail_out), a[t][NV - 1]));
    } else {
      Store(tail_out, Add(Load(tail_out), a[t][NV - 1]));
    }
  }
}

// Kernel taps per register tile: 4 x 5 accumulators + 5 loads, or 6 x 2 + 2 with AVX2.
constexpr int kTapBlock = kWide ? 4 : 6;
constexpr int kShortRow = 32;  // kernel rows of fewer floats take the tap tiles

using TapTileFn = void (*)(const Shape&, const float*, const float*, float*, const int64_t*,
                           const int64_t*, int64_t, int64_t, Mask);

template <int TB, int NV>
TapTileFn TapTileFor(bool masked) {
  if constexpr (TB <= kTapBlock && NV * kLanes <= kFilterChunk) {
    return masked ? TapTile<TB, NV, true> : TapTile<TB, NV, false>;
  } else {
    return nullptr;
  }
}

template <int TB>
TapTileFn TapTileFor(int nv, bool masked) {
  switch (nv) {
    case 1: return TapTileFor<TB, 1>(masked);
    case 2: return TapTileFor<TB, 2>(masked);
    case 3: return TapTileFor<TB, 3>(masked);
    case 4: return TapTileFor<TB, 4>(masked);
    default: return TapTileFor<TB, 5>(masked);
  }
}

TapTileFn TapTileFor(int tb, int nv, bool masked) {
  switch (tb) {
    case 1: return TapTileFor<1>(nv, masked);
    case 2: return TapTileFor<2>(nv, masked);
    case 3: return TapTileFor<3>(nv, masked);
    case 4: return TapTileFor<4>(nv, masked);
    case 5: return TapTileFor<5>(nv, masked);
    default: return TapTileFor<6>(nv, masked);
  }
}

// The offset in an image of x of each kernel tap (i, j, c), from the output position's.
std::vector<int64_t> TapOffsets(const Shape& s) {
  std::vector<int64_t> tap(s.kh * s.row());
  for (int64_t i = 0; i < s.kh; ++i)
    for (int64_t jc = 0; jc < s.row(); ++jc) tap[i * s.row() + jc] = i * s.w * s.c + jc;
  return tap;
}

// One image x (H, W, C), dy (Ho, Wo, O) into acc (KH*KW*C, O) by tap tiles.
void TapWeightGradImage(const Shape& s, const float* x, const float* dy, float* acc,
                        const std::vector<int64_t>& tap, const std::vector<int64_t>& offsets) {
  const int64_t taps = static_cast<int64_t>(tap.size());
  for (int64_t o0 = 0; o0 < s.o; o0 += kFilterChunk) {
    const int len = static_cast<int>(std::min<int64_t>(kFilterChunk, s.o - o0));
    const int nv = VectorsFor(len);
    const Mask last = LastLanes(len);
    for (int64_t t0 = 0; t0 < taps; t0 += kTapBlock) {
      const int tb = static_cast<int>(std::min<int64_t>(kTapBlock, taps - t0));
      TapTileFor(tb, nv, len % kLanes != 0)(s, x, dy, acc, tap.data(), offsets.data(), t0, o0,
                                            last);
    }
  }
}

// Sums over the images in a fixed number of chunks (kImageChunks), so that the sums do not
// depend on the machine's thread count: add(n0, n1, sum) adds images [n0, n1) into sum (`size`
// floats, zero at first). Returns the chunks' sums, added in order.
template <typename AddImages>
std::vector<float> SumOverImages(ffi::ThreadPool& pool, int64_t images, int64_t size,
                                 const AddImages& add) {
  std::vector<std::vector<float>> partial(std::min(images, kImageChunks),
                                          std::vector<float>(size, 0.0f));
  ParallelFor(pool, images, partial.size(), [&](int64_t n0, int64_t n1, int64_t chunk) {
    add(n0, n1, partial[chunk].data());
  });
  std::vector<float> total(size, 0.0f);
  for (const auto& sum : partial)
    for (int64_t k = 0; k < size; ++k) total[k] += sum[k];
  return total;
}

// The weight gradient (O, KH, KW*C) and bias gradient (O) into w_out and b_out, from x and dy.
void ParamGrads(ffi::ThreadPool& pool, const Shape& s, const float* x, const float* dy,
                float* w_out, float* b_out) {
  const int64_t size = s.o * s.kh * s.row();
  const bool by_taps = s.row() < kShortRow;
  const std::vector<int64_t> tap = by_taps ? TapOffsets(s) : std::vector<int64_t>(),
                             offsets = PositionOffsets(s);
  // The weight gradient ((O, KH, KW*C), or tap-major (KH*KW*C, O) by taps), then the bias
  // gradient (O).
  const std::vector<float> total =
      SumOverImages(pool, s.n, size + s.o, [&](int64_t n0, int64_t n1, float* sum) {
        std::vector<float> image(s.o);
        for (int64_t n = n0; n < n1; ++n) {
          const float* xn = x + n * s.h * s.w * s.c;
          const float* dyn = dy + n * s.ho() * s.wo() * s.o;
          if (by_taps) {
            TapWeightGradImage(s, xn, dyn, sum, tap, offsets);
          } else {
            WeightGradImage(s, xn, dyn, sum, offsets);
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
  const int64_t taps = s.kh * s.row();
  for (int64_t k = 0; k < size; ++k) w_out[k] = total[by_taps ? (k % taps) * s.o + k / taps : k];
  std::copy(total.begin() + size, total.end(), b_out);
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
  ParamGrads(pool, s, x.typed_data(), dy.typed_data(), dw->typed_data(), db->typed_data());
  return ffi::Error::Success();
}

// Whether a window's first maximum `p`, as the conv-pool kernels take it, is one of its
// `positions`: not one where the max is NaN (p = positions), which passes no gradient.
inline bool HoldsMax(int32_t p, int32_t positions) {
  return static_cast<uint32_t>(p) < static_cast<uint32_t>(positions);
}

// Blocks of up to kBlockRows rows by kBlockVectors vectors, and the accumulators a block may use:
// 12 of AVX2's 16 registers, 24 of AVX-512's 32.
constexpr int kBlockRows = 6, kBlockVectors = 8, kBlockAccumulators = kWide ? 24 : 12;

// Sums over a list of blocks of a few rows of vectors: for t < count, scale[t] times the block
// at base[t] + offset (RB rows, row r at r * stride, VB vectors along it), summed in registers
// and added into out (row r at r * out_stride); where `tail` is set, the block's last vector of
// each row is added to the floats it selects only. The conv-pool kernels' sparse gradients: the
// weight gradient sums patches of x over a filter's windows, the input gradient sums rows of the
// weight over the filters whose maximum a window position holds. One load per multiply-add, and
// RB x VB independent sums to hide its latency.
template <int RB, int VB>
void AddScaledBlocks(const float* const* base, const float* scale, int64_t count, int64_t offset,
                     int64_t stride, float* out, int64_t out_stride, const Mask* tail) {
  Vec a[RB][VB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < VB; ++v) a[r][v] = Zero();
  for (int64_t t = 0; t < count; ++t) {
    const Vec m = Broadcast(scale[t]);
    const float* b = base[t] + offset;
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r, b += stride)
#pragma GCC unroll 8
      for (int v = 0; v < VB; ++v) a[r][v] = MulAdd(m, Load(b + v * kLanes), a[r][v]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < VB; ++v) {
      float* o = out + r * out_stride + v * kLanes;
      if (tail != nullptr && v == VB - 1) {
        StoreFirst(*tail, o, Add(LoadFirst(*tail, o), a[r][v]));
      } else {
        Store(o, Add(Load(o), a[r][v]));
      }
    }
  }
}

using AddScaledBlocksFn = void (*)(const float* const*, const float*, int64_t, int64_t, int64_t,
                                   float*, int64_t, const Mask*);

// AddScaledBlocks<RB, VB> where its accumulators fit in the registers, else none.
template <int RB, int VB>
constexpr AddScaledBlocksFn BlockFn() {
  if constexpr (RB * VB <= kBlockAccumulators) {
    return AddScaledBlocks<RB, VB>;
  } else {
    return nullptr;
  }
}

template <int RB, int... V>
constexpr std::array<AddScaledBlocksFn, sizeof...(V)> BlockRow(std::integer_sequence<int, V...>) {
  return {BlockFn<RB, V + 1>()...};
}

template <int... R>
constexpr auto BlockTable(std::integer_sequence<int, R...>) {
  return std::array{BlockRow<R + 1>(std::make_integer_sequence<int, kBlockVectors>())...};
}

constexpr auto kAddScaledBlocks = BlockTable(std::make_integer_sequence<int, kBlockRows>());

// How a sum over blocks of `rows` x `vectors` vectors is cut into passes over the list: the
// tile of accumulators (rows x vectors, within kBlockAccumulators) that needs the fewest.
struct BlockTiles {
  int64_t rows, vectors;  // the whole block
  int64_t tile_rows = 1, tile_vectors = 1;
  BlockTiles(int64_t rows, int64_t vectors) : rows(rows), vectors(vectors) {
    int64_t best = -1;
    for (int64_t tv = std::min<int64_t>(vectors, kBlockVectors); tv >= 1; --tv) {
      const int64_t tr = std::min<int64_t>({rows, kBlockRows, kBlockAccumulators / tv});
      const int64_t passes = ((rows + tr - 1) / tr) * ((vectors + tv - 1) / tv);
      if (best < 0 || passes < best) best = passes, tile_rows = tr, tile_vectors = tv;
    }
  }
  // Runs the sum (AddScaledBlocks' arguments, `tail` masking each row's last vector) pass by pass.
  void Add(const float* const* base, const float* scale, int64_t count, int64_t stride,
           float* out, int64_t out_stride, const Mask* tail) const {
    if (count == 0) return;
    for (int64_t r0 = 0; r0 < rows; r0 += tile_rows) {
      const int64_t tr = std::min(tile_rows, rows - r0);
      for (int64_t v0 = 0; v0 < vectors; v0 += tile_vectors) {
        const int64_t tv = std::min(tile_vectors, vectors - v0);
        kAddScaledBlocks[tr - 1][tv - 1](base, scale, count, r0 * stride + v0 * kLanes, stride,
                                          out + r0 * out_stride + v0 * kLanes, out_stride,
                                          v0 + tv == vectors ? tail : nullptr);
      }
    }
  }
};

// The weight and bias gradients of a stride-1 convolution followed by a max pool of
// non-overlapping ph x pw windows (jaxlenet's convolution fused with its pool), from the pooled
// output's cotangent and the first position of each window holding the maximum: only that
// position passes a gradient, so each window and filter reads one patch of x instead of ph*pw,
// and a window whose cotangent is zero (a ReLU's, about half of them) reads none.
struct PoolGradShape {
  Shape s;         // the convolution: x (N, H, W, C) padded already, O filters of KH x KW
  int64_t ph, pw;  // the pool's window
  int64_t hp = s.ho() / ph, wp = s.wo() / pw;  // the pooled output's rows and columns
  int32_t positions() const { return static_cast<int32_t>(ph * pw); }
  // Each kernel row of a patch as vectors: the last one reads past the row's KW*C floats, into
  // lanes that are never stored.
  int64_t row_vectors() const { return VectorsFor(s.row()); }
};

ffi::Error ConvPoolParamGrads(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::S32> first, ffi::Buffer<ffi::F32> dmax,
                              ffi::Span<const int64_t> window, ffi::ResultBuffer<ffi::F32> dw,
                              ffi::ResultBuffer<ffi::F32> db) {
  const auto xd = x.dimensions(), fd = first.dimensions(), md = dmax.dimensions(),
             wd = dw->dimensions();
  if (xd.size() != 4 || fd.size() != 4 || md.size() != 4 || wd.size() != 4 ||
      db->dimensions().size() != 1 || window.size() != 2 || window[0] < 1 || window[1] < 1) {
    return ffi::Error::InvalidArgument(
        "conv-pool parameter gradients: x, first, dmax and dw must be 4-D, db 1-D, and the "
        "window 2 sizes >= 1");
  }
  const PoolGradShape g{{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[2]}, window[0], window[1]};
  const Shape& s = g.s;
  if (s.ho() < 1 || s.wo() < 1 || fd[0] != s.n || fd[1] != g.hp || fd[2] != g.wp ||
      fd[3] != s.o || md[0] != fd[0] || md[1] != fd[1] || md[2] != fd[2] || md[3] != fd[3] ||
      wd[3] != s.c || db->dimensions()[0] != s.o || g.hp < 1 || g.wp < 1) {
    return ffi::Error::InvalidArgument(
        "conv-pool parameter gradients: expected x (N, H, W, C), first and dmax (N, (H-KH+1) / "
        "ph, (W-KW+1) / pw, O), dw (O, KH, KW, C) and db (O)");
  }
  const int32_t positions = g.positions();
  const int64_t windows = g.hp * g.wp;
  // Where each window position, and each window's corner, starts in an image of x.
  std::vector<int64_t> position(positions), corner(windows);
  for (int32_t p = 0; p < positions; ++p) position[p] = ((p / g.pw) * s.w + p % g.pw) * s.c;
  for (int64_t k = 0; k < windows; ++k)
    corner[k] = (g.ph * (k / g.wp) * s.w + g.pw * (k % g.wp)) * s.c;
  // The last image, with room after it: a patch's last vector reads up to kLanes - 1 floats past
  // its kernel row, and so past the image (into the next one, but for the last).
  const int64_t image = s.h * s.w * s.c, cells = windows * s.o;
  const float* xp = x.typed_data();
  std::vector<float> last(image + kLanes, 0.0f);
  if (s.n > 0) std::copy(xp + (s.n - 1) * image, xp + s.n * image, last.begin());
  const int64_t row = g.row_vectors() * kLanes, size = s.o * s.kh * row;
  const BlockTiles tiles(s.kh, g.row_vectors());
  // The weight gradient (O, KH, row), then the bias gradient (O).
  const std::vector<float> total =
      SumOverImages(pool, s.n, size + s.o, [&](int64_t n0, int64_t n1, float* sum) {
        std::vector<float> bias(s.o), scales(windows);
        std::vector<const float*> patches(windows);
        for (int64_t n = n0; n < n1; ++n) {
          const float* xn = n == s.n - 1 ? last.data() : xp + n * image;
          const int32_t* fn = first.typed_data() + n * cells;
          const float* mn = dmax.typed_data() + n * cells;
          for (int64_t o = 0; o < s.o; ++o) {
            // The filter's windows that pass a gradient, listed without a branch to mispredict.
            int64_t count = 0;
            for (int64_t k = 0; k < windows; ++k) {
              const int32_t p = fn[k * s.o + o];
              const float m = mn[k * s.o + o];
              const bool valid = HoldsMax(p, positions);
              patches[count] = xn + corner[k] + position[valid ? p : 0];
              scales[count] = m;
              count += valid & (m != 0.0f);  // nor a zero cotangent
            }
            tiles.Add(patches.data(), scales.data(), count, s.w * s.c, sum + o * s.kh * row, row,
                      nullptr);
          }
          // The bias gradient image by image, as ParamGrads sums it.
          std::fill(bias.begin(), bias.end(), 0.0f);
          for (int64_t k = 0; k < cells; k += s.o)
            for (int64_t o = 0; o < s.o; ++o)
              bias[o] += HoldsMax(fn[k + o], positions) ? mn[k + o] : 0.0f;
          for (int64_t o = 0; o < s.o; ++o) sum[size + o] += bias[o];
        }
      });
  // Each kernel row's KW*C floats of its row_vectors() * kLanes.
  float* w_out = dw->typed_data();
  for (int64_t r = 0; r < s.o * s.kh; ++r)
    std::copy(total.begin() + r * row, total.begin() + r * row + s.row(), w_out + r * s.row());
  std::copy(total.begin() + size, total.end(), db->typed_data());
  return ffi::Error::Success();
}

// The filters of a forward convolution in chunks of a few vectors, each chunk repacked so that a
// tile's loads are whole, aligned vectors: for every kernel tap (i, j, c) in order, the chunk's
// filters' weights, zero past the last filter, then their biases likewise. Masked loads inside
// the tap loop made LeNet's first layer 1.3x slower on Zen 3, and rows of O floats put half the
// loads across two cache lines.
struct FilterChunk {
  int64_t o0;       // the first filter
  int64_t len;      // filters in the chunk, at most kLanes * vectors
  int vectors;
  Mask last;        // the last vector's filters
  const float* wb;  // taps * vectors weight vectors, then `vectors` bias vectors
};

// Floats of vectors per chunk: 5 with AVX-512; with AVX2, 3 where the filters fit in 3 (the
// input gradient's 20 channels), else 2.
int ChunkVectors(int64_t filters) {
  if (kWide) return 5;
  return VectorsFor(filters) == 3 ? 3 : 2;
}

class PackedFilters {
 public:
  // wt (KH, KW, C, O) and b (O) of shape s.
  PackedFilters(const Shape& s, const float* wt, const float* b) {
    const int64_t taps = s.kh * s.row(), chunk = kLanes * ChunkVectors(s.o);
    int64_t size = 0;
    for (int64_t o0 = 0; o0 < s.o; o0 += chunk)
      size += (taps + 1) * VectorsFor(std::min(chunk, s.o - o0));
    data_.assign((size + 1) * kLanes, 0.0f);
    // Aligned to a vector: the vector's worth of floats spare at the end leaves room.
    const auto start = reinterpret_cast<std::uintptr_t>(data_.data());
    float* out = data_.data() + (-start / sizeof(float)) % kLanes;
    for (int64_t o0 = 0; o0 < s.o; o0 += chunk) {
      const int64_t len = std::min(chunk, s.o - o0);
      const int vectors = VectorsFor(len);
      chunks_.push_back({o0, len, vectors, LastLanes(len), out});
      for (int64_t t = 0; t <= taps; ++t, out += kLanes * vectors)
        for (int64_t k = 0; k < len; ++k) out[k] = t < taps ? wt[t * s.o + o0 + k] : b[o0 + k];
    }
  }
  const std::vector<FilterChunk>& chunks() const { return chunks_; }

 private:
  std::vector<float> data_;
  std::vector<FilterChunk> chunks_;
};

// Output positions [w, w + PB) of row h of one image into that row's output `row` (Wo, O), for
// the filters of chunk f (NV vectors), bias included.
template <int PB, int NV>
void ForwardTile(const Shape& s, const float* x, const FilterChunk& f, float* row, int64_t h,
                 int64_t w) {
  const int64_t taps = s.kh * s.row();
  Vec a[PB][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const Vec bias = Load(f.wb + kLanes * (taps * NV + v));
#pragma GCC unroll 16
    for (int p = 0; p < PB; ++p) a[p][v] = bias;
  }
  const int64_t i0 = std::max<int64_t>(0, s.pad_top - h),
                i1 = std::min(s.kh, s.h - s.pad_bottom - h),
                j0 = std::max<int64_t>(0, s.pad_left - (w + PB - 1)),
                j1 = std::min(s.kw, s.w - s.pad_right - w);
  for (int64_t i = i0; i < i1; ++i) {
    const float* xr = x + ((h + i) * s.w + w) * s.c;
    const float* wr = f.wb + (i * s.row() + j0 * s.c) * kLanes * NV;
    for (int64_t jc = j0 * s.c; jc < j1 * s.c; ++jc, wr += kLanes * NV) {  // (j, c): contiguous
      Vec wv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) wv[v] = Load(wr + kLanes * v);
#pragma GCC unroll 16
      for (int p = 0; p < PB; ++p) {
        const Vec xb = Broadcast(xr[p * s.c + jc]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) a[p][v] = MulAdd(xb, wv[v], a[p][v]);
      }
    }
  }
  float* out = row + w * s.o + f.o0;
  const bool whole = f.len == kLanes * NV;
#pragma GCC unroll 16
  for (int p = 0; p < PB; ++p, out += s.o) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v) Store(out + kLanes * v, a[p][v]);
    if (whole) {
      Store(out + kLanes * (NV - 1), a[p][NV - 1]);
    } else {
      StoreFirst(f.last, out + kLanes * (NV - 1), a[p][NV - 1]);
    }
  }
}

using ForwardTileFn = void (*)(const Shape&, const float*, const FilterChunk&, float*, int64_t,
                               int64_t);

// Accumulator registers per forward tile (positions x vectors): 24 of AVX-512's 32, 12 of
// AVX2's 16; the rest hold a tap's weight vectors and the broadcast input.
constexpr int kAccumulators = kWide ? 24 : 12;
constexpr int kTilePositions[] = {12, 10, 8, 6, 5, 4, 3, 2, 1};

template <int NV, int PB>
ForwardTileFn ForwardTileIfFits() {
  if constexpr (PB * NV <= kAccumulators) {
    return ForwardTile<PB, NV>;
  } else {
    return nullptr;
  }
}

template <int NV>
ForwardTileFn ForwardTileFor(int pb) {
  switch (pb) {
    case 12: return ForwardTileIfFits<NV, 12>();
    case 10: return ForwardTileIfFits<NV, 10>();
    case 8: return ForwardTileIfFits<NV, 8>();
    case 6: return ForwardTileIfFits<NV, 6>();
    case 5: return ForwardTileIfFits<NV, 5>();
    case 4: return ForwardTileIfFits<NV, 4>();
    case 3: return ForwardTileIfFits<NV, 3>();
    case 2: return ForwardTileIfFits<NV, 2>();
    default: return ForwardTileIfFits<NV, 1>();
  }
}

ForwardTileFn ForwardTileFor(int pb, int nv) {
  switch (nv) {
    case 1: return ForwardTileFor<1>(pb);
    case 2: return ForwardTileFor<2>(pb);
    case 3: return ForwardTileFor<3>(pb);
    case 4: return ForwardTileFor<4>(pb);
    default: return ForwardTileFor<5>(pb);
  }
}

// Output positions for the next tile of `vectors` vectors, of the `left` positions of a row: as
// many as fit in the accumulators, but in tiles of equal size where the row takes several, so
// that no short tile waits on its few accumulators' latency (a row of 10 in tiles of 5 and 5,
// not 6 and 4; 10, not 8 and 2).
int TilePositions(int vectors, int64_t left) {
  int most = 1;
  for (const int pb : kTilePositions)
    if (pb * vectors <= kAccumulators) {
      most = pb;
      break;
    }
  const int64_t tiles = (left + most - 1) / most, even = (left + tiles - 1) / tiles;
  for (const int pb : kTilePositions)
    if (pb <= even) return pb;
  return 1;
}

// Output row h of image x (H, W, C) into row (Wo, O).
void ForwardRow(const Shape& s, const float* x, const PackedFilters& filters, float* row,
                int64_t h) {
  for (const FilterChunk& f : filters.chunks()) {
    for (int64_t w = 0; w < s.wo();) {
      const int pb = TilePositions(f.vectors, s.wo() - w);
      ForwardTileFor(pb, f.vectors)(s, x, f, row, h, w);
      w += pb;
    }
  }
}

// Image n of x (N, H, W, C) as the forward tiles read it (H and W without s's padding): in x
// where s has no padding, else copied into `padded` (s.h, s.w, C), whose border stays zero.
// XLA's pad wrote the whole padded batch out instead (10 MB for LeNet's input gradient).
const float* PaddedImage(const Shape& s, const float* x, int64_t n, std::vector<float>& padded) {
  if (!s.padded()) return x + n * s.h * s.w * s.c;
  const int64_t h = s.h - s.pad_top - s.pad_bottom, w = s.w - s.pad_left - s.pad_right,
                row = w * s.c;
  if (padded.empty()) padded.assign(s.h * s.w * s.c, 0.0f);
  const float* image = x + n * h * row;
  for (int64_t r = 0; r < h; ++r)
    std::copy(image + r * row, image + (r + 1) * row,
              padded.data() + ((s.pad_top + r) * s.w + s.pad_left) * s.c);
  return padded.data();
}

void ForwardImages(const Shape& s, const float* x, const PackedFilters& filters, float* y,
                   int64_t n0, int64_t n1) {
  std::vector<float> padded;
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = PaddedImage(s, x, n, padded);
    float* yn = y + n * s.ho() * s.wo() * s.o;
    for (int64_t h = 0; h < s.ho(); ++h) ForwardRow(s, xn, filters, yn + h * s.wo() * s.o, h);
  }
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wt,
                       ffi::Buffer<ffi::F32> b, ffi::Span<const int64_t> padding,
                       ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = wt.dimensions(), bd = b.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || bd.size() != 1 || yd.size() != 4) {
    return ffi::Error::InvalidArgument("conv forward: x, wt and y must be 4-D, b 1-D");
  }
  if (!IsPadding(padding)) {
    return ffi::Error::InvalidArgument(
        "conv forward: padding must be 4 counts >= 0 (rows top, bottom, columns left, right)");
  }
  const Shape s = PaddedShape(xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1], padding);
  if (wd[2] != s.c || bd[0] != s.o || yd[0] != s.n || yd[1] != s.ho() || yd[2] != s.wo() ||
      yd[3] != s.o || s.ho() < 1 || s.wo() < 1) {
    return ffi::Error::InvalidArgument(
        "conv forward: expected x (N, H, W, C), wt (KH, KW, C, O), b (O) and "
        "y (N, H+pads-KH+1, W+pads-KW+1, O)");
  }
  const PackedFilters filters(s, wt.typed_data(), b.typed_data());
  ParallelFor(pool, s.n, std::min(s.n, kImageChunks), [&](int64_t n0, int64_t n1, int64_t) {
    ForwardImages(s, x.typed_data(), filters, y->typed_data(), n0, n1);
  });
  return ffi::Error::Success();
}

// dy times the weight of a convolution of shape s, as a 1x1 convolution of dy (Ho, Wo, O) with
// KH*KW*C filters.
Shape ProductShape(const Shape& s) { return {s.n, s.ho(), s.wo(), s.o, s.kh * s.kw * s.c, 1, 1}; }

// The input gradient of a stride-1 convolution, one row of dy at a time: the row (Wo, O) times
// the weight (O, KH*KW*C) gives every output position's contribution to the KH*KW input positions
// it read, z (Wo, KH*KW*C), by the forward tiles; each is then added into dx where it falls
// inside the image. The convolution of the padded dy with the flipped kernel that the forward
// kernel ran before multiplied dy's zero border too: for LeNet's second layer, 1.44x the
// arithmetic and 1.2x the time.
void InputGradImages(const Shape& s, const float* dy, const PackedFilters& weights, float* dx,
                     int64_t n0, int64_t n1) {
  // s: the forward convolution's (h, w and pads those of x padded); g: dy times the weight.
  const int64_t h = s.h - s.pad_top - s.pad_bottom, w = s.w - s.pad_left - s.pad_right;
  const Shape g = ProductShape(s);
  std::vector<float> z(g.wo() * g.o);
  for (int64_t n = n0; n < n1; ++n) {
    float* dxn = dx + n * h * w * s.c;
    std::fill(dxn, dxn + h * w * s.c, 0.0f);
    for (int64_t r = 0; r < g.h; ++r) {
      ForwardRow(g, dy + n * g.h * g.w * g.c, weights, z.data(), r);
      for (int64_t i = 0; i < s.kh; ++i) {
        const int64_t y = r + i - s.pad_top;
        if (y < 0 || y >= h) continue;
        for (int64_t q = 0; q < g.w; ++q)
          for (int64_t j = 0; j < s.kw; ++j) {
            const int64_t x = q + j - s.pad_left;
            if (x < 0 || x >= w) continue;
            const float* __restrict from = z.data() + q * g.o + (i * s.kw + j) * s.c;
            float* __restrict to = dxn + (y * w + x) * s.c;
            for (int64_t c = 0; c < s.c; ++c) to[c] += from[c];
          }
      }
    }
  }
}

// dx (N, H, W, C) of a stride-1 convolution of x zero-padded by `padding` (rows top, bottom,
// columns left, right), given its output's cotangent dy (N, H+pads-KH+1, W+pads-KW+1, O) and
// its weight as wr (O, KH, KW, C).
ffi::Error ConvInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> wr,
                         ffi::Span<const int64_t> padding, ffi::ResultBuffer<ffi::F32> dx) {
  const auto dd = dy.dimensions(), wd = wr.dimensions(), xd = dx->dimensions();
  if (dd.size() != 4 || wd.size() != 4 || xd.size() != 4) {
    return ffi::Error::InvalidArgument("conv input gradient: dy, wr and dx must be 4-D");
  }
  if (!IsPadding(padding)) {
    return ffi::Error::InvalidArgument(
        "conv input gradient: padding must be 4 counts >= 0 (rows top, bottom, columns left, "
        "right)");
  }
  const Shape s = PaddedShape(xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[2], padding);
  if (wd[3] != s.c || dd[0] != s.n || dd[1] != s.ho() || dd[2] != s.wo() || dd[3] != s.o ||
      s.ho() < 1 || s.wo() < 1) {
    return ffi::Error::InvalidArgument(
        "conv input gradient: expected dy (N, H+pads-KH+1, W+pads-KW+1, O), wr (O, KH, KW, C) "
        "and dx (N, H, W, C)");
  }
  const Shape g = ProductShape(s);
  const std::vector<float> no_bias(g.o, 0.0f);
  const PackedFilters weights(g, wr.typed_data(), no_bias.data());
  ParallelFor(pool, s.n, std::min(s.n, kImageChunks), [&](int64_t n0, int64_t n1, int64_t) {
    InputGradImages(s, dy.typed_data(), weights, dx->typed_data(), n0, n1);
  });
  return ffi::Error::Success();
}

// The max over p of cell[p * filters + o], p < P = `positions`, for each o < filters, into top,
// and the first p holding it into first (P where the max is NaN: a NaN, once there, stays). A
// vector of filters at a time, the last one overlapping the one before rather than masked
// (masked stores are slow on Zen 3); GCC's own vectorization of these loops ran 5x slower, on
// branches.
void MaxOverPositions(const float* cell, int32_t positions, int64_t filters, bool relu,
                      float* top, int32_t* first) {
  if (filters < kLanes) {
    for (int64_t o = 0; o < filters; ++o) {
      float t = cell[o];
      for (int32_t p = 1; p < positions; ++p) {
        const float v = cell[p * filters + o];
        t = (v > t) | (v != v) ? v : t;
      }
      int32_t f = positions;
      for (int32_t p = positions - 1; p >= 0; --p) f = cell[p * filters + o] == t ? p : f;
      top[o] = relu && !(t > 0) ? 0.0f : t;  // XLA's ReLU: NaN gives 0
      first[o] = f;
    }
    return;
  }
  for (int64_t o = 0;; o = std::min(o + kLanes, filters - kLanes)) {
    Vec t = Load(cell + o);
    for (int32_t p = 1; p < positions; ++p) {
      const Vec v = Load(cell + p * filters + o);
      t = Select(Either(Greater(v, t), IsNaN(v)), v, t);
    }
    Ints f = BroadcastInt(positions);
    for (int32_t p = positions - 1; p >= 0; --p)
      f = SelectInts(Equal(Load(cell + p * filters + o), t), BroadcastInt(p), f);
    Store(top + o, relu ? Select(Greater(t, Zero()), t, Zero()) : t);
    StoreInts(first + o, f);
    if (o == filters - kLanes) break;
  }
}

// A convolution whose P*O filters are P positions of a max pool's windows times O filters
// (jaxlenet's convolution fused with its pool), and the max over the positions: for x (N, H, W,
// C), wt (KH, KW, C, P*O) and b (P*O), top (N, H-KH+1, W-KW+1, O) is the max over p of filter
// p*O + o (NaN where one of them is), and first (same shape, int32) the first p holding it (P
// where the max is NaN). The convolution's output is written one row at a time into a buffer in
// cache, not out whole (12 MB for LeNet's first layer, which XLA then read three times). With
// `relu` (0 or 1), top is the ReLU of that max (0 where it is NaN, as XLA's ReLU): the pass of
// XLA's over the whole output that it saves cost ~5% of LeNet's training step.
ffi::Error ConvMaxForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wt,
                          ffi::Buffer<ffi::F32> b, int64_t relu, ffi::ResultBuffer<ffi::F32> top,
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
  const PackedFilters packed(s, wt.typed_data(), b.typed_data());
  ParallelFor(pool, s.n, std::min(s.n, kImageChunks), [&](int64_t n0, int64_t n1, int64_t) {
    std::vector<float> row(s.wo() * s.o);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t h = 0; h < s.ho(); ++h) {
        ForwardRow(s, xp + n * s.h * s.w * s.c, packed, row.data(), h);
        const int64_t out = ((n * s.ho() + h) * s.wo()) * filters;
        for (int64_t w = 0; w < s.wo(); ++w)
          MaxOverPositions(row.data() + w * s.o, positions, filters, relu != 0,
                           topp + out + w * filters, firstp + out + w * filters);
      }
    }
  });
  return ffi::Error::Success();
}

// A stride-1 convolution of x (N, H, W, C) with wt (KH, KW, C, O) and b (O), then a max pool of
// non-overlapping ph x pw windows (attribute `window`) over its output, and with `relu` (0 or 1)
// the ReLU of each max: top (N, Hp, Wp, O), Hp = (H-KH+1) / ph and Wp likewise, and first (same
// shape, int32), the first position p = pi * pw + pj of the window holding the max (ph * pw where
// it is NaN), as JaxlenetConvPoolParamGrads takes it. The convolution's output is computed ph
// rows at a time into a buffer in cache and never written out (XLA's pool read it twice, ~5% of
// LeNet's step); rows and columns that fill no window are not computed.
ffi::Error ConvPoolForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wt,
                           ffi::Buffer<ffi::F32> b, ffi::Span<const int64_t> window, int64_t relu,
                           ffi::ResultBuffer<ffi::F32> top, ffi::ResultBuffer<ffi::S32> first) {
  const auto xd = x.dimensions(), wd = wt.dimensions(), bd = b.dimensions(),
             td = top->dimensions(), fd = first->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || bd.size() != 1 || td.size() != 4 || fd.size() != 4 ||
      window.size() != 2 || window[0] < 1 || window[1] < 1) {
    return ffi::Error::InvalidArgument(
        "conv-pool forward: x, wt, top and first must be 4-D, b 1-D, window 2 sizes >= 1");
  }
  const Shape s{xd[0], xd[1], xd[2], xd[3], wd[3], wd[0], wd[1]};
  const int64_t ph = window[0], pw = window[1];
  if (wd[2] != s.c || bd[0] != s.o || s.ho() < ph || s.wo() < pw || td[0] != s.n ||
      td[1] != s.ho() / ph || td[2] != s.wo() / pw || td[3] != s.o || fd[0] != td[0] ||
      fd[1] != td[1] || fd[2] != td[2] || fd[3] != td[3]) {
    return ffi::Error::InvalidArgument(
        "conv-pool forward: expected x (N, H, W, C), wt (KH, KW, C, O), b (O), and top and "
        "first (N, (H-KH+1) / ph, (W-KW+1) / pw, O)");
  }
  const int64_t hp = td[1], wp = td[2];
  const int32_t positions = static_cast<int32_t>(ph * pw);
  const float* xp = x.typed_data();
  float* topp = top->typed_data();
  int32_t* firstp = first->typed_data();
  const PackedFilters packed(s, wt.typed_data(), b.typed_data());
  ParallelFor(pool, s.n, std::min(s.n, kImageChunks), [&](int64_t n0, int64_t n1, int64_t) {
    std::vector<float> rows(ph * s.wo() * s.o), cell(positions * s.o);
    for (int64_t n = n0; n < n1; ++n) {
      const float* xn = xp + n * s.h * s.w * s.c;
      for (int64_t i = 0; i < hp; ++i) {
        for (int64_t r = 0; r < ph; ++r)
          ForwardRow(s, xn, packed, rows.data() + r * s.wo() * s.o, i * ph + r);
        const int64_t out = ((n * hp + i) * wp) * s.o;
        for (int64_t j = 0; j < wp; ++j) {
          for (int64_t pi = 0; pi < ph; ++pi)
            for (int64_t pj = 0; pj < pw; ++pj) {
              const float* from = rows.data() + (pi * s.wo() + j * pw + pj) * s.o;
              std::copy(from, from + s.o, cell.data() + (pi * pw + pj) * s.o);
            }
          MaxOverPositions(cell.data(), positions, s.o, relu != 0, topp + out + j * s.o,
                           firstp + out + j * s.o);
        }
      }
    }
  });
  return ffi::Error::Success();
}

// The input gradient of a stride-1 convolution followed by a max pool of non-overlapping ph x pw
// windows (attribute `window`), from the pooled output's cotangent dmax (N, Hp, Wp, O) and the
// first position p = pi * pw + pj of each window holding the max, first (same shape; ph * pw
// where it is NaN: the window passes nothing):
//   dx[n, ph*h + pi + i, pw*w + pj + j, c] += dmax[n, h, w, o] * wr[o, i, j, c]
// for each window (h, w) and filter o, wr (O, KH, KW, C), dx (N, H, W, C) (x padded already;
// rows and columns no window reads stay 0). Only that position of a window passes a gradient,
// and only filters whose cotangent there is not zero: a quarter of the dense input gradient's
// arithmetic for 2x2 windows, whose cotangent XLA wrote out first, and about half of that
// behind a ReLU. Each image's sums run in one fixed order (windows row by row, positions,
// filters).
ffi::Error ConvPoolInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> first,
                             ffi::Buffer<ffi::F32> dmax, ffi::Buffer<ffi::F32> wr,
                             ffi::Span<const int64_t> window, ffi::ResultBuffer<ffi::F32> dx) {
  const auto fd = first.dimensions(), md = dmax.dimensions(), wd = wr.dimensions(),
             xd = dx->dimensions();
  if (fd.size() != 4 || md.size() != 4 || wd.size() != 4 || xd.size() != 4 ||
      window.size() != 2 || window[0] < 1 || window[1] < 1) {
    return ffi::Error::InvalidArgument(
        "conv-pool input gradient: first, dmax, wr and dx must be 4-D, window 2 sizes >= 1");
  }
  const int64_t n_images = xd[0], h = xd[1], w = xd[2], c = xd[3], filters = wd[0], kh = wd[1],
                kw = wd[2], ph = window[0], pw = window[1], hp = fd[1], wpool = fd[2];
  if (wd[3] != c || fd[0] != n_images || fd[3] != filters || md[0] != fd[0] ||
      md[1] != fd[1] || md[2] != fd[2] || md[3] != fd[3] || h < kh || w < kw ||
      hp != (h - kh + 1) / ph || wpool != (w - kw + 1) / pw || hp < 1 || wpool < 1) {
    return ffi::Error::InvalidArgument(
        "conv-pool input gradient: expected first and dmax (N, (H-KH+1) / ph, (W-KW+1) / pw, "
        "O), wr (O, KH, KW, C) and dx (N, H, W, C)");
  }
  const int32_t positions = static_cast<int32_t>(ph * pw);
  const int64_t row = kw * c, rvp = VectorsFor(row), image = h * w * c,
                cells = hp * wpool * filters;
  // Each kernel row padded with zeros to whole vectors, so that every weight load is whole.
  std::vector<float> padded(filters * kh * rvp * kLanes, 0.0f);
  for (int64_t o = 0; o < filters; ++o)
    for (int64_t r = 0; r < kh; ++r)
      std::copy(wr.typed_data() + (o * kh + r) * row, wr.typed_data() + (o * kh + r + 1) * row,
                padded.begin() + (o * kh + r) * rvp * kLanes);
  const BlockTiles tiles(kh, rvp);
  const Mask tail = LastLanes(row);
  float* dxp = dx->typed_data();
  ParallelFor(pool, n_images, std::min(n_images, kImageChunks), [&](int64_t n0, int64_t n1,
                                                                    int64_t) {
    // For each window position, the filters whose maximum it holds: their weights and cotangents.
    std::vector<const float*> weights(positions * filters);
    std::vector<float> scales(positions * filters);
    std::vector<int64_t> counts(positions);
    for (int64_t n = n0; n < n1; ++n) {
      float* dxn = dxp + n * image;
      std::fill(dxn, dxn + image, 0.0f);
      const int32_t* fn = first.typed_data() + n * cells;
      const float* mn = dmax.typed_data() + n * cells;
      for (int64_t i = 0; i < hp; ++i) {
        for (int64_t j = 0; j < wpool; ++j) {
          const int64_t cell = (i * wpool + j) * filters;
          std::fill(counts.begin(), counts.end(), 0);
          for (int64_t o = 0; o < filters; ++o) {
            const int32_t p = fn[cell + o];
            const float m = mn[cell + o];
            const bool valid = HoldsMax(p, positions);
            const int64_t q = valid ? p : 0;
            weights[q * filters + counts[q]] = padded.data() + o * kh * rvp * kLanes;
            scales[q * filters + counts[q]] = m;
            counts[q] += valid & (m != 0.0f);  // nor a zero cotangent
          }
          for (int32_t p = 0; p < positions; ++p) {
            float* corner = dxn + ((ph * i + p / pw) * w + pw * j + p % pw) * c;
            tiles.Add(weights.data() + p * filters, scales.data() + p * filters, counts[p],
                      rvp * kLanes, corner, w * c, row % kLanes != 0 ? &tail : nullptr);
          }
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
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvInputGrad, ConvInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvPoolParamGrads, ConvPoolParamGrads,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvPoolInputGrad, ConvPoolInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvPoolForward, ConvPoolForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Attr<int64_t>("relu")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlenetConvMaxForward, ConvMaxForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("relu")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

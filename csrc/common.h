// Shared pieces of the CPU kernels: the plain-C++ interface between the ATen glue
// (bindings.cpp) and the row kernels (topd_select.cpp, topd_kl.cpp), and the SIMD helpers.
//
// The kernel translation units include no ATen header (they compile in about a second).
// Hot row functions are written once as always_inline templates over GCC vector extensions
// and instantiated inside wrappers compiled for AVX-512, AVX2+FMA and the baseline ISA;
// the widest one the CPU supports is picked at run time (never -march=native).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#pragma GCC diagnostic ignored "-Wpsabi"

namespace tsf {

// ------------------------------------------------------------------------ interface

enum DType : int { kF32 = 0, kF64 = 1, kBF16 = 2, kF16 = 3 };

struct SelectArgs {
  const void* x;       // [N, V] logits, row-contiguous, dtype `dtype`
  int64_t vocab;
  int64_t d;
  int dtype;
  double temperature;
  int32_t* out_idx;    // [N, d]
  float* out_lp;       // [N, d]
};

struct KLArgs {
  const void* x;            // [N, V] logits
  void* g;                  // [N, V] gradient (same dtype) or nullptr; may alias x
  int64_t vocab;
  int64_t d;
  int dtype;
  const int64_t* idx;       // [N, d]
  const float* w;           // [N, d]
  const float* cst;         // [N]
  const float* wsum;        // [N]
  const float* p_tail;      // [N] or nullptr (bucket tail)
  const bool* first;        // [N, d] or nullptr
  const int64_t* labels;    // [N] or nullptr; < 0 = no CE term
  double ce_weight;
  const bool* row_mask;     // [N]
  double temperature;
  double grad_scale;
  void* loss;               // [N]: double for kF64 logits, else float
};

// Rows [r0, r1). Both return the number of rows skipped because of an out-of-range index.
int64_t select_rows(const SelectArgs& a, int64_t r0, int64_t r1);
int64_t kl_rows(const KLArgs& a, int64_t r0, int64_t r1);
// y[0:n) = vexp(x[0:n)) on the kernels' ISA path (vexp.cpp; for the accuracy test).
void exp_f32(const float* x, float* y, int64_t n);
// "avx512", "avx2" or "default": the code path picked for this CPU (TSUBASA_CPU_ISA overrides).
const char* isa_name();
int isa_level();

constexpr double kTailEps = 1e-12;

// ------------------------------------------------------------------------ SIMD helpers

#define TSF_INLINE inline __attribute__((always_inline))
#define TSF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define TSF_AVX2 __attribute__((target("avx2,fma")))

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

// Vector types per element type and width VB in bytes: 64 for the AVX-512 path, 32 for
// AVX2, 16 for the baseline. Each path must use its native width: GCC splits wider generic
// vectors, but lowers their comparisons and selects (max, clamps, finiteness checks) to
// scalar code, which made the AVX2 path several times slower than plain torch ops.
template <class C, int VB = 64> struct VT;
template <int VB> struct VT<float, VB> {
  typedef float V __attribute__((vector_size(VB)));
  typedef int32_t I __attribute__((vector_size(VB)));  // lane mask type of a comparison
  static constexpr int W = VB / 4;
};
template <int VB> struct VT<double, VB> {
  typedef double V __attribute__((vector_size(VB)));
  typedef int64_t I __attribute__((vector_size(VB)));
  static constexpr int W = VB / 8;
};

template <class V> using ElemT = std::decay_t<decltype(std::declval<V>()[0])>;
template <class V> constexpr int lanes() { return int(sizeof(V) / sizeof(ElemT<V>)); }

// Elements per block: the block buffer (8 KiB for fp32) stays in L1 between the passes.
constexpr int64_t kBlock = 2048;

template <class V, class C> TSF_INLINE V splat(C c) {
  V v = {};
  return v + c;
}

template <class V, class C> TSF_INLINE V vload(const C* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <class V, class C> TSF_INLINE void vstore(C* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }

template <class V> TSF_INLINE V vmax(V a, V b) { return a > b ? a : b; }

template <class C, class V> TSF_INLINE C hsum(V v) {
  C s = 0;
  for (int l = 0; l < lanes<V>(); ++l) s += v[l];
  return s;
}

template <class C, class V> TSF_INLINE C hmax(V v) {
  C m = v[0];
  for (int l = 1; l < lanes<V>(); ++l) m = v[l] > m ? v[l] : m;
  return m;
}

// 2^(j/16) rounded to float, j = 0..15: the table of the 8- and 16-lane exp below.
constexpr float kExp2Sixteenths[16] = {
    0x1.000000p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f, 0x1.3dea64p+0f,
    0x1.4bfdaep+0f, 0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};

// Branch-free exp, about 1 ulp on [ln 2^-126, 88] (float; measured over every 37th float of
// [ln 2^-126, 0]: 1.06 ulp for 16 lanes, 0.90 for 8, 1.0 for 4). Exact 0 below that (so -inf
// gives 0), exp(88) above 88 (+inf too; the kernels only pass z - m <= 0), NaN stays NaN. With 16 or 8 float lanes (AVX-512, AVX2): x = (n / L) ln 2 + r, 2^(j/L)
// for j = n mod L from a table in one register (one vpermps), 2^(n div L) through the
// exponent bits, exp(r) - 1 on |r| <= ln 2 / (2L) by a degree-3 (L = 16) or degree-4 (L = 8)
// polynomial, finished by one multiply-add: 18-23 % faster than Cephes' degree-6 polynomial
// on the full ln 2 range, which the 4-lane baseline keeps (no variable lane permute in SSE2).
template <class V> TSF_INLINE V vexp(V x) {
  typedef ElemT<V> C;
  if constexpr (std::is_same_v<C, double>) {
    // Double precision: libm per lane (float64 inputs are the accurate path, not the fast one).
    V y;
    for (int l = 0; l < lanes<V>(); ++l) y[l] = std::exp(x[l]);
    return y;
  } else if constexpr (lanes<V>() == 16 || lanes<V>() == 8) {
    constexpr int L = lanes<V>();
    typedef int32_t I __attribute__((vector_size(sizeof(V))));
    V xc = x > splat<V>(88.0f) ? splat<V>(88.0f) : x;  // NaN fails both tests: stays NaN
    const V lo = splat<V>(-87.33654f);                 // ln 2^-126
    xc = xc < lo ? lo : xc;
    const V magic = splat<V>(12582912.0f);             // 1.5 * 2^23: round to nearest integer
    const V t = xc * float(L * 1.44269504088896341) + magic;
    const V n = t - magic;
    V r = xc - n * (0.693359375f / L);                  // ln 2 / L in two parts: n * hi is exact
    r = r - n * (-2.12194440e-4f / L);
    V p;  // exp(r) - 1 (Taylor: the truncation is below 1e-8 relative on this range)
    if constexpr (L == 16) {
      p = splat<V>(1.0f / 6) * r + 0.5f;
    } else {
      p = splat<V>(1.0f / 24) * r + (1.0f / 6);
      p = p * r + 0.5f;
    }
    p = (p * r + 1.0f) * r;
    const I ni = (I)t - (I)magic;  // n as an integer, from the mantissa bits
    V tab;
    for (int l = 0; l < L; ++l) tab[l] = kExp2Sixteenths[l * (16 / L)];
    // __builtin_shuffle takes the lane index modulo L: j = n mod L; then add n div L to the
    // exponent (an arithmetic shift floors, so 2^(j/L) * 2^(n div L) = 2^(n/L))
    typedef uint32_t U __attribute__((vector_size(sizeof(V))));
    const U k = (U)(ni >> __builtin_ctz(L)) << 23;  // unsigned: a negative n div L wraps, no UB
    const V s = (V)((U)__builtin_shuffle(tab, ni) + k);
    const V y = s * p + s;
    return x < lo ? splat<V>(0.0f) : y;
  } else {
    typedef int32_t I __attribute__((vector_size(sizeof(V))));
    const V hi = splat<V>(88.0f);
    const V lo = splat<V>(-87.33654f);
    V xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    const V magic = splat<V>(12582912.0f);  // 1.5 * 2^23: round to nearest integer
    const V t = xc * 1.44269504088896341f + magic;
    const V n = t - magic;
    V r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    V y = splat<V>(1.9875691500e-4f);
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    I e = (((I)t - (I)magic) + 127) << 23;  // n as an integer, from the mantissa bits
    y = y * (V)e;
    return x < lo ? splat<V>(0.0f) : y;
  }
}

// Software prefetch of row[at], clamped into the row: the first passes prefetch two blocks
// ahead, one step at a time (the hardware prefetcher alone left them waiting on memory,
// 10-15 % of their time on one thread).
template <class T> TSF_INLINE void prefetch_row(const T* row, int64_t at, int64_t vocab) {
  __builtin_prefetch(row + (at < vocab ? at : vocab - 1), 0, 3);
}

// ------------------------------------------------------------------------ streaming stores

// dst[0:n) = src[0:n) * f with non-temporal stores: the destination lines are not read for
// ownership first and not kept in cache. GCC has no generic non-temporal vector store, so
// it is inline assembly per width (VB = 64 / 32 are only reached from the AVX-512 / AVX2
// wrappers); elsewhere than x86-64 the stores are plain. Callers fence (store_fence) before
// plain stores to the same lines or before returning.
template <int VB>
TSF_INLINE void scale_stream(const float* __restrict src, int64_t n, float f, float* __restrict dst) {
  typedef typename VT<float, VB>::V V;
  constexpr int W = VT<float, VB>::W;
  int64_t i = 0;
#if defined(__x86_64__)
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) % VB) != 0; ++i) dst[i] = src[i] * f;
  const V fv = splat<V>(f);
  for (; i + W <= n; i += W) {
    const V v = vload<V>(src + i) * fv;
    V* p = reinterpret_cast<V*>(dst + i);
    if constexpr (VB == 64) asm volatile("vmovntps %1, %0" : "=m"(*p) : "v"(v));
    else if constexpr (VB == 32) asm volatile("vmovntps %1, %0" : "=m"(*p) : "x"(v));
    else asm volatile("movntps %1, %0" : "=m"(*p) : "x"(v));
  }
#endif
  for (; i < n; ++i) dst[i] = src[i] * f;
}

TSF_INLINE void store_fence() {
#if defined(__x86_64__)
  asm volatile("sfence" ::: "memory");
#endif
}

// ------------------------------------------------------------------------ dtype conversion

TSF_INLINE float bits_to_f32(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
TSF_INLINE uint32_t f32_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}

TSF_INLINE float bf16_to_f32(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }

TSF_INLINE uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u = f32_to_bits(f);
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return f != f ? uint16_t(0x7fc0) : uint16_t(r);
}

// IEEE half <-> float without branches (the FP16 library's formulas).
TSF_INLINE float f16_to_f32(uint16_t h) {
  const uint32_t w = uint32_t(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t res =
      sign | (two_w < (1u << 27) ? f32_to_bits(denormalized) : f32_to_bits(normalized));
  return bits_to_f32(res);
}

TSF_INLINE uint16_t f32_to_f16(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bits_to_f32((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_to_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// Storage type per dtype code.
template <int DT> struct Storage;
template <> struct Storage<kF32> { typedef float T; typedef float C; };
template <> struct Storage<kF64> { typedef double T; typedef double C; };
template <> struct Storage<kBF16> { typedef uint16_t T; typedef float C; };
template <> struct Storage<kF16> { typedef uint16_t T; typedef float C; };

template <int DT> TSF_INLINE typename Storage<DT>::C load1(const typename Storage<DT>::T* p) {
  if constexpr (DT == kBF16) return bf16_to_f32(*p);
  else if constexpr (DT == kF16) return f16_to_f32(*p);
  else return *p;
}

// dst[0:n) = src[0:n) * s  (DIV: / s), converted to the compute type.
template <int DT, bool DIV>
TSF_INLINE void load_block(const typename Storage<DT>::T* __restrict src, int64_t n,
                           typename Storage<DT>::C* __restrict dst, typename Storage<DT>::C s) {
  typedef typename Storage<DT>::C C;
  int64_t i = 0;
  if constexpr (DT == kF32 || DT == kF64) {
    // explicit vectors: a plain loop becomes a (slow, non-streaming) rep movs when s == 1
    typedef typename VT<C>::V V;
    constexpr int W = VT<C>::W;
    const V sv = splat<V>(s);
    for (; i + W <= n; i += W) {
      const V v = vload<V>(src + i);
      vstore(dst + i, DIV ? v / sv : v * sv);
    }
  }
  for (; i < n; ++i) {
    C v;
    if constexpr (DT == kBF16) v = bf16_to_f32(src[i]);
    else if constexpr (DT == kF16) v = f16_to_f32(src[i]);
    else v = src[i];
    dst[i] = DIV ? v / s : v * s;
  }
}

template <int DT> TSF_INLINE void store1(typename Storage<DT>::T* p, double v) {
  if constexpr (DT == kBF16) *p = f32_to_bf16(float(v));
  else if constexpr (DT == kF16) *p = f32_to_f16(float(v));
  else *p = typename Storage<DT>::T(v);
}

template <int DT>
TSF_INLINE void store_block(const typename Storage<DT>::C* __restrict src, int64_t n,
                            typename Storage<DT>::T* __restrict dst) {
  if constexpr (DT == kBF16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
  } else if constexpr (DT == kF16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
  } else {
    std::memcpy(dst, src, size_t(n) * sizeof(*dst));
  }
}

}  // namespace tsf

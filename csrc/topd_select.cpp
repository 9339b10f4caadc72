// Top-d selection with full-vocabulary log-probabilities, one pass over each row.
//
// Per L1-sized block: convert (and divide by the temperature), local max, online
// log-sum-exp (as in topd_kl.cpp), then a running top-d kept in a binary min-heap whose root
// is the current d-th best (ties: the higher index is worse). A block is scanned for
// candidates only when its max beats the root, which after the first blocks is rare.
// Log-probabilities are z - lse (float64), sorted descending, ties to the lower index.
// Rows holding a NaN or an infinity get NaN log-probabilities and indices 0..d-1.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "common.h"

namespace tsf {
namespace {

template <class C> struct Heap {
  C* v;
  int32_t* i;
  int64_t n = 0;

  // a is worse than b: smaller value, or equal value and higher index.
  TSF_INLINE bool worse(C va, int32_t ia, C vb, int32_t ib) const {
    return va < vb || (va == vb && ia > ib);
  }
  TSF_INLINE void push(C val, int32_t id) {
    int64_t k = n++;
    while (k > 0) {
      int64_t p = (k - 1) / 2;
      if (!worse(val, id, v[p], i[p])) break;
      v[k] = v[p];
      i[k] = i[p];
      k = p;
    }
    v[k] = val;
    i[k] = id;
  }
  TSF_INLINE void replace_root(C val, int32_t id) {
    int64_t k = 0;
    for (;;) {
      int64_t c = 2 * k + 1;
      if (c >= n) break;
      if (c + 1 < n && worse(v[c + 1], i[c + 1], v[c], i[c])) ++c;
      if (!worse(v[c], i[c], val, id)) break;
      v[k] = v[c];
      i[k] = i[c];
      k = c;
    }
    v[k] = val;
    i[k] = id;
  }
};

template <int DT, bool DIV, int VB>
TSF_INLINE void select_row(const SelectArgs& a, int64_t r, typename Storage<DT>::C* hv,
                           int32_t* hi, int64_t* order) {
  typedef typename Storage<DT>::T T;
  typedef typename Storage<DT>::C C;
  typedef typename VT<C, VB>::V V;
  constexpr int W = VT<C, VB>::W;
  const int64_t vocab = a.vocab;
  const int64_t d = a.d;
  const T* x = static_cast<const T*>(a.x) + r * vocab;
  int32_t* out_idx = a.out_idx + r * d;
  float* out_lp = a.out_lp + r * d;

  constexpr int64_t kSub = 128;
  alignas(64) C buf[kBlock];
  V submax[kBlock / kSub];
  // DIV: z = x / T. Otherwise T == 1 and z = x * 1, kept as a run-time multiply: a copy loop
  // would be turned into a rep movs, slower here than vector loads and stores.
  const C scale = C(a.temperature);
  const C lowest = std::numeric_limits<C>::lowest();
  Heap<C> heap{hv, hi};

  double s = 0.0;
  C m = -std::numeric_limits<C>::infinity();
  V nz = splat<V>(C(0));
  for (int64_t b0 = 0; b0 < vocab; b0 += kBlock) {
    const int64_t n = std::min<int64_t>(kBlock, vocab - b0);
    const int64_t np = (n + W - 1) / W * W;
    load_block<DT, DIV>(x + b0, n, buf, scale);
    for (int64_t i = n; i < np; ++i) buf[i] = lowest;
    // max per sub-block of kSub elements (kept for the candidate scan) and of the block
    V vm = splat<V>(lowest);
    const int64_t nsub = (np + kSub - 1) / kSub;
    for (int64_t sb = 0; sb < nsub; ++sb) {
      V sm = splat<V>(lowest);
      const int64_t e = std::min<int64_t>(np, (sb + 1) * kSub);
      for (int64_t k = sb * kSub; k < e; k += W) {
        prefetch_row(x, b0 + 2 * kBlock + k, vocab);
        V v = vload<V>(buf + k);
        sm = vmax(sm, v);
        nz += v * C(0);
      }
      submax[sb] = sm;
      vm = vmax(vm, sm);
    }
    const C bm = hmax<C>(vm);
    if (bm > m) {
      s *= std::exp(double(m) - double(bm));
      m = bm;
    }
    const V mv = splat<V>(m);
    V acc0 = splat<V>(C(0)), acc1 = splat<V>(C(0));
    int64_t k = 0;
    for (; k + 2 * W <= np; k += 2 * W) {
      acc0 += vexp(vload<V>(buf + k) - mv);
      acc1 += vexp(vload<V>(buf + k + W) - mv);
    }
    if (k < np) acc0 += vexp(vload<V>(buf + k) - mv);
    s += double(hsum<C>(acc0 + acc1));

    // running top-d
    int64_t i = 0;
    for (; i < n && heap.n < d; ++i) {
      if (buf[i] == buf[i]) heap.push(buf[i], int32_t(b0 + i));
    }
    if (heap.n == d && bm > hv[0]) {
      C thr = hv[0];
      for (int64_t sb = i / kSub; sb < nsub; ++sb) {
        if (!(hmax<C>(submax[sb]) > thr)) continue;
        const int64_t e = std::min<int64_t>(n, (sb + 1) * kSub);
        for (int64_t k = std::max<int64_t>(i, sb * kSub); k < e; ++k) {
          if (buf[k] > thr) {
            heap.replace_root(buf[k], int32_t(b0 + k));
            thr = hv[0];
          }
        }
      }
    }
  }
  const C bad = hsum<C>(nz);
  if (heap.n < d || bad != C(0)) {
    for (int64_t j = 0; j < d; ++j) {
      out_idx[j] = int32_t(j);
      out_lp[j] = std::numeric_limits<float>::quiet_NaN();
    }
    return;
  }
  const double lse = double(m) + std::log(s);
  for (int64_t j = 0; j < d; ++j) {
    order[j] = j;
    hv[j] = C(double(hv[j]) - lse);  // now the (rounded) log-probability
  }
  // float32 outputs: compare the values that will be stored, ties to the lower index
  std::sort(order, order + d, [&](int64_t p, int64_t q) {
    const float fp = float(hv[p]), fq = float(hv[q]);
    return fp > fq || (fp == fq && hi[p] < hi[q]);
  });
  for (int64_t j = 0; j < d; ++j) {
    out_idx[j] = hi[order[j]];
    out_lp[j] = float(hv[order[j]]);
  }
}

template <int DT, int VB>
TSF_INLINE int64_t select_rows_impl(const SelectArgs& a, int64_t r0, int64_t r1) {
  typedef typename Storage<DT>::C C;
  const int64_t d = a.d;
  std::vector<C> hv(static_cast<size_t>(d));
  std::vector<int32_t> hi(static_cast<size_t>(d));
  std::vector<int64_t> order(static_cast<size_t>(d));
  const bool div = a.temperature != 1.0;
  for (int64_t r = r0; r < r1; ++r) {
    if (div) select_row<DT, true, VB>(a, r, hv.data(), hi.data(), order.data());
    else select_row<DT, false, VB>(a, r, hv.data(), hi.data(), order.data());
  }
  return 0;
}

typedef int64_t (*SelFn)(const SelectArgs&, int64_t, int64_t);

#define TSF_SEL_VARIANTS(ISA, ATTR, VB)                                                           \
  ATTR int64_t sel_##ISA##_f32(const SelectArgs& a, int64_t r0, int64_t r1) {                \
    return select_rows_impl<kF32, VB>(a, r0, r1);                                               \
  }                                                                                         \
  ATTR int64_t sel_##ISA##_f64(const SelectArgs& a, int64_t r0, int64_t r1) {                \
    return select_rows_impl<kF64, VB>(a, r0, r1);                                               \
  }                                                                                         \
  ATTR int64_t sel_##ISA##_bf16(const SelectArgs& a, int64_t r0, int64_t r1) {               \
    return select_rows_impl<kBF16, VB>(a, r0, r1);                                              \
  }                                                                                         \
  ATTR int64_t sel_##ISA##_f16(const SelectArgs& a, int64_t r0, int64_t r1) {                \
    return select_rows_impl<kF16, VB>(a, r0, r1);                                               \
  }

TSF_SEL_VARIANTS(avx512, TSF_AVX512, 64)
TSF_SEL_VARIANTS(avx2, TSF_AVX2, 32)
TSF_SEL_VARIANTS(base, , 16)

const SelFn kTable[3][4] = {
    {sel_base_f32, sel_base_f64, sel_base_bf16, sel_base_f16},
    {sel_avx2_f32, sel_avx2_f64, sel_avx2_bf16, sel_avx2_f16},
    {sel_avx512_f32, sel_avx512_f64, sel_avx512_bf16, sel_avx512_f16},
};

int detect_isa() {
  const char* env = std::getenv("TSUBASA_CPU_ISA");
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  int level = has512 ? 2 : (has2 ? 1 : 0);
  if (env) {  // can only lower the level, never ask for instructions the CPU lacks
    if (std::strcmp(env, "default") == 0) level = 0;
    else if (std::strcmp(env, "avx2") == 0) level = std::min(level, 1);
  }
  return level;
}

}  // namespace

int isa_level() {
  static const int level = detect_isa();
  return level;
}

const char* isa_name() {
  static const char* names[3] = {"default", "avx2", "avx512"};
  return names[isa_level()];
}

int64_t select_rows(const SelectArgs& a, int64_t r0, int64_t r1) {
  return kTable[isa_level()][a.dtype](a, r0, r1);
}

}  // namespace tsf

// Sparse top-d KL: loss and gradient per row, two passes over the row.
//
// Pass 1 (reads the row once): per L1-sized block, local max, then sum of exp with online rescaling
// of the running sum (fp32 lanes inside a block, float64 across blocks) -> lse. A running
// sum of x * 0 turns into NaN when the row holds a NaN or an infinity and is added to lse.
// The d teacher logits and the label logit are then gathered (before any write: the
// gradient may alias the logits). Pass 2 (only with a gradient): per block, read, compute
// c * q_v, add the sparse terms that fall in the block (in fp32, before rounding to the
// output dtype), write. Formulas: ops/targets.py.
#include <algorithm>
#include <vector>

#include "common.h"

namespace tsf {
namespace {

struct Corr {
  int64_t pos;
  float delta;
};

template <int DT>
TSF_INLINE float kl_row(const KLArgs& a, int64_t r, int64_t& nbad) {
  typedef typename Storage<DT>::T T;
  typedef typename Storage<DT>::C C;
  typedef typename VT<C>::V V;
  constexpr int W = VT<C>::W;
  const int64_t vocab = a.vocab;
  const int64_t d = a.d;
  const T* x = static_cast<const T*>(a.x) + r * vocab;
  T* g = a.g ? static_cast<T*>(a.g) + r * vocab : nullptr;

  if (!a.row_mask[r]) {
    if (g) std::memset(static_cast<void*>(g), 0, size_t(vocab) * sizeof(T));
    return 0.0f;
  }
  const int64_t* idx = a.idx + r * d;
  const float* w = a.w + r * d;
  const int64_t label = (a.labels && a.ce_weight != 0.0) ? a.labels[r] : -1;
  bool ok = label < vocab;
  for (int64_t j = 0; j < d; ++j) ok &= (idx[j] >= 0) & (idx[j] < vocab);
  if (!ok) {
    ++nbad;
    if (g) std::memset(static_cast<void*>(g), 0, size_t(vocab) * sizeof(T));
    return std::numeric_limits<float>::quiet_NaN();
  }

  // ---- gathers first: the gradient may alias the logits
  const double temp = a.temperature;
  double zsmall[128];
  std::vector<double> zbig;
  double* zj = zsmall;
  if (d > 128) {
    zbig.resize(size_t(d));
    zj = zbig.data();
  }
  for (int64_t j = 0; j < d; ++j) zj[j] = double(load1<DT>(x + idx[j])) / temp;
  const double z_label = label >= 0 ? double(load1<DT>(x + label)) / temp : 0.0;

  alignas(64) C buf[kBlock];
  const C inv_t = C(1.0 / a.temperature);
  const C lowest = std::numeric_limits<C>::lowest();
  // fp32 with a gradient: pass 1 also writes exp(z - m_b) (m_b: the running max at block b)
  // into the gradient, and pass 2 only rescales it: one exp per element instead of two.
  constexpr bool kStoreExp = DT == kF32;
  const bool store_exp = kStoreExp && g != nullptr;
  const int64_t nblocks = (vocab + kBlock - 1) / kBlock;
  float mb_small[256];
  std::vector<float> mb_big;
  float* mb = mb_small;
  if (store_exp && nblocks > 256) {
    mb_big.resize(size_t(nblocks));
    mb = mb_big.data();
  }

  // ---- pass 1: lse
  double s = 0.0;
  C m = -std::numeric_limits<C>::infinity();
  V nz = splat<V>(C(0));
  for (int64_t b0 = 0; b0 < vocab; b0 += kBlock) {
    const int64_t n = std::min<int64_t>(kBlock, vocab - b0);
    const int64_t np = (n + W - 1) / W * W;
    load_block<DT, false>(x + b0, n, buf, inv_t);
    for (int64_t i = n; i < np; ++i) buf[i] = lowest;
    V vm = splat<V>(lowest);
    for (int64_t k = 0; k < np; k += W) {
      V v = vload<V>(buf + k);
      vm = vmax(vm, v);
      nz += v * C(0);
    }
    const C bm = hmax<C>(vm);
    if (bm > m) {
      s *= std::exp(double(m) - double(bm));
      m = bm;
    }
    const V mv = splat<V>(m);
    V acc0 = splat<V>(C(0)), acc1 = splat<V>(C(0));
    int64_t k = 0;
    if (kStoreExp && store_exp) {
      for (; k < np; k += W) {
        const V e = vexp(vload<V>(buf + k) - mv);
        acc0 += e;
        vstore(buf + k, e);
      }
      store_block<DT>(buf, n, g + b0);
      mb[b0 / kBlock] = float(m);
    } else {
      for (; k + 2 * W <= np; k += 2 * W) {
        acc0 += vexp(vload<V>(buf + k) - mv);
        acc1 += vexp(vload<V>(buf + k + W) - mv);
      }
      if (k < np) acc0 += vexp(vload<V>(buf + k) - mv);
    }
    s += double(hsum<C>(acc0 + acc1));
  }
  const double lse = double(m) + std::log(s) + double(hsum<C>(nz));

  // ---- the loss, in float64
  double wz = 0.0;
  for (int64_t j = 0; j < d; ++j) wz += double(w[j]) * (zj[j] - lse);
  double loss = double(a.cst[r]) - wz;
  double coef = double(a.wsum[r]);
  double tail_sparse = 0.0;  // p_tail / Q_tail when the bucket tail is active
  if (a.p_tail) {
    const bool* first = a.first + r * d;
    const double p = a.p_tail[r];
    double q_set = 0.0;
    for (int64_t j = 0; j < d; ++j)
      if (first[j]) q_set += std::exp(zj[j] - lse);
    const double q_tail = 1.0 - q_set;
    if (q_tail > kTailEps) {
      loss -= p * std::log(q_tail);
      tail_sparse = p / q_tail;
      coef -= tail_sparse * q_set;
    } else {
      loss -= p * std::log(kTailEps);
    }
  }
  if (label >= 0) {
    loss += a.ce_weight * (lse - z_label);
    coef += a.ce_weight;
  }
  if (!g) return float(loss);

  // ---- sparse gradient terms, sorted by position
  const double scale = a.grad_scale / temp;
  Corr small[130];
  std::vector<Corr> big;
  Corr* corr = small;
  if (d + 1 > 130) {
    big.resize(size_t(d) + 1);
    corr = big.data();
  }
  int64_t nc = 0;
  for (int64_t j = 0; j < d; ++j) {
    double delta = -double(w[j]);
    if (tail_sparse != 0.0 && a.first[r * d + j]) delta += tail_sparse * std::exp(zj[j] - lse);
    corr[nc++] = Corr{idx[j], float(delta * scale)};
  }
  if (label >= 0) corr[nc++] = Corr{label, float(-a.ce_weight * scale)};
  std::sort(corr, corr + nc, [](const Corr& u, const Corr& v) { return u.pos < v.pos; });

  // ---- pass 2: gradient
  if constexpr (kStoreExp) {
    if (store_exp) {  // g holds exp(z - m_b): scale each block by c * exp(m_b - lse)
      float* gf = reinterpret_cast<float*>(g);
      for (int64_t b0 = 0; b0 < vocab; b0 += kBlock) {
        const int64_t n = std::min<int64_t>(kBlock, vocab - b0);
        const float f = float(coef * scale * std::exp(double(mb[b0 / kBlock]) - lse));
        const vf fv = splat<vf>(f);
        int64_t k = 0;
        for (; k + 16 <= n; k += 16) vstore(gf + b0 + k, vload<vf>(gf + b0 + k) * fv);
        for (; k < n; ++k) gf[b0 + k] *= f;
      }
      for (int64_t c = 0; c < nc; ++c) gf[corr[c].pos] += corr[c].delta;
      return float(loss);
    }
  }
  const V lv = splat<V>(C(lse));
  const V cv = splat<V>(C(coef * scale));
  int64_t ci = 0;
  for (int64_t b0 = 0; b0 < vocab; b0 += kBlock) {
    const int64_t n = std::min<int64_t>(kBlock, vocab - b0);
    const int64_t np = (n + W - 1) / W * W;
    load_block<DT, false>(x + b0, n, buf, inv_t);
    for (int64_t i = n; i < np; ++i) buf[i] = lowest;
    for (int64_t k = 0; k < np; k += W) vstore(buf + k, cv * vexp(vload<V>(buf + k) - lv));
    for (; ci < nc && corr[ci].pos < b0 + n; ++ci) buf[corr[ci].pos - b0] += C(corr[ci].delta);
    store_block<DT>(buf, n, g + b0);
  }
  return float(loss);
}

template <int DT>
TSF_INLINE int64_t kl_rows_impl(const KLArgs& a, int64_t r0, int64_t r1) {
  int64_t nbad = 0;
  for (int64_t r = r0; r < r1; ++r) a.loss[r] = kl_row<DT>(a, r, nbad);
  return nbad;
}

typedef int64_t (*KLFn)(const KLArgs&, int64_t, int64_t);

#define TSF_KL_VARIANTS(ISA, ATTR)                                                            \
  ATTR int64_t kl_##ISA##_f32(const KLArgs& a, int64_t r0, int64_t r1) {                     \
    return kl_rows_impl<kF32>(a, r0, r1);                                                   \
  }                                                                                         \
  ATTR int64_t kl_##ISA##_f64(const KLArgs& a, int64_t r0, int64_t r1) {                     \
    return kl_rows_impl<kF64>(a, r0, r1);                                                   \
  }                                                                                         \
  ATTR int64_t kl_##ISA##_bf16(const KLArgs& a, int64_t r0, int64_t r1) {                    \
    return kl_rows_impl<kBF16>(a, r0, r1);                                                  \
  }                                                                                         \
  ATTR int64_t kl_##ISA##_f16(const KLArgs& a, int64_t r0, int64_t r1) {                     \
    return kl_rows_impl<kF16>(a, r0, r1);                                                   \
  }

TSF_KL_VARIANTS(avx512, TSF_AVX512)
TSF_KL_VARIANTS(avx2, TSF_AVX2)
TSF_KL_VARIANTS(base, )

const KLFn kTable[3][4] = {
    {kl_base_f32, kl_base_f64, kl_base_bf16, kl_base_f16},
    {kl_avx2_f32, kl_avx2_f64, kl_avx2_bf16, kl_avx2_f16},
    {kl_avx512_f32, kl_avx512_f64, kl_avx512_bf16, kl_avx512_f16},
};

}  // namespace

int64_t kl_rows(const KLArgs& a, int64_t r0, int64_t r1) {
  return kTable[isa_level()][a.dtype](a, r0, r1);
}

}  // namespace tsf

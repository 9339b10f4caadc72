// Sparse top-d KL: loss and gradient per row, two passes over the row (formulas: ops/targets.py).
//
// Gathers first (the gradient may alias the logits): the d teacher logits and the label
// logit, in float64, and the distinct teacher positions sorted. Pass 1 reads the row once
// per L1-sized block: block max (teacher entries included), a lane check for NaN / +inf
// (-inf is allowed: vocabulary masking), then the sum of exp(z - m) over the entries
// *outside* the teacher set (fp32 lanes inside a block, float64 across blocks). The set's
// own exps are added back in float64, so Q_rest (the bucket tail) is a sum, never 1 - Q_set.
// log q = (z - m) - log s, so logits of any finite size are exact while representable.
// For fp32 with a gradient, pass 1 also stores exp(z - m_b) and pass 2 only rescales each
// block, walking the blocks backwards so that it starts on the part of the row still in L2.
// In place (the gradient aliases the logits) the exps go into the row itself. Into a
// separate buffer they go into a per-thread scratch row (L2), and the row's gradient is
// written with streaming stores during the next row's pass 1 (Pending), each block just
// before that pass overwrites the block in the scratch row: each gradient line is written
// once, never read for ownership first, and the stores drain while that pass computes its
// exps (7-9 % faster on one thread than exps stored into the gradient and rescaled there;
// benchmarks/README.md). Pass 1 loads, tempers, copies and reduces a block in one loop
// (fp32 / fp64). The d teacher positions (and the label)
// are then overwritten with their whole value computed in float64 (no dense value plus a
// cancelling correction).
#include <algorithm>
#include <memory>
#include <vector>

#include "common.h"

namespace tsf {
namespace {

struct Ent {
  int64_t pos;
  double w;  // sum of the teacher weights at pos (duplicates merged)
  double z;  // tempered logit at pos
};

// A row whose gradient is still to be written from its exps (fp32, gradient not in place).
// Its blocks are streamed out during the next row's first pass, one block per block: that
// pass is bound by the exp's multiply-adds, so the stores drain beside it, not after it.
struct Pending {
  float* g = nullptr;       // the row's gradient; nullptr: nothing pending
  const float* ex = nullptr;
  std::vector<float> f;     // per block: the factor that turns its exps into the gradient
  int64_t next = 0;         // the next block to write
  std::vector<std::pair<int64_t, float>> fix;  // whole values at the teacher positions, label
};

struct Scratch {
  std::vector<Ent> ent;
  std::vector<double> zj;
  std::vector<float> mb;
  // [V] exps of the current row, overwriting the pending row's block by block: each of its
  // blocks is streamed out just before the current row's first pass writes the same block
  std::unique_ptr<float[]> ex;
  Pending pend;
};

template <int VB>
TSF_INLINE void pending_step(Pending& p, int64_t vocab, int64_t upto) {  // blocks [next, upto)
  if (!p.g) return;
  for (; p.next < upto; ++p.next) {
    const int64_t b0 = p.next * kBlock;
    scale_stream<VB>(p.ex + b0, std::min<int64_t>(kBlock, vocab - b0), p.f[size_t(p.next)], p.g + b0);
  }
}

template <int VB>
TSF_INLINE void pending_flush(Pending& p, int64_t vocab) {
  if (!p.g) return;
  pending_step<VB>(p, vocab, int64_t(p.f.size()));
  store_fence();  // streaming stores are weakly ordered: drain them before the plain stores
  for (const auto& pv : p.fix) p.g[pv.first] = pv.second;
  p.g = nullptr;
}

template <int DT, int VB>
TSF_INLINE double kl_row(const KLArgs& a, int64_t r, int64_t& nbad, Scratch& sc) {
  typedef typename Storage<DT>::T T;
  typedef typename Storage<DT>::C C;
  typedef typename VT<C, VB>::V V;
  typedef typename VT<C, VB>::I I;
  constexpr int W = VT<C, VB>::W;
  const int64_t vocab = a.vocab;
  const int64_t d = a.d;
  const T* x = static_cast<const T*>(a.x) + r * vocab;
  T* g = a.g ? static_cast<T*>(a.g) + r * vocab : nullptr;
  const double nan = std::numeric_limits<double>::quiet_NaN();

  if (!a.row_mask[r]) {
    if (g) std::memset(static_cast<void*>(g), 0, size_t(vocab) * sizeof(T));
    return 0.0;
  }
  const int64_t* idx = a.idx + r * d;
  const float* w = a.w + r * d;
  const int64_t label = (a.labels && a.ce_weight != 0.0) ? a.labels[r] : -1;
  bool ok = label < vocab;
  for (int64_t j = 0; j < d; ++j) ok &= (idx[j] >= 0) & (idx[j] < vocab);
  if (!ok) {
    ++nbad;
    if (g) std::memset(static_cast<void*>(g), 0, size_t(vocab) * sizeof(T));
    return nan;
  }

  // ---- gathers first: the gradient may alias the logits
  const double temp = a.temperature;
  double* zj = sc.zj.data();
  Ent* ent = sc.ent.data();
  for (int64_t j = 0; j < d; ++j) {
    zj[j] = double(load1<DT>(x + idx[j])) / temp;
    ent[j] = Ent{idx[j], double(w[j]), zj[j]};
  }
  std::sort(ent, ent + d, [](const Ent& u, const Ent& v) { return u.pos < v.pos; });
  int64_t ne = 0;
  for (int64_t j = 0; j < d; ++j) {
    if (ne && ent[ne - 1].pos == ent[j].pos) ent[ne - 1].w += ent[j].w;
    else ent[ne++] = ent[j];
  }
  const double z_label = label >= 0 ? double(load1<DT>(x + label)) / temp : 0.0;

  alignas(64) C buf[kBlock];
  const C inv_t = C(1.0 / a.temperature);
  const C ninf = -std::numeric_limits<C>::infinity();
  const V infv = splat<V>(std::numeric_limits<C>::infinity());
  constexpr bool kStoreExp = DT == kF32;
  const bool store_exp = kStoreExp && g != nullptr;
  // where pass 1 puts the exps: into the row itself in place, else into the scratch row
  // (kl_rows_impl allocates the scratch row exactly when the gradient is not in place)
  const bool streamed = store_exp && sc.ex != nullptr;
  T* ex = streamed ? reinterpret_cast<T*>(sc.ex.get()) : g;
  float* mb = sc.mb.data();

  // ---- pass 1: max, finiteness, sum of exp outside the set
  double s = 0.0;
  C m = ninf;
  I okv = splat<I>(int(-1));
  int64_t ei = 0;
  for (int64_t b0 = 0, b = 0; b0 < vocab; b0 += kBlock, ++b) {
    const int64_t n = std::min<int64_t>(kBlock, vocab - b0);
    const int64_t np = (n + W - 1) / W * W;
    if constexpr (DT == kF32) pending_step<VB>(sc.pend, vocab, b + 1);
    V vm = splat<V>(ninf);
    int64_t k0 = 0;  // fp32 / fp64: load, temper, copy into the block and reduce in one loop
    if constexpr (DT == kF32 || DT == kF64) {
      const V tv = splat<V>(inv_t);
      for (; k0 + W <= n; k0 += W) {
        prefetch_row(x, b0 + 2 * kBlock + k0, vocab);
        const V v = vload<V>(x + b0 + k0) * tv;
        vstore(buf + k0, v);
        vm = vmax(vm, v);
        okv &= (I)(v < infv);  // false for NaN and +inf
      }
    }
    load_block<DT, false>(x + b0 + k0, n - k0, buf + k0, inv_t);
    for (int64_t i = n; i < np; ++i) buf[i] = ninf;
    for (int64_t k = k0; k < np; k += W) {
      prefetch_row(x, b0 + 2 * kBlock + k, vocab);
      const V v = vload<V>(buf + k);
      vm = vmax(vm, v);
      okv &= (I)(v < infv);
    }
    const C bm = hmax<C>(vm);
    if (bm > m) {
      if (s != 0.0) s *= std::exp(double(m) - double(bm));
      m = bm;
    }
    for (; ei < ne && ent[ei].pos < b0 + n; ++ei) buf[ent[ei].pos - b0] = ninf;
    if (store_exp) mb[b] = float(m);
    if (m == ninf) {  // everything so far is -inf: nothing to add (and no exp(-inf + inf))
      if (store_exp) std::memset(static_cast<void*>(ex + b0), 0, size_t(n) * sizeof(T));
      continue;
    }
    const V mv = splat<V>(m);
    V acc0 = splat<V>(C(0)), acc1 = splat<V>(C(0));
    int64_t k = 0;
    if (store_exp) {
      if constexpr (kStoreExp) {  // fp32: whole vectors straight into ex, the tail via buf
        for (; k + W <= n; k += W) {
          const V e = vexp(vload<V>(buf + k) - mv);
          acc0 += e;
          vstore(ex + b0 + k, e);
        }
        const int64_t kt = k;
        for (; k < np; k += W) {
          const V e = vexp(vload<V>(buf + k) - mv);
          acc0 += e;
          vstore(buf + k, e);
        }
        store_block<DT>(buf + kt, n - kt, ex + b0 + kt);
      }
    } else {
      for (; k + 2 * W <= np; k += 2 * W) {
        acc0 += vexp(vload<V>(buf + k) - mv);
        acc1 += vexp(vload<V>(buf + k + W) - mv);
      }
      if (k < np) acc0 += vexp(vload<V>(buf + k) - mv);
    }
    s += double(hsum<C>(acc0 + acc1));
  }
  bool finite = true;
  for (int l = 0; l < W; ++l) finite &= okv[l] != 0;
  // NaN / +inf logit, or a row of -inf only: the row's gradient is left unspecified (the
  // caller raises on a non-finite loss and drops the gradient)
  if (!finite || !(m > ninf)) return nan;
  const double md = double(m);
  double s_set = 0.0;
  for (int64_t k = 0; k < ne; ++k) s_set += std::exp(ent[k].z - md);
  const double log_s = std::log(s + s_set);

  // ---- the loss, in float64
  double loss = double(a.cst[r]);
  // z - m is a C (float32 unless float64) quantity on every backend: past its range it is
  // -inf here too, and the row's loss becomes +inf (the caller reports the overflow)
  auto shifted = [md](double z) { return double(C(z - md)); };
  for (int64_t j = 0; j < d; ++j) loss -= double(w[j]) * (shifted(zj[j]) - log_s);
  double base = double(a.wsum[r]);
  double ratio = 0.0;  // p_tail / Q_rest when the bucket tail is active
  if (a.p_tail) {
    const double p = a.p_tail[r];
    const double log_rest = s > 0.0 ? std::log(s) - log_s : -std::numeric_limits<double>::infinity();
    if (log_rest > std::log(kTailEps)) {
      loss -= p * log_rest;
      if (p > 0.0) {
        base += p;
        ratio = p * std::exp(-log_rest);
      }
    } else {
      loss -= p * std::log(kTailEps);
    }
  }
  if (label >= 0) {
    loss -= a.ce_weight * (shifted(z_label) - log_s);
    base += a.ce_weight;
  }
  if (!g) return loss;

  // ---- pass 2: dense gradient (base - ratio) * q_v * scale, blocks in reverse order
  const double scale = a.grad_scale / temp;
  const double dense = (base - ratio) * scale;
  const int64_t nblocks = (vocab + kBlock - 1) / kBlock;
  // whole values at the teacher positions and the label, in float64: emit(position, value)
  auto whole_values = [&](auto&& emit) {
    bool label_in_set = false;
    for (int64_t k = 0; k < ne; ++k) {
      const double q = std::exp((ent[k].z - md) - log_s);
      double v = scale * (base * q - ent[k].w);
      if (ent[k].pos == label) {
        v -= scale * a.ce_weight;
        label_in_set = true;
      }
      emit(ent[k].pos, v);
    }
    if (label >= 0 && !label_in_set) {
      const double q = std::exp((z_label - md) - log_s);
      emit(label, dense * q - scale * a.ce_weight);
    }
  };
  if constexpr (kStoreExp) {
    if (streamed) {  // written during the next row's pass 1 (or by the final flush)
      Pending& p = sc.pend;
      pending_flush<VB>(p, vocab);
      p.f.resize(size_t(nblocks));
      for (int64_t b = 0; b < nblocks; ++b) p.f[size_t(b)] = float(dense * std::exp(double(mb[b]) - md - log_s));
      p.fix.clear();
      whole_values([&](int64_t pos, double v) { p.fix.emplace_back(pos, float(v)); });
      p.g = reinterpret_cast<float*>(g);
      p.ex = sc.ex.get();
      p.next = 0;
      return loss;
    }
    if (store_exp) {  // g holds exp(z - m_b): scale each block by dense * exp(m_b - m - log s)
      float* gf = reinterpret_cast<float*>(g);
      for (int64_t b = nblocks - 1; b >= 0; --b) {
        const int64_t b0 = b * kBlock;
        const int64_t n = std::min<int64_t>(kBlock, vocab - b0);
        const float f = float(dense * std::exp(double(mb[b]) - md - log_s));
        typedef typename VT<float, VB>::V VF;
        constexpr int WF = VT<float, VB>::W;
        const VF fv = splat<VF>(f);
        int64_t k = 0;
        for (; k + WF <= n; k += WF) vstore(gf + b0 + k, vload<VF>(gf + b0 + k) * fv);
        for (; k < n; ++k) gf[b0 + k] *= f;
      }
    }
  }
  if (!store_exp) {
    const V sh = splat<V>(m);
    const V ls = splat<V>(C(log_s));
    const V dv = splat<V>(C(dense));
    for (int64_t b = nblocks - 1; b >= 0; --b) {
      const int64_t b0 = b * kBlock;
      const int64_t n = std::min<int64_t>(kBlock, vocab - b0);
      const int64_t np = (n + W - 1) / W * W;
      load_block<DT, false>(x + b0, n, buf, inv_t);
      for (int64_t i = n; i < np; ++i) buf[i] = ninf;
      for (int64_t k = 0; k < np; k += W) vstore(buf + k, dv * vexp((vload<V>(buf + k) - sh) - ls));
      store_block<DT>(buf, n, g + b0);
    }
  }
  whole_values([&](int64_t pos, double v) { store1<DT>(g + pos, v); });
  return loss;
}

template <int DT, int VB>
TSF_INLINE int64_t kl_rows_impl(const KLArgs& a, int64_t r0, int64_t r1) {
  int64_t nbad = 0;
  Scratch sc;
  sc.ent.resize(size_t(a.d));
  sc.zj.resize(size_t(a.d));
  sc.mb.resize(size_t((a.vocab + kBlock - 1) / kBlock));
  if (DT == kF32 && a.g && a.g != a.x) {
    sc.ex.reset(new float[size_t(a.vocab)]);
    sc.pend.fix.reserve(size_t(a.d) + 1);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const double v = kl_row<DT, VB>(a, r, nbad, sc);
    if constexpr (DT == kF64) static_cast<double*>(a.loss)[r] = v;
    else static_cast<float*>(a.loss)[r] = float(v);
  }
  pending_flush<VB>(sc.pend, a.vocab);
  return nbad;
}

typedef int64_t (*KLFn)(const KLArgs&, int64_t, int64_t);

#define TSF_KL_VARIANTS(ISA, ATTR, VB)                                                            \
  ATTR int64_t kl_##ISA##_f32(const KLArgs& a, int64_t r0, int64_t r1) {                     \
    return kl_rows_impl<kF32, VB>(a, r0, r1);                                                   \
  }                                                                                         \
  ATTR int64_t kl_##ISA##_f64(const KLArgs& a, int64_t r0, int64_t r1) {                     \
    return kl_rows_impl<kF64, VB>(a, r0, r1);                                                   \
  }                                                                                         \
  ATTR int64_t kl_##ISA##_bf16(const KLArgs& a, int64_t r0, int64_t r1) {                    \
    return kl_rows_impl<kBF16, VB>(a, r0, r1);                                                  \
  }                                                                                         \
  ATTR int64_t kl_##ISA##_f16(const KLArgs& a, int64_t r0, int64_t r1) {                     \
    return kl_rows_impl<kF16, VB>(a, r0, r1);                                                   \
  }

TSF_KL_VARIANTS(avx512, TSF_AVX512, 64)
TSF_KL_VARIANTS(avx2, TSF_AVX2, 32)
TSF_KL_VARIANTS(base, , 16)

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

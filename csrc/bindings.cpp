// ATen glue: argument checks, output allocation, the row-parallel loop, and the operator
// registration (torch.ops.tsubasa_fast.topd_select / topd_kl). The row kernels live in
// topd_select.cpp and topd_kl.cpp behind the plain interface of common.h.
#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <cstdint>
#include <optional>
#include <tuple>

#include "common.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return tsf::kF32;
    case at::kDouble: return tsf::kF64;
    case at::kBFloat16: return tsf::kBF16;
    case at::kHalf: return tsf::kF16;
    default:
      TORCH_CHECK(false, "tsubasa_fast: logits must be float32, float64, bfloat16 or float16, got ",
                  t.scalar_type());
  }
  return -1;
}

void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.device().is_cpu(), "tsubasa_fast C++ kernels: logits must be a CPU tensor");
  TORCH_CHECK(logits.dim() == 2, "tsubasa_fast C++ kernels: logits must be 2-D [N, V], got ",
              logits.sizes());
  TORCH_CHECK(logits.is_contiguous(), "tsubasa_fast C++ kernels: logits must be contiguous");
  TORCH_CHECK(logits.size(1) > 0 && logits.size(1) < (int64_t(1) << 31),
              "tsubasa_fast C++ kernels: vocabulary size must be in [1, 2^31)");
}

// A freshly allocated gradient buffer is [N, V] untouched pages, and their first-touch faults
// cost more than the kernel itself on this kind of VM. Each thread pre-faults its own rows in
// one system call (MADV_POPULATE_WRITE, Linux >= 5.14: one kernel entry instead of one fault
// per 4 KiB page); failure (older kernel) is harmless. TSUBASA_PREFAULT=0 switches it off.
// A buffer already in memory (the reused gradient workspace) is left alone: the call walks
// the page tables of the whole range even when nothing is missing, which cost 0.4x a copy
// of the logits per call. Three sampled pages (first, middle, last; mincore) decide. A page
// only ever read maps the shared zero page and counts as resident: such a buffer (and one
// whose sampled pages alone are in) still faults on its first writes, as without the hint.
// (MADV_HUGEPAGE was tried and dropped: on this VM huge pages come back from the hypervisor
// slowly, giving 1 s stalls in about half of the calls.)
bool resident(uintptr_t b, uintptr_t e, uintptr_t page) {
  const uintptr_t probes[3] = {b, b + ((e - b) / page / 2) * page, e - page};
  for (uintptr_t q : probes) {
    unsigned char in = 0;
    if (mincore(reinterpret_cast<void*>(q), page, &in) != 0 || !(in & 1)) return false;
  }
  return true;
}

void populate(void* p, size_t bytes) {
  static const int mode = [] {
    const char* e = std::getenv("TSUBASA_PREFAULT");
    return e ? std::atoi(e) : 1;
  }();
  if (!mode) return;
  constexpr uintptr_t kPage = 4096;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kPage - 1);
  if (e > b + 16 * kPage && !resident(b, e, kPage))
    (void)madvise(reinterpret_cast<void*>(b), e - b, 23 /* MADV_POPULATE_WRITE */);
}

// Row grain: about 64k elements per task so that small vocabularies still split well.
int64_t grain_for(int64_t vocab) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(vocab, 1)); }

std::tuple<at::Tensor, at::Tensor> topd_select(const at::Tensor& logits, int64_t d,
                                               double temperature) {
  check_logits(logits);
  const int64_t n = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(d >= 1 && d <= vocab, "topd_select: d must be in [1, V=", vocab, "], got ", d);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "topd_select: temperature must be positive and finite, got ", temperature);
  auto idx = at::empty({n, d}, logits.options().dtype(at::kInt));
  auto lp = at::empty({n, d}, logits.options().dtype(at::kFloat));
  if (n == 0) return {idx, lp};
  tsf::SelectArgs a{};
  a.x = logits.data_ptr();
  a.vocab = vocab;
  a.d = d;
  a.dtype = dtype_code(logits);
  a.temperature = temperature;
  a.out_idx = idx.data_ptr<int32_t>();
  a.out_lp = lp.data_ptr<float>();
  at::parallel_for(0, n, grain_for(vocab), [&](int64_t b, int64_t e) { tsf::select_rows(a, b, e); });
  return {idx, lp};
}

at::Tensor small_input(const at::Tensor& t, const char* name, at::ScalarType dtype,
                       at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "topd_kl: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "topd_kl: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "topd_kl: ", name, " has shape ", t.sizes(), ", expected ",
              shape);
  return t.contiguous();
}

at::Tensor topd_kl(const at::Tensor& logits, const at::Tensor& indices, const at::Tensor& weights,
                   const at::Tensor& const_term, const at::Tensor& wsum,
                   const std::optional<at::Tensor>& p_tail, const std::optional<at::Tensor>& first,
                   const std::optional<at::Tensor>& labels, double ce_weight,
                   const at::Tensor& row_mask, double temperature, double grad_scale,
                   const std::optional<at::Tensor>& grad_out) {
  check_logits(logits);
  const int64_t n = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(indices.dim() == 2 && indices.size(0) == n,
              "topd_kl: indices must be [N, d] with N=", n, ", got ", indices.sizes());
  const int64_t d = indices.size(1);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "topd_kl: temperature must be positive and finite, got ", temperature);
  auto idx = small_input(indices, "indices", at::kLong, {n, d});
  auto w = small_input(weights, "weights", at::kFloat, {n, d});
  auto cst = small_input(const_term, "const", at::kFloat, {n});
  auto ws = small_input(wsum, "wsum", at::kFloat, {n});
  auto mask = small_input(row_mask, "row_mask", at::kBool, {n});
  at::Tensor pt, fi, lab;
  TORCH_CHECK(p_tail.has_value() == first.has_value(),
              "topd_kl: p_tail and first must be given together (bucket tail)");
  if (p_tail.has_value()) {
    pt = small_input(*p_tail, "p_tail", at::kFloat, {n});
    fi = small_input(*first, "first", at::kBool, {n, d});
  }
  const bool use_ce = labels.has_value() && ce_weight != 0.0;
  if (use_ce) lab = small_input(*labels, "labels", at::kLong, {n});
  at::Tensor g;
  if (grad_out.has_value()) {
    g = *grad_out;
    TORCH_CHECK(g.device().is_cpu() && g.scalar_type() == logits.scalar_type() &&
                    g.sizes() == logits.sizes() && g.is_contiguous(),
                "topd_kl: grad_out must be a contiguous CPU tensor with the logits' shape and "
                "dtype");
  }
  // float64 logits get a float64 loss (the f64 path computes everything in double)
  auto loss = at::empty({n}, logits.options().dtype(
                                 logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  if (n == 0) return loss;

  tsf::KLArgs a{};
  a.x = logits.data_ptr();
  a.g = g.defined() ? g.data_ptr() : nullptr;
  a.vocab = vocab;
  a.d = d;
  a.dtype = dtype_code(logits);
  a.idx = idx.data_ptr<int64_t>();
  a.w = w.data_ptr<float>();
  a.cst = cst.data_ptr<float>();
  a.wsum = ws.data_ptr<float>();
  a.p_tail = pt.defined() ? pt.data_ptr<float>() : nullptr;
  a.first = fi.defined() ? fi.data_ptr<bool>() : nullptr;
  a.labels = lab.defined() ? lab.data_ptr<int64_t>() : nullptr;
  a.ce_weight = use_ce ? ce_weight : 0.0;
  a.row_mask = mask.data_ptr<bool>();
  a.temperature = temperature;
  a.grad_scale = grad_scale;
  a.loss = loss.data_ptr();
  std::atomic<int64_t> bad{0};
  at::parallel_for(0, n, grain_for(vocab), [&](int64_t b, int64_t e) {
    if (a.g && a.g != a.x) {
      const size_t row_bytes = size_t(vocab) * logits.element_size();
      populate(static_cast<char*>(a.g) + size_t(b) * row_bytes, size_t(e - b) * row_bytes);
    }
    const int64_t nb = tsf::kl_rows(a, b, e);
    if (nb) bad += nb;
  });
  TORCH_CHECK(bad.load() == 0, "topd_kl: ", bad.load(),
              " unmasked row(s) hold a teacher index or label outside [0, V=", vocab, ")");
  return loss;
}

std::string cpu_isa() { return tsf::isa_name(); }

// The kernels' vector exp elementwise (float32 in and out), for its accuracy test.
at::Tensor cpu_exp(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "cpu_exp: x must be float32, got ", x.scalar_type());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  tsf::exp_f32(xc.data_ptr<float>(), y.data_ptr<float>(), xc.numel());
  return y;
}

}  // namespace

TORCH_LIBRARY(tsubasa_fast, m) {
  m.def("topd_select(Tensor logits, int d, float temperature) -> (Tensor, Tensor)");
  m.def(
      "topd_kl(Tensor logits, Tensor indices, Tensor weights, Tensor const_term, Tensor wsum, "
      "Tensor? p_tail, Tensor? first, Tensor? labels, float ce_weight, Tensor row_mask, "
      "float temperature, float grad_scale, Tensor(a!)? grad_out) -> Tensor");
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("cpu_exp(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(tsubasa_fast, CPU, m) {
  m.impl("topd_select", &topd_select);
  m.impl("topd_kl", &topd_kl);
  m.impl("cpu_exp", &cpu_exp);
}

// A minimal Python module so that `from tsubasa_fast import _C` loads this library (and with
// it the operator registrations above).
static PyModuleDef tsf_module = {PyModuleDef_HEAD_INIT, "_C", "tsubasa_fast C++ CPU kernels",
                                 -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&tsf_module); }

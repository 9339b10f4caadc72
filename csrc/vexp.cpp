// The kernels' vector exp (common.h) over an array, on the ISA path the kernels use: exposed
// as torch.ops.tsubasa_fast.cpu_exp so its accuracy is tested against float64 on every path.
#include "common.h"

namespace tsf {
namespace {

template <int VB>
TSF_INLINE void exp_impl(const float* x, float* y, int64_t n) {
  typedef typename VT<float, VB>::V V;
  constexpr int W = VT<float, VB>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(y + i, vexp(vload<V>(x + i)));
  if (i < n) {  // the tail through the same vector code, padded
    alignas(64) float buf[W] = {};
    std::memcpy(buf, x + i, size_t(n - i) * sizeof(float));
    const V v = vexp(vload<V>(buf));
    vstore(buf, v);
    std::memcpy(y + i, buf, size_t(n - i) * sizeof(float));
  }
}

TSF_AVX512 void exp_avx512(const float* x, float* y, int64_t n) { exp_impl<64>(x, y, n); }
TSF_AVX2 void exp_avx2(const float* x, float* y, int64_t n) { exp_impl<32>(x, y, n); }
void exp_base(const float* x, float* y, int64_t n) { exp_impl<16>(x, y, n); }

}  // namespace

void exp_f32(const float* x, float* y, int64_t n) {
  static void (*const table[3])(const float*, float*, int64_t) = {exp_base, exp_avx2, exp_avx512};
  table[isa_level()](x, y, n);
}

}  // namespace tsf

// bncore's batch norm as one C++ operator: the same maths as bncore/_math.py (Ioffe & Szegedy
// 2015, Algorithm 1 and its closed-form backward), in two loops per pass instead of ~10 torch
// ops. At the paper's shapes ((60, 100) per layer) a BN call costs dispatch, not arithmetic:
// one operator call replaces ten.
//
// Registered with torch.library as bncore::batch_norm (Autograd key: a C++ autograd::Function,
// so no Python runs in the backward either). Only plain CPU float32/float64 contiguous inputs
// come here (try_batch_norm returns None otherwise and bncore/functional.py runs the Python
// path). A backward that is itself differentiated (create_graph=True), batched (vmap over
// grad outputs) or carries forward-mode tangents runs the closed form as differentiable ATen
// ops instead of the loops, with the statistics recomputed as functions of x.
//
// Layout: x contiguous (N, C, *spatial) is viewed as (N, C, S); statistics are per channel
// over N·S values. Sums accumulate in double.

#include <torch/extension.h>

#include <ATen/LegacyBatchedTensorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/DispatchKeySet.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<Tensor>;

struct Shape {
  int64_t n, c, s;
};

Shape shape_of(const Tensor& x) {
  return {x.size(0), x.size(1), x.numel() / (x.size(0) * x.size(1))};
}

// fn(c0, c1) over ranges of channels, in parallel where each range holds at least ~32K
// values (the paper's (60, 100) layers run inline: one range, no thread hand-off).
template <typename F>
void for_channels(Shape sh, F fn) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, sh.n * sh.s));
  at::parallel_for(0, sh.c, grain, fn);
}

// Σ over (n, s) of f(value, channel), per channel, into out[c] (double).
template <typename T, typename F>
void channel_sums(const T* x, Shape sh, std::vector<double>& out, F f) {
  for_channels(sh, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) out[c] = 0.0;
    for (int64_t n = 0; n < sh.n; ++n) {
      const T* row = x + n * sh.c * sh.s;
      if (sh.s == 1) {
        for (int64_t c = c0; c < c1; ++c) out[c] += f(static_cast<double>(row[c]), c);
      } else {
        for (int64_t c = c0; c < c1; ++c) {
          const T* plane = row + c * sh.s;
          double acc = 0.0;
          for (int64_t i = 0; i < sh.s; ++i) acc += f(static_cast<double>(plane[i]), c);
          out[c] += acc;
        }
      }
    }
  });
}

// The elementwise passes (y = scale·x + shift; dx = k·dy + a·(x − μ) + b) come in two
// builds. The portable one (4-wide SSE on x86-64) runs where the pass streams through memory;
// where its data stays in the core's cache, as at the paper's (60..1000, 100), arithmetic is
// the limit and an AVX2 copy of the same loop (8-wide) runs instead, chosen when the library
// loads from what the CPU has (GCC/Clang function multiversioning: no CPU-specific build
// flag, one binary for every machine). Measured on an AMD EPYC (one thread): the AVX2 loop
// took 0.75-0.8x the SSE one at (60, 100) and (1000, 100), but 1.08x at (64, 64, 32, 32),
// 16 MiB each way, where memory bounds both; AVX-512 was no better than AVX2 in cache and
// slower at the 4-D shapes. The build passes -ffp-contract=off, so
// both round a·x + b exactly alike (no fused multiply-add): results do not depend on the CPU.
#if defined(__x86_64__) && defined(__GLIBC__) && (defined(__GNUC__) || defined(__clang__))
#define BNCORE_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define BNCORE_VECTOR_CLONES
#endif

// Input bytes up to which a pass counts as cache-resident (the AVX2 copy): about one core's
// L2 cache.
constexpr int64_t kInCacheBytes = int64_t{1} << 20;

// out = a[c]·(x − μ[c]) + b[c] (+ k[c]·dy if dy) per element; without μ, a[c]·x + b[c].
template <typename T>
struct AffineArgs {
  const T* x;
  Shape sh;
  const T* mu;
  const T* a;
  const T* b;
  T* out;
  const T* dy;
  const T* k;
};

// The pass over channels [c0, c1) of every sample. out never aliases the inputs (a fresh
// tensor), which __restrict__ tells the compiler: no run-time overlap checks per plane.
template <typename T>
__attribute__((always_inline)) inline void affine_range(const AffineArgs<T>& p, int64_t c0,
                                                        int64_t c1) {
  const T* __restrict__ x = p.x;
  const T* __restrict__ dy = p.dy;
  T* __restrict__ out = p.out;
  const T *mu = p.mu, *a = p.a, *b = p.b, *k = p.k;
  const Shape sh = p.sh;
  for (int64_t n = 0; n < sh.n; ++n) {
    const int64_t off = n * sh.c * sh.s;
    if (sh.s == 1 && dy) {  // (N, C): the channel loop is the inner one (vectorized)
      for (int64_t c = c0; c < c1; ++c)
        out[off + c] = k[c] * dy[off + c] + a[c] * (x[off + c] - mu[c]) + b[c];
      continue;
    }
    if (sh.s == 1 && !mu) {
      for (int64_t c = c0; c < c1; ++c) out[off + c] = a[c] * x[off + c] + b[c];
      continue;
    }
    if (sh.s == 1) {
      for (int64_t c = c0; c < c1; ++c) out[off + c] = a[c] * (x[off + c] - mu[c]) + b[c];
      continue;
    }
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t o = off + c * sh.s;
      const T ac = a[c], mc = mu ? mu[c] : T(0), bc = b[c];
      if (!mu) {
        for (int64_t i = 0; i < sh.s; ++i) out[o + i] = ac * x[o + i] + bc;
      } else if (dy) {
        const T kc = k[c];
        for (int64_t i = 0; i < sh.s; ++i)
          out[o + i] = kc * dy[o + i] + ac * (x[o + i] - mc) + bc;
      } else {
        for (int64_t i = 0; i < sh.s; ++i) out[o + i] = ac * (x[o + i] - mc) + bc;
      }
    }
  }
}

void affine_pass(const AffineArgs<float>& p, int64_t c0, int64_t c1) { affine_range(p, c0, c1); }
void affine_pass(const AffineArgs<double>& p, int64_t c0, int64_t c1) { affine_range(p, c0, c1); }
BNCORE_VECTOR_CLONES void affine_pass_in_cache(const AffineArgs<float>& p, int64_t c0,
                                               int64_t c1) {
  affine_range(p, c0, c1);
}
BNCORE_VECTOR_CLONES void affine_pass_in_cache(const AffineArgs<double>& p, int64_t c0,
                                               int64_t c1) {
  affine_range(p, c0, c1);
}

template <typename T>
void affine_centred(const T* x, Shape sh, const T* mu, const T* a, const T* b, T* out,
                    const T* dy = nullptr, const T* k = nullptr) {
  const AffineArgs<T> p{x, sh, mu, a, b, out, dy, k};
  if (sh.n * sh.c * sh.s * static_cast<int64_t>(sizeof(T)) <= kInCacheBytes) {
    for_channels(sh, [&](int64_t c0, int64_t c1) { affine_pass_in_cache(p, c0, c1); });
  } else {
    for_channels(sh, [&](int64_t c0, int64_t c1) { affine_pass(p, c0, c1); });
  }
}

// Forward. Training: (y, μ_B, invstd) and the running statistics updated in place (unbiased
// variance m/(m−1)·σ²_B). Fixed statistics: (y, empty, invstd of the running variance).
// Without ``for_backward`` (inference: no autograd node) only y is a tensor; the per-channel
// values live in plain buffers, which saves three allocations on every eval call.
template <typename T>
std::tuple<Tensor, Tensor, Tensor> forward_impl(const Tensor& x, const OptTensor& weight,
                                                const OptTensor& bias, const OptTensor& rmean,
                                                const OptTensor& rvar, bool training,
                                                double momentum, double eps,
                                                bool for_backward = true) {
  const Shape sh = shape_of(x);
  const T* xp = x.data_ptr<T>();
  const T* w = weight.has_value() ? weight->data_ptr<T>() : nullptr;
  const T* b = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  Tensor mean, invstd;
  std::vector<T> mean_buf, invstd_buf;
  T* ip;
  if (for_backward) {
    invstd = torch::empty({sh.c}, x.options());
    ip = invstd.data_ptr<T>();
  } else {
    invstd_buf.resize(sh.c);
    ip = invstd_buf.data();
  }
  const T* mp;  // μ: the batch's (training) or the running mean (fixed statistics)
  if (training) {
    T* batch_mean;
    if (for_backward) {
      mean = torch::empty({sh.c}, x.options());
      batch_mean = mean.data_ptr<T>();
    } else {
      mean_buf.resize(sh.c);
      batch_mean = mean_buf.data();
    }
    const double m = static_cast<double>(sh.n * sh.s);
    std::vector<double> sum(sh.c), sq(sh.c);
    channel_sums(xp, sh, sum, [](double v, int64_t) { return v; });
    for (int64_t c = 0; c < sh.c; ++c) sum[c] /= m;  // μ_B
    channel_sums(xp, sh, sq, [&](double v, int64_t c) { return (v - sum[c]) * (v - sum[c]); });
    for (int64_t c = 0; c < sh.c; ++c) {
      const double var = sq[c] / m;  // σ²_B, biased
      batch_mean[c] = static_cast<T>(sum[c]);
      ip[c] = static_cast<T>(1.0 / std::sqrt(var + eps));
      sq[c] = var;
    }
    if (rmean.has_value() && rvar.has_value()) {
      T* rm = rmean->data_ptr<T>();
      T* rv = rvar->data_ptr<T>();
      for (int64_t c = 0; c < sh.c; ++c) {
        rm[c] = static_cast<T>(momentum * sum[c] + (1 - momentum) * rm[c]);
        rv[c] = static_cast<T>(momentum * sq[c] * m / (m - 1) + (1 - momentum) * rv[c]);
      }
    }
    mp = batch_mean;
  } else {
    mp = rmean->data_ptr<T>();
    const T* rv = rvar->data_ptr<T>();
    for (int64_t c = 0; c < sh.c; ++c)
      ip[c] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(rv[c]) + eps));
    if (for_backward) mean = torch::empty({0}, x.options());
  }
  // y = γ·x̂ + β = scale·x + shift with scale = γ·invstd, shift = β − μ·scale (as torch's
  // CPU kernel computes it): one multiply-add per element.
  std::vector<T> scale(sh.c), shift(sh.c);
  for (int64_t c = 0; c < sh.c; ++c) {
    scale[c] = w ? ip[c] * w[c] : ip[c];
    shift[c] = (b ? b[c] : T(0)) - mp[c] * scale[c];
  }
  Tensor y = torch::empty_like(x);
  affine_centred<T>(xp, sh, nullptr, scale.data(), shift.data(), y.data_ptr<T>());
  return {y, mean, invstd};
}

// Closed-form backward with k = γ·invstd, x̂ = (x − μ)·invstd:
//   dβ = Σ dy,  dγ = Σ dy·x̂,
//   dx = k·(dy − Σdy/m − x̂·Σ(dy·x̂)/m)   (training)      dx = k·dy   (fixed statistics)
template <typename T>
std::tuple<Tensor, Tensor, Tensor> backward_impl(const Tensor& dy_in, const Tensor& x,
                                                 const OptTensor& weight, const Tensor& mean,
                                                 const Tensor& invstd, bool training,
                                                 bool need_dx, bool need_dparams) {
  const Tensor dy = dy_in.contiguous();
  const Shape sh = shape_of(x);
  const T* xp = x.data_ptr<T>();
  const T* dp = dy.data_ptr<T>();
  const T* mp = mean.data_ptr<T>();
  const T* ip = invstd.data_ptr<T>();
  const T* w = weight.has_value() ? weight->data_ptr<T>() : nullptr;
  std::vector<double> sum_dy(sh.c, 0.0), sum_dy_xc(sh.c, 0.0);
  if (training || need_dparams) {
    for_channels(sh, [&](int64_t c0, int64_t c1) {
      for (int64_t n = 0; n < sh.n; ++n) {
        const int64_t off = n * sh.c * sh.s;
        if (sh.s == 1) {  // (N, C): the channel loop is the inner one (vectorized)
          for (int64_t c = c0; c < c1; ++c) {
            const double d = dp[off + c];
            sum_dy[c] += d;
            sum_dy_xc[c] += d * (static_cast<double>(xp[off + c]) - mp[c]);
          }
          continue;
        }
        for (int64_t c = c0; c < c1; ++c) {
          const double mc = mp[c];
          double sd = 0.0, sdx = 0.0;
          for (int64_t i = 0; i < sh.s; ++i) {
            const double d = dp[off + c * sh.s + i];
            sd += d;
            sdx += d * (static_cast<double>(xp[off + c * sh.s + i]) - mc);
          }
          sum_dy[c] += sd;
          sum_dy_xc[c] += sdx;
        }
      }
    });
  }
  Tensor dx, dw, db;
  if (need_dx) {
    const double m = static_cast<double>(sh.n * sh.s);
    std::vector<T> k(sh.c), a(sh.c), b(sh.c);
    for (int64_t c = 0; c < sh.c; ++c) {
      const double kc = w ? static_cast<double>(ip[c]) * w[c] : ip[c];
      k[c] = static_cast<T>(kc);
      // dx = k·dy + a·(x − μ) + b,  a = −k·invstd²·Σ(dy·(x−μ))/m,  b = −k·Σdy/m
      a[c] = training ? static_cast<T>(-kc * ip[c] * ip[c] * sum_dy_xc[c] / m) : T(0);
      b[c] = training ? static_cast<T>(-kc * sum_dy[c] / m) : T(0);
    }
    dx = torch::empty_like(x);
    affine_centred(xp, sh, mp, a.data(), b.data(), dx.data_ptr<T>(), dp, k.data());
  }
  if (need_dparams) {
    dw = torch::empty({sh.c}, x.options());
    db = torch::empty({sh.c}, x.options());
    T* dwp = dw.data_ptr<T>();
    T* dbp = db.data_ptr<T>();
    for (int64_t c = 0; c < sh.c; ++c) {
      dwp[c] = static_cast<T>(sum_dy_xc[c] * ip[c]);
      dbp[c] = static_cast<T>(sum_dy[c]);
    }
  }
  return {dx, dw, db};
}

// The same closed form as differentiable ATen ops (double backward, vmap, forward AD).
std::tuple<Tensor, Tensor, Tensor> backward_composite(const Tensor& dy, const Tensor& x,
                                                      const OptTensor& weight, Tensor mean,
                                                      Tensor invstd, bool training, double eps) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  std::vector<int64_t> view(x.dim(), 1);
  view[1] = -1;
  const double m = static_cast<double>(x.numel() / x.size(1));
  if (training) {  // statistics as functions of x, so their second derivatives are right
    mean = x.mean(dims);
    invstd = ((x - mean.view(view)).square().mean(dims) + eps).rsqrt();
  }
  const Tensor xhat = (x - mean.view(view)) * invstd.view(view);
  const Tensor sum_dy = dy.sum(dims);
  const Tensor sum_dy_xhat = (dy * xhat).sum(dims);
  const Tensor k = weight.has_value() ? invstd * *weight : invstd;
  Tensor dx = training ? k.view(view) * (dy - (sum_dy / m).view(view) -
                                         xhat * (sum_dy_xhat / m).view(view))
                       : dy * k.view(view);
  return {dx, sum_dy_xhat, sum_dy};
}

// Whether a gradient can go through the loops: a plain dense CPU tensor of x's dtype, not
// being differentiated, batched or carrying a tangent.
bool plain(const Tensor& t, const Tensor& x) {
  const auto allowed = c10::DispatchKeySet({c10::DispatchKey::CPU, c10::DispatchKey::AutogradCPU,
                                            c10::DispatchKey::ADInplaceOrView,
                                            c10::DispatchKey::AutocastCPU});
  return t.defined() && t.layout() == at::kStrided && t.scalar_type() == x.scalar_type() &&
         (t.key_set() | allowed) == allowed && !at::isBatchedTensor(t) &&
         !t._fw_grad(0).defined();
}

class BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const OptTensor& weight,
                        const OptTensor& bias, const OptTensor& rmean, const OptTensor& rvar,
                        bool training, double momentum, double eps) {
    auto [y, mean, invstd] = AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bncore_bn_fwd", [&] {
      return forward_impl<scalar_t>(x, weight, bias, rmean, rvar, training, momentum, eps);
    });
    ctx->save_for_backward({x, weight.value_or(Tensor()), training ? mean : *rmean, invstd});
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_bias"] = bias.has_value();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const OptTensor weight = saved[1].defined() ? OptTensor(saved[1]) : c10::nullopt;
    const bool training = ctx->saved_data["training"].toBool();
    const double eps = ctx->saved_data["eps"].toDouble();
    const Tensor& dy = grads[0];
    // needs_input_grad counts tensor inputs only: an absent weight shifts bias to index 1.
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool need_dx = ctx->needs_input_grad(0);
    const bool need_dw = weight.has_value() && ctx->needs_input_grad(1);
    const bool need_db = has_bias && ctx->needs_input_grad(weight.has_value() ? 2 : 1);
    const bool need_dparams = need_dw || need_db;
    Tensor dx, dw, db;
    if (!dy.defined()) {
      // nothing flows back
    } else if (!torch::GradMode::is_enabled() && plain(dy, x) && !x._fw_grad(0).defined()) {
      std::tie(dx, dw, db) = AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bncore_bn_bwd", [&] {
        return backward_impl<scalar_t>(dy, x, weight, saved[2], saved[3], training, need_dx,
                                       need_dparams);
      });
    } else {
      std::tie(dx, dw, db) =
          backward_composite(dy, x, weight, saved[2], saved[3], training, eps);
    }
    return {need_dx ? dx : Tensor(),
            need_dw ? dw : Tensor(),
            need_db ? db : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

bool requires_grad(const OptTensor& t) { return t.has_value() && t->requires_grad(); }

Tensor batch_norm_autograd(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                           const OptTensor& rmean, const OptTensor& rvar, bool training,
                           double momentum, double eps) {
  if (training && rmean.has_value() && rvar.has_value()) {
    // The running statistics are written in place below, through their data pointers: bump
    // their version counters, as torch's in-place ops do (its batch-norm kernel does not), so
    // that whatever keys on them sees the write (bncore/_eval_cache.py, autograd's check of
    // saved tensors).
    // Inference tensors have no counter (and torch's batch norm updates them anyway).
    for (const Tensor& t : {*rmean, *rvar})
      if (!t.is_inference()) torch::autograd::impl::bump_version(t);
  }
  if (!torch::GradMode::is_enabled() ||
      !(x.requires_grad() || requires_grad(weight) || requires_grad(bias))) {
    // Nothing to differentiate (inference): no autograd node, no saved state.
    return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bncore_bn_fwd", [&] {
      return std::get<0>(forward_impl<scalar_t>(x, weight, bias, rmean, rvar, training,
                                                momentum, eps, /*for_backward=*/false));
    });
  }
  return BatchNormFunction::apply(x, weight, bias, rmean, rvar, training, momentum, eps);
}

bool fits(const OptTensor& t, const Tensor& x) {
  return !t.has_value() ||
         (t->is_cpu() && t->scalar_type() == x.scalar_type() && t->dim() == 1 &&
          t->size(0) == x.size(1) && t->is_contiguous() && plain(*t, x));
}

// The operator if these inputs are ones it computes exactly like the Python path; None
// otherwise (other devices, dtypes, layouts, wrapped or batched tensors, forward-AD tangents,
// and every input error, which the Python path reports with torch's messages).
py::object try_batch_norm(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                          const OptTensor& rmean, const OptTensor& rvar, bool training,
                          double momentum, double eps) {
  if (!x.is_cpu() || x.dim() < 2 || x.numel() == 0 || !x.is_contiguous() ||
      (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) || !plain(x, x) ||
      !fits(weight, x) || !fits(bias, x) || !fits(rmean, x) || !fits(rvar, x) ||
      rmean.has_value() != rvar.has_value()) {
    return py::none();
  }
  if (training ? (x.numel() / x.size(1) <= 1 || eps <= 0) : (!rmean.has_value() || eps < 0)) {
    return py::none();
  }
  // A dispatch mode (FakeTensorMode, a profiler's mode) or a torch.func transform is active.
  const auto tls = c10::impl::tls_local_dispatch_key_set().included_;
  if (tls.has(c10::DispatchKey::Python) || tls.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) {
    return py::none();
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("bncore::batch_norm", "")
                       .typed<decltype(batch_norm_autograd)>();
  return py::cast(op.call(x, weight, bias, rmean, rvar, training, momentum, eps));
}

}  // namespace

TORCH_LIBRARY(bncore, m) {
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps) -> Tensor");
}

// Autograd: the Function records the node. CPU: reached without autograd keys (inference-mode
// tensors); the Function then records nothing.
TORCH_LIBRARY_IMPL(bncore, Autograd, m) { m.impl("batch_norm", &batch_norm_autograd); }
TORCH_LIBRARY_IMPL(bncore, CPU, m) { m.impl("batch_norm", &batch_norm_autograd); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("try_batch_norm", &try_batch_norm, "bncore::batch_norm, or None if not applicable");
}

// The cross-entropy kernels' CUDA source (kernels/cross_entropy.cu) run on the CPU through
// cuda_emulator.h: the same code a GPU runs, its reductions and 16-byte reads included, checked
// by the test suite on machines without one. Slow (a thread per CUDA thread): for tests only.

#include <stdexcept>

#include <ATen/ATen.h>

#include "cross_entropy.h"
#include "lawa_guarded.h"

// After every other header: it defines CUDA's keywords as macros.
#include "cuda_emulator.h"
#include "kernels/common.cuh"
#include "kernels/cross_entropy.cu"

extern "C" {

// Runs the forward kernel on `logits`, then the backward one with `grad` (fp32 [rows]), in
// blocks of `threads`: *losses, *lse (fp32 [rows]) and *grad_logits (the logits' shape and dtype).
int lawa_cross_entropy_emulated(const at::Tensor* logits, const at::Tensor* targets, int64_t vocab,
                                int64_t ignore_index, const at::Tensor* grad, unsigned threads, at::Tensor** losses,
                                at::Tensor** lse, at::Tensor** grad_logits, char** error) {
  return lawa_guarded(error, [&] {
    lawa::check_cross_entropy_inputs(*logits, *targets, vocab);
    if (!logits->device().is_cpu()) throw std::invalid_argument("the emulation runs on CPU tensors");
    if (threads == 0 || threads % 32 != 0 || threads > 1024)
      throw std::invalid_argument("threads must be a multiple of 32 up to 1024");
    auto x = logits->contiguous();
    auto t = targets->contiguous();
    auto g = grad->to(at::kFloat).contiguous();
    if (g.dim() != 1 || g.size(0) != x.size(0)) throw std::invalid_argument("grad must be [rows]");
    long long rows = x.size(0), cols = x.size(1), v = vocab, ignore = ignore_index;
    auto l = at::empty({rows}, x.options().dtype(at::kFloat));
    auto s = at::empty({rows}, x.options().dtype(at::kFloat));
    auto out = at::empty_like(x);
    int forward_vector = lawa::cross_entropy_vectorized(x, x);
    int backward_vector = lawa::cross_entropy_vectorized(x, out);
    const long long* target = reinterpret_cast<const long long*>(t.data_ptr<int64_t>());
    if (x.scalar_type() == at::kBFloat16) {
      auto* in = static_cast<const lawa_bf16*>(x.data_ptr());
      lawa_emu::launch(lawa_ce_forward_bf16, static_cast<unsigned>(rows), threads, in, target, l.data_ptr<float>(), s.data_ptr<float>(),
                       cols, v, ignore, forward_vector);
      lawa_emu::launch(lawa_ce_backward_bf16, static_cast<unsigned>(rows), threads, in, target, (const float*)s.data_ptr<float>(),
                       (const float*)g.data_ptr<float>(), static_cast<lawa_bf16*>(out.data_ptr()), cols, v, ignore,
                       backward_vector);
    } else {
      const float* in = x.data_ptr<float>();
      lawa_emu::launch(lawa_ce_forward_f32, static_cast<unsigned>(rows), threads, in, target, l.data_ptr<float>(), s.data_ptr<float>(),
                       cols, v, ignore, forward_vector);
      lawa_emu::launch(lawa_ce_backward_f32, static_cast<unsigned>(rows), threads, in, target, (const float*)s.data_ptr<float>(),
                       (const float*)g.data_ptr<float>(), out.data_ptr<float>(), cols, v, ignore,
                       backward_vector);
    }
    *losses = new at::Tensor(l);
    *lse = new at::Tensor(s);
    *grad_logits = new at::Tensor(out);
  });
}

}  // extern "C"

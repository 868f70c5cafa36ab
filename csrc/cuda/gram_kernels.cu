// Explicit instantiations of the Gram kernels for float32 and float64. This unit
// includes no torch header: CI compiles it alone with `nvcc -arch=sm_90`.
#include "gram_kernel.cuh"

namespace lplr {
namespace cuda {

template cudaError_t launch_gram_accumulate<float>(const GramParams<float>&, cudaStream_t);
template cudaError_t launch_gram_accumulate<double>(const GramParams<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace lplr

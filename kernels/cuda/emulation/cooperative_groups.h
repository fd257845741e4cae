// Cooperative groups' grid barrier for kernels/cuda/emulation/cuda_host.h: found before the
// CUDA toolkit's header by the host build's include path.
#pragma once

#include "cuda_host.h"

namespace cooperative_groups {

struct grid_group {
    void sync() const { fastrnn_host::grid_barrier(); }
};

inline grid_group this_grid() { return grid_group{}; }

}  // namespace cooperative_groups

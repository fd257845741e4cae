// CUDA's execution model on the CPU, for running the gpu backend's own kernel source
// (kernels/cuda/rnn.cu) with the host C++ compiler: the tests check its logic against the
// NumPy reference on machines without a GPU.
//
// A launch runs every block at once, each on its own OS thread (a cooperative launch needs
// all blocks resident), and every thread of a block as a fiber (ucontext) of that OS
// thread. Fibers switch only where CUDA threads synchronise: __syncthreads (block barrier),
// the warp shuffles (a warp barrier before and after the exchange), and the grid barrier of
// cooperative groups (the block's barrier, then a barrier of the blocks' OS threads). A
// kernel that relies on an ordering CUDA does not guarantee - a missing barrier, a race
// between blocks - can give wrong results here as on a GPU, though not the same ones.
//
// `extern __shared__` memory is a thread_local array of the block's OS thread (the build
// step defines it), so every block has its own.
#pragma once

#include <pthread.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __align__(n) __attribute__((aligned(n)))

using std::exp;
using std::fabs;
using std::max;
using std::min;
using std::tanh;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace fastrnn_host {

struct Block;

struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    dim3 thread_idx;
    bool done = false;
    unsigned barrier_gen = 0;  // the block barrier generation this fiber waits past
};

struct Grid {
    dim3 grid_dim, block_dim;
    pthread_barrier_t barrier;
};

struct Block {
    Grid* grid = nullptr;
    dim3 block_idx;
    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    int current = -1;
    // block barrier
    unsigned arrived = 0, generation = 0;
    // warp exchange: one slot of 8 bytes per lane, a barrier per warp
    std::vector<unsigned char> slots;
    std::vector<unsigned> warp_arrived, warp_generation;
};

inline thread_local Block* this_block = nullptr;

inline Fiber& fiber() { return this_block->fibers[this_block->current]; }

// Give the CPU to the next fiber of the block (the scheduler resumes them in order).
inline void yield() {
    Block& b = *this_block;
    swapcontext(&b.fibers[b.current].ctx, &b.scheduler);
}

inline void block_barrier() {
    Block& b = *this_block;
    const unsigned gen = b.generation;
    if (++b.arrived == b.fibers.size()) {
        b.arrived = 0;
        ++b.generation;
        return;
    }
    while (b.generation == gen) yield();
}

inline void warp_barrier(unsigned warp, unsigned lanes) {
    Block& b = *this_block;
    const unsigned gen = b.warp_generation[warp];
    if (++b.warp_arrived[warp] == lanes) {
        b.warp_arrived[warp] = 0;
        ++b.warp_generation[warp];
        return;
    }
    while (b.warp_generation[warp] == gen) yield();
}

inline unsigned linear_thread() {
    const dim3 t = fiber().thread_idx, d = this_block->grid->block_dim;
    return t.x + d.x * (t.y + d.y * t.z);
}

inline unsigned warp_lanes(unsigned warp) {
    const unsigned n = static_cast<unsigned>(this_block->fibers.size());
    return std::min(32u, n - 32u * warp);
}

// Every lane of the warp publishes `v`, then reads lane `src(lane)`'s (or keeps its own
// where the source lies outside the warp), as the shuffles do for a full mask.
template <typename T, typename Src>
T exchange(T v, Src src) {
    static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
    Block& b = *this_block;
    const unsigned id = linear_thread(), warp = id / 32, lane = id % 32;
    const unsigned lanes = warp_lanes(warp);
    unsigned char* slot = b.slots.data() + 8 * (size_t)(32 * warp);
    std::memcpy(slot + 8 * lane, &v, sizeof(T));
    warp_barrier(warp, lanes);
    const int from = src(static_cast<int>(lane));
    T out = v;
    if (from >= 0 && from < static_cast<int>(lanes)) std::memcpy(&out, slot + 8 * from, sizeof(T));
    warp_barrier(warp, lanes);  // nobody overwrites a slot before every lane has read
    return out;
}

inline void grid_barrier() {
    Block& b = *this_block;
    const unsigned gen = b.generation;
    if (++b.arrived == b.fibers.size()) {
        // the last fiber of the block: every block's OS thread meets here (a full fence)
        pthread_barrier_wait(&b.grid->barrier);
        b.arrived = 0;
        ++b.generation;
        return;
    }
    while (b.generation == gen) yield();
}

}  // namespace fastrnn_host

#define threadIdx (::fastrnn_host::fiber().thread_idx)
#define blockIdx (::fastrnn_host::this_block->block_idx)
#define blockDim (::fastrnn_host::this_block->grid->block_dim)
#define gridDim (::fastrnn_host::this_block->grid->grid_dim)

inline void __syncthreads() { fastrnn_host::block_barrier(); }

template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
    return fastrnn_host::exchange(v, [delta](int lane) { return lane + int(delta); });
}

template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int = 32) {
    return fastrnn_host::exchange(v, [delta](int lane) { return lane - int(delta); });
}

template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
    return fastrnn_host::exchange(v, [mask](int lane) { return lane ^ mask; });
}

template <typename T>
T __shfl_sync(unsigned, T v, int src, int = 32) {
    return fastrnn_host::exchange(v, [src](int) { return src; });
}

namespace fastrnn_host {

constexpr size_t kFiberStack = 256 * 1024;

template <typename Run>
struct BlockJob {
    Grid* grid;
    dim3 block_idx;
    Run* run;
    std::string error;
};

template <typename Run>
void fiber_entry(unsigned lo, unsigned hi) {
    // (makecontext passes int arguments: the Run pointer in two halves)
    const uintptr_t p = (uintptr_t(hi) << 32) | uintptr_t(lo);
    (*reinterpret_cast<Run*>(p))();
    fiber().done = true;
    // returning switches to uc_link: the scheduler
}

template <typename Run>
void* run_block(void* arg) {
    auto* job = static_cast<BlockJob<Run>*>(arg);
    Block block;
    block.grid = job->grid;
    block.block_idx = job->block_idx;
    const dim3 d = job->grid->block_dim;
    const unsigned n = d.x * d.y * d.z;
    block.fibers = std::vector<Fiber>(n);
    block.slots.assign(8 * 32 * ((n + 31) / 32), 0);
    block.warp_arrived.assign((n + 31) / 32, 0);
    block.warp_generation.assign((n + 31) / 32, 0);
    this_block = &block;
    const uintptr_t p = reinterpret_cast<uintptr_t>(job->run);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = block.fibers[i];
        f.thread_idx = dim3{i % d.x, (i / d.x) % d.y, i / (d.x * d.y)};
        f.stack.reset(new char[kFiberStack]);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = kFiberStack;
        f.ctx.uc_link = &block.scheduler;
        makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_entry<Run>), 2,
                    unsigned(p & 0xffffffffu), unsigned(p >> 32));
    }
    unsigned live = n;
    while (live > 0) {
        live = 0;
        for (unsigned i = 0; i < n; ++i) {
            if (block.fibers[i].done) continue;
            block.current = static_cast<int>(i);
            swapcontext(&block.scheduler, &block.fibers[i].ctx);
            if (!block.fibers[i].done) ++live;
        }
    }
    this_block = nullptr;
    return nullptr;
}

// Run `run()` as every thread of a grid of `grid` blocks of `block` threads, all blocks at
// once. Returns an empty string or what went wrong.
template <typename Run>
std::string launch(dim3 grid, dim3 block, Run run) {
    Grid g;
    g.grid_dim = grid;
    g.block_dim = block;
    const unsigned blocks = grid.x * grid.y * grid.z;
    if (blocks == 0 || block.x * block.y * block.z == 0) return "empty grid or block";
    if (block.x * block.y * block.z > 1024) return "more than 1024 threads in a block";
    pthread_barrier_init(&g.barrier, nullptr, blocks);
    std::vector<BlockJob<Run>> jobs(blocks);
    std::vector<pthread_t> threads(blocks);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    std::string error;
    unsigned started = 0;
    for (unsigned k = 0; k < blocks; ++k) {
        jobs[k] = BlockJob<Run>{&g, dim3{k % grid.x, (k / grid.x) % grid.y, k / (grid.x * grid.y)},
                                &run, {}};
        if (pthread_create(&threads[k], &attr, &run_block<Run>, &jobs[k]) != 0) {
            error = "could not start a thread for every block";
            break;
        }
        ++started;
    }
    for (unsigned k = 0; k < started; ++k) pthread_join(threads[k], nullptr);
    pthread_attr_destroy(&attr);
    pthread_barrier_destroy(&g.barrier);
    return error;
}

}  // namespace fastrnn_host

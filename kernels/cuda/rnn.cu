// Persistent recurrence kernels of the gpu backend: the whole time loop of one layer and
// one direction in one cooperative launch, one grid barrier per step.
//
// Shapes (docs/architecture.md legend; row-major): xg [T,B,G*H] = x @ w_ih^T + b_ih (one
// cuBLAS GEMM before the launch); w_hh [G*H,S]; w_hh_t [S,G*H] (its transpose, for backward);
// states h [B,S], c [B,H], where S = H, or P for an LSTM with a projection (w_hr [P,H],
// h = w_hr (o * tanh(c))). Block k owns hidden units [k*U, k*U+U) with all their gates,
// keeps its rows of w_hh (backward: its columns) in shared memory when they fit (SMEM_W),
// else reads them from global memory / L2 (the fallback for large H), and meets the other
// blocks at one grid.sync() per step (two with a projection, whose state units [k*SU,
// k*SU+SU) block k owns: the projection needs every unit's o * tanh(c)). Recurrent
// products: one warp per (gate row, batch row) dot product, lanes striding over H, a
// fixed-order shuffle reduction (deterministic, no atomics).
// A layer small enough for one block (the plan decides) skips the grid barrier: the block's
// own barrier then orders the steps. A layer-normalised cell (ln) normalises W_hh h over
// each row's G*H gates and the LSTMs' c' over its H units, which the blocks share: each
// block writes its partial sums, a grid barrier, then every block adds all partials in the
// same order (deterministic); backward does the same for the norms' gradients. Zoneout
// (zoned) mixes each step's new state with the old one by the given factors. Specialised
// at compile time on dtype, cell, training and where the weights live.

#include <cooperative_groups.h>

#include "cells.cuh"

namespace cg = cooperative_groups;
using namespace fastrnn;

// The barrier between steps: the whole grid's, or the block's when it is the whole grid.
__device__ __forceinline__ void step_barrier(cg::grid_group& grid) {
    if (gridDim.x == 1) {
        __syncthreads();
    } else {
        grid.sync();
    }
}

// Load this block's rows of a [R, K] row-major matrix into shared memory:
// local row g*U + uu holds global row g*stride + u0 + uu.
template <typename T, int G>
__device__ void load_rows(T* dst, const T* __restrict__ src, int u0, int U, int stride, int K) {
    for (int i = threadIdx.x; i < G * U * K; i += blockDim.x) {
        const int r = i / K, k = i - r * K;
        const int g = r / U, uu = r - g * U;
        dst[i] = src[(size_t)(g * stride + u0 + uu) * K + k];
    }
}

// One warp per (gate row, batch row) dot product of this block's rows of gates [g0, g1)
// with the batch's vectors `v` ([B,S]), lanes striding over S, a fixed-order shuffle
// reduction; hg[row, b] = product + b_hh[row].
template <typename T, int G, bool SMEM_W>
__device__ void gate_products(const T* w_s, const T* __restrict__ w_hh,
                              const T* __restrict__ b_hh, const T* v, T* hg, int g0, int g1,
                              int u0, int U, int B, int H, int S) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int p = warp + g0 * U * B; p < g1 * U * B; p += warps) {
        const int r = p / B, b = p - r * B;
        const int g = r / U, row = g * H + u0 + (r - g * U);
        const T* w = SMEM_W ? w_s + (size_t)r * S : w_hh + (size_t)row * S;
        const T* h = v + (size_t)b * S;
        T acc = T(0);
        for (int k = lane; k < S; k += 32) acc += w[k] * h[k];
        acc = warp_sum(acc);
        if (lane == 0) hg[(size_t)row * B + b] = acc + b_hh[row];
    }
}

// The kernels' parameters, written once: the definitions below and instantiate.cu's
// explicit instantiations use these lists, and contract.py's ForwardArgs / BackwardArgs name
// the same fields in the same order (tests/test_cuda_compile.py compares them).
#define RNN_FORWARD_PARAMS(T)                                                              \
    const T* __restrict__ xg, const T* __restrict__ w_hh, const T* __restrict__ b_hh,      \
    const T* __restrict__ peep,    /* [3,H] LSTM_P's peephole weights (rows i, f, o) */    \
    const T* __restrict__ w_hr,    /* [S,H] the LSTMs' projection (when S != H) */         \
    const long long* __restrict__ lengths,                                                  \
    T* __restrict__ hbuf,    /* [2,B,S]: h0 in hbuf[0]; the final state in hbuf[T%2] */    \
    T* __restrict__ c,       /* [B,H]: c0 on entry, c_n on exit (LSTMs); r * h (GRU_RB) */ \
    T* __restrict__ m,       /* [B,H] scratch: o * tanh(c) of the step (projection) */     \
    T* __restrict__ hg,      /* [G*H,B] scratch: recurrent products of the step */         \
    T* __restrict__ y,       /* [T,B,S] */                                                  \
    T* __restrict__ acts,    /* [T,B,G*H] gate activations (training) */                    \
    T* __restrict__ h_prev,  /* [T,B,S] state before each step (training) */                \
    T* __restrict__ c_all,   /* [T,B,H] cell state after each step (training, LSTMs) */     \
    T* __restrict__ hn_all,  /* [T,B,H] W_hn h + b_hn (GRU), r * h (GRU_RB) or          */ \
                             /* o * tanh(c) (projection; zero at padding) (training)    */ \
    const T* __restrict__ ln_hh,  /* [G*H] gain of LN(W_hh h) (ln; b_hh is then zero)  */ \
    const T* __restrict__ b_ln,   /* [G*H] the bias added after LN(W_hh h) (ln)         */ \
    const T* __restrict__ ln_c, const T* __restrict__ ln_cb,  /* [H] LN(c') (ln, LSTMs) */ \
    const T* __restrict__ zone,   /* [T,B,S] zoneout factors (zoned)                    */ \
    double* __restrict__ part,    /* [2,grid,B,2] the norms' partial sums (ln)          */ \
    T* __restrict__ h_hat, T* __restrict__ h_rstd,  /* [T,B,G*H], [T,B] (ln, training)  */ \
    T* __restrict__ c_hat, T* __restrict__ c_rstd,  /* [T,B,H], [T,B] (ln LSTMs, trng.) */ \
    int steps, int B, int H, int S, int units, int reverse, int ln, int zoned

#define RNN_BACKWARD_PARAMS(T)                                                             \
    const T* __restrict__ w_hh_t,  /* [S,G*H] */                                            \
    const T* __restrict__ peep,    /* [3,H] LSTM_P's peephole weights */                    \
    const T* __restrict__ w_hr,    /* [S,H] the LSTMs' projection (when S != H) */          \
    const T* __restrict__ dy, const long long* __restrict__ lengths,                        \
    const T* __restrict__ acts, const T* __restrict__ h_prev, const T* __restrict__ c_all,  \
    const T* __restrict__ hn_all, const T* __restrict__ c0,                                 \
    T* __restrict__ dh,      /* [B,S]: dh_n on entry, dh0 on exit */                        \
    T* __restrict__ dc,      /* [B,H]: dc_n on entry, dc0 on exit (LSTMs) */                \
    T* __restrict__ direct,  /* [B,H] scratch: the GRU's z * dh path to the previous state */ \
    T* __restrict__ dhs,     /* [T,B,S] the state gradient reaching each step            */ \
                             /* (projection; zero at padding), for dw_hr                 */ \
    /* (not __restrict__: the same array except for the GRUs) */                            \
    T* dgx,                  /* [T,B,G*H] pre-activation gradients, input side */           \
    T* dgh,                  /* [T,B,G*H] recurrent side */                                 \
    const T* __restrict__ ln_hh,  /* [G*H] gain of LN(W_hh h) (ln)                      */ \
    const T* __restrict__ ln_c, const T* __restrict__ ln_cb,  /* [H] LN(c') (ln, LSTMs) */ \
    const T* __restrict__ zone,   /* [T,B,S] zoneout factors (zoned)                    */ \
    double* __restrict__ part,    /* [2,grid,B,2] the norms' partial sums (ln)          */ \
    const T* __restrict__ h_hat, const T* __restrict__ h_rstd,  /* forward's (ln)       */ \
    const T* __restrict__ c_hat, const T* __restrict__ c_rstd,  /* forward's (ln LSTMs) */ \
    T* __restrict__ dgh_raw,  /* [T,B,G*H] dgh through LN(W_hh h): what w_hh sees (ln)  */ \
    T* __restrict__ dlnc,     /* [T,B,H] the gradient reaching LN(c') (ln, LSTMs)       */ \
    T* __restrict__ zdh,      /* [B,S] scratch: zoneout's direct part of dh (zoned)     */ \
    int steps, int B, int H, int S, int units, int reverse, int ln, int zoned

// LayerNorm across the grid: each block writes, per batch row, two partial sums over the
// values it owns (slot [blockIdx.x, b] of part, [grid,B,2] doubles); after a grid barrier
// every block adds all blocks' partials in the same order (deterministic).
__device__ __forceinline__ void put_partials(double* part, int b, int B, double s1,
                                             double s2) {
    part[((size_t)blockIdx.x * B + b) * 2] = s1;
    part[((size_t)blockIdx.x * B + b) * 2 + 1] = s2;
}

__device__ __forceinline__ void sum_partials(const double* part, int b, int B, double& s1,
                                             double& s2) {
    s1 = 0.0;
    s2 = 0.0;
    for (int k = 0; k < (int)gridDim.x; ++k) {
        s1 += part[((size_t)k * B + b) * 2];
        s2 += part[((size_t)k * B + b) * 2 + 1];
    }
}

// mean and 1 / sqrt(var + eps) of n values from their sum and sum of squares
__device__ __forceinline__ void ln_moments(double s1, double s2, int n, double& mean,
                                           double& rstd) {
    mean = s1 / n;
    const double var = s2 / n - mean * mean;
    rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + 1e-5);
}

template <typename T, int CELL, bool TRAINING, bool SMEM_W>
__global__ void __launch_bounds__(256) rnn_forward(RNN_FORWARD_PARAMS(T)) {
    constexpr int G = Gates<CELL>::G;
    constexpr bool RB = CELL == GRU_RB;  // a second product a step, over r * h
    constexpr bool HC = HasC<CELL>::value;
    const bool proj = HC && S != H;
    cg::grid_group grid = cg::this_grid();
    extern __shared__ __align__(16) unsigned char smem_raw[];  // reused as T*
    T* w_s = reinterpret_cast<T*>(smem_raw);
    const int u0 = blockIdx.x * units;
    const int U = max(0, min(units, H - u0));
    const int SU = (S + gridDim.x - 1) / gridDim.x;  // state units a block projects
    const int s0 = blockIdx.x * SU, SN = max(0, min(SU, S - s0));
    const int GH = G * H;
    if (SMEM_W) load_rows<T, G>(w_s, w_hh, u0, U, H, S);
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

    for (int s = 0; s < steps; ++s) {
        const int t = reverse ? steps - 1 - s : s;
        const T* hcur = hbuf + (size_t)(s & 1) * B * S;
        T* hnext = hbuf + (size_t)((s + 1) & 1) * B * S;
        gate_products<T, G, SMEM_W>(w_s, w_hh, b_hh, hcur, hg, 0, RB ? 2 : G, u0, U, B, H, S);
        __syncthreads();
        if (RB) {  // r * h of the block's units for every row, then everyone's for n
            for (int p = threadIdx.x; p < U * B; p += blockDim.x) {
                const int uu = p / B, b = p - uu * B, u = u0 + uu;
                const size_t bh = (size_t)b * H + u, tbh = ((size_t)t * B + b) * H + u;
                const T* xr = xg + ((size_t)t * B + b) * GH;
                const T rh = t < lengths[b] ? gru_reset(xr, hg, u, b, B, H) * hcur[bh] : T(0);
                c[bh] = rh;
                if (TRAINING) hn_all[tbh] = rh;
            }
            step_barrier(grid);
            gate_products<T, G, SMEM_W>(w_s, w_hh, b_hh, c, hg, 2, 3, u0, U, B, H, S);
            __syncthreads();
        }
        if (!RB && ln) {  // LN(W_hh h): every block's partial sums, then its own rows
            for (int b = threadIdx.x; b < B; b += blockDim.x) {
                double s1 = 0.0, s2 = 0.0;
                for (int r = 0; r < G * U; ++r) {
                    const double v = hg[(size_t)((r / U) * H + u0 + r % U) * B + b];
                    s1 += v;
                    s2 += v * v;
                }
                put_partials(part, b, B, s1, s2);
            }
            step_barrier(grid);
            for (int p = threadIdx.x; p < G * U * B; p += blockDim.x) {
                const int r = p / B, b = p - r * B;
                const int row = (r / U) * H + u0 + r % U;
                double s1, s2, mean, rstd;
                sum_partials(part, b, B, s1, s2);
                ln_moments(s1, s2, GH, mean, rstd);
                const T xh = T((hg[(size_t)row * B + b] - mean) * rstd);
                if (TRAINING) {
                    h_hat[((size_t)t * B + b) * GH + row] = xh;
                    if (row == 0) h_rstd[(size_t)t * B + b] = T(rstd);
                }
                hg[(size_t)row * B + b] = xh * ln_hh[row] + b_ln[row];
            }
            __syncthreads();
        }
        const bool lnc = HC && ln;  // h~ = o * tanh(LN(c')): finished after the norm
        // the step's new state from the cell's output hv (zoneout mixes in the old one)
        auto finish = [&](int u, int b, T hv) {
            const size_t bh = (size_t)b * H + u, tbh = ((size_t)t * B + b) * H + u;
            if (proj) {  // (the projection below makes the state)
                m[bh] = hv;
                if (TRAINING) hn_all[tbh] = hv;
                return;
            }
            const T hz = zoned ? zone[tbh] * hcur[bh] + (T(1) - zone[tbh]) * hv : hv;
            hnext[bh] = hz;
            y[tbh] = hz;
        };
        for (int p = threadIdx.x; p < U * B; p += blockDim.x) {
            const int uu = p / B, b = p - uu * B, u = u0 + uu;
            const size_t bh = (size_t)b * H + u, tbh = ((size_t)t * B + b) * H + u;
            const T hp = proj ? T(0) : hcur[bh];  // (with a projection: the state's below)
            if (TRAINING && !proj) h_prev[tbh] = hp;
            if (t >= lengths[b]) {  // padding: the state carries over, no output
                if (proj) {
                    m[bh] = T(0);
                    if (TRAINING) hn_all[tbh] = T(0);
                } else {
                    hnext[bh] = hp;
                    y[tbh] = T(0);
                }
                if (TRAINING && HC) c_all[tbh] = c[bh];
                continue;
            }
            const T* xr = xg + ((size_t)t * B + b) * GH;
            T* ar = acts + ((size_t)t * B + b) * GH;
            T cn = T(0), on = T(0), hn = T(0);
            const T hv = cell_forward<CELL, TRAINING>(xr, hg, peep, u, b, B, H, hp,
                                                      HC ? c[bh] : T(0), ar, cn, on, hn);
            if (HC) {
                c[bh] = cn;
                if (TRAINING) c_all[tbh] = cn;
            }
            if (TRAINING && CELL == GRU) hn_all[tbh] = hn;
            if (lnc) {
                m[bh] = on;  // (o, until LN(c') below)
            } else {
                finish(u, b, hv);
            }
        }
        if (lnc) {  // LN(c') over each row's H units: partial sums, barrier, the rest
            double* pc = part + (size_t)gridDim.x * B * 2;
            __syncthreads();  // (the block's values, written by all its threads)
            for (int b = threadIdx.x; b < B; b += blockDim.x) {
                double s1 = 0.0, s2 = 0.0;
                for (int uu = 0; uu < U; ++uu) {
                    const double v = c[(size_t)b * H + u0 + uu];
                    s1 += v;
                    s2 += v * v;
                }
                put_partials(pc, b, B, s1, s2);
            }
            step_barrier(grid);
            for (int p = threadIdx.x; p < U * B; p += blockDim.x) {
                const int uu = p / B, b = p - uu * B, u = u0 + uu;
                const size_t bh = (size_t)b * H + u, tbh = ((size_t)t * B + b) * H + u;
                if (t >= lengths[b]) {  // (handled above; backward sums read zeros here)
                    if (TRAINING) c_hat[tbh] = T(0);
                    continue;
                }
                double s1, s2, mean, rstd;
                sum_partials(pc, b, B, s1, s2);
                ln_moments(s1, s2, H, mean, rstd);
                const T ch = T((c[bh] - mean) * rstd);
                if (TRAINING) {
                    c_hat[tbh] = ch;
                    if (u == 0) c_rstd[(size_t)t * B + b] = T(rstd);
                }
                finish(u, b, m[bh] * tanh(ch * ln_c[u] + ln_cb[u]));
            }
        }
        if (proj) {  // every unit's o * tanh(c), then the state units this block owns
            step_barrier(grid);
            for (int p = warp; p < SN * B; p += warps) {
                const int q = s0 + p / B, b = p % B;
                const size_t bs = (size_t)b * S + q, tbs = ((size_t)t * B + b) * S + q;
                const T* w = w_hr + (size_t)q * H;
                const T* mv = m + (size_t)b * H;
                T acc = T(0);
                for (int k = lane; k < H; k += 32) acc += w[k] * mv[k];
                acc = warp_sum(acc);
                if (lane == 0) {
                    const T hp = hcur[bs];
                    if (TRAINING) h_prev[tbs] = hp;
                    const bool valid = t < lengths[b];
                    const T hz = zoned ? zone[tbs] * hp + (T(1) - zone[tbs]) * acc : acc;
                    hnext[bs] = valid ? hz : hp;
                    y[tbs] = valid ? hz : T(0);
                }
            }
        }
        step_barrier(grid);  // every unit of step s is written before any block reads it
    }
}

template <typename T, int CELL, bool SMEM_W>
__global__ void __launch_bounds__(256) rnn_backward(RNN_BACKWARD_PARAMS(T)) {
    constexpr int G = Gates<CELL>::G;
    constexpr bool RB = CELL == GRU_RB;  // n's product saw r * h: d(r*h) = W_hn^T dn first
    constexpr bool HC = HasC<CELL>::value;
    const bool proj = HC && S != H;
    const bool lnc = HC && ln;  // LN(c'): the LSTMs' backward waits for its norm's sums
    cg::grid_group grid = cg::this_grid();
    extern __shared__ __align__(16) unsigned char smem_raw[];  // reused as T*
    T* w_s = reinterpret_cast<T*>(smem_raw);  // [SU, G*H]: this block's columns of w_hh
    const int u0 = blockIdx.x * units;
    const int U = max(0, min(units, H - u0));
    // the state units whose gradient this block computes: its hidden units, or with a
    // projection its share of the S state units
    const int SU = proj ? (S + gridDim.x - 1) / gridDim.x : units;
    const int s0 = blockIdx.x * SU, SN = max(0, min(SU, S - s0));
    const int GH = G * H;
    if (SMEM_W) load_rows<T, 1>(w_s, w_hh_t, s0, SN, 0, GH);
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    // dot product of row s0 + q of w_hh_t (columns [j0, j1)) with step t's gate gradients
    // (a layer-normalised cell's w_hh sees the gradients through LN(W_hh h): dgh_raw)
    const T* gsrc = ln ? dgh_raw : dgh;
    auto column_dot = [&](int q, int b, int t, int j0, int j1) {
        const T* w = SMEM_W ? w_s + (size_t)q * GH : w_hh_t + (size_t)(s0 + q) * GH;
        const T* g = gsrc + ((size_t)t * B + b) * GH;
        T acc = T(0);
        for (int j = j0 + lane; j < j1; j += 32) acc += w[j] * g[j];
        return warp_sum(acc);
    };

    for (int s = 0; s < steps; ++s) {
        const int t = reverse ? s : steps - 1 - s;  // reverse of the forward walk
        const bool first = t == (reverse ? steps - 1 : 0);
        const int tp = reverse ? t + 1 : t - 1;
        if (proj) {  // the state's whole gradient, every unit's before the product with w_hr
            for (int p = threadIdx.x; p < SN * B; p += blockDim.x) {
                const int q = s0 + p / B, b = p % B;
                const size_t bs = (size_t)b * S + q, tbs = ((size_t)t * B + b) * S + q;
                const bool valid = t < lengths[b];
                const T tot = dh[bs] + dy[tbs];  // (zoneout: part of it skips the cell)
                dhs[tbs] = valid ? (zoned ? (T(1) - zone[tbs]) * tot : tot) : T(0);
                if (zoned) zdh[bs] = valid ? zone[tbs] * tot : T(0);
            }
            step_barrier(grid);
        }
        // the gradient reaching the cell's output at unit u of row b (no projection)
        auto reaching = [&](int u, int b) {
            const size_t bh = (size_t)b * H + u, tbh = ((size_t)t * B + b) * H + u;
            const T tot = dh[bh] + dy[tbh];
            return zoned ? (T(1) - zone[tbh]) * tot : tot;
        };
        if (RB) {  // dn of the block's units, then everyone's for d(r*h) = W_hn^T dn
            for (int p = threadIdx.x; p < U * B; p += blockDim.x) {
                const int uu = p / B, b = p - uu * B, u = u0 + uu;
                const size_t bh = (size_t)b * H + u, tbh = ((size_t)t * B + b) * H + u;
                const size_t row = ((size_t)t * B + b) * GH;
                const T* ar = acts + row;
                const T dn = t < lengths[b] ? gru_reset_before_dn(ar, reaching(u, b), u, H)
                                            : T(0);
                dgx[row + 2 * H + u] = dn;
                dgh[row + 2 * H + u] = dn;
            }
            step_barrier(grid);
            for (int p = warp; p < U * B; p += warps) {
                const int uu = p / B, b = p - uu * B;
                const T acc = column_dot(uu, b, t, 2 * H, 3 * H);
                if (lane == 0) direct[(size_t)b * H + u0 + uu] = acc;  // d(r*h) for now
            }
            __syncthreads();
        }
        for (int p = threadIdx.x; p < U * B; p += blockDim.x) {
            const int uu = p / B, b = p - uu * B, u = u0 + uu;
            const size_t bh = (size_t)b * H + u, tbh = ((size_t)t * B + b) * H + u;
            T* gx = dgx + ((size_t)t * B + b) * GH;
            T* gh = dgh + ((size_t)t * B + b) * GH;
            if (t >= lengths[b]) {  // padding: no gate gradient; the state's passes through
                for (int g = 0; g < G; ++g) { gx[g * H + u] = T(0); gh[g * H + u] = T(0); }
                if (lnc) dlnc[tbh] = T(0);
                continue;
            }
            const T* ar = acts + ((size_t)t * B + b) * GH;
            const T cp = HC ? (first ? c0[bh] : c_all[((size_t)tp * B + b) * H + u]) : T(0);
            T dcv = HC ? dc[bh] : T(0);
            T dht;  // the gradient reaching the cell's output: dh', or w_hr^T dh'
            if (proj) {
                const T* g = dhs + ((size_t)t * B + b) * S;
                dht = T(0);
                for (int q = 0; q < S; ++q) dht += w_hr[(size_t)q * H + u] * g[q];
            } else {
                dht = reaching(u, b);
                if (zoned) zdh[bh] = zone[tbh] * (dh[bh] + dy[tbh]);
            }
            if (lnc) {  // the gradient reaching LN(c'); the rest after its norm's sums
                const T o = ar[3 * H + u];
                const T tc = tanh(c_hat[tbh] * ln_c[u] + ln_cb[u]);
                dlnc[tbh] = dht * o * (T(1) - tc * tc);
                direct[bh] = dht;  // (kept for the second half)
                continue;
            }
            const T dir = cell_backward<CELL>(ar, peep, dht, u, H, proj ? T(0) : h_prev[tbh],
                                              HC ? c_all[tbh] : T(0), cp, dcv,
                                              CELL == GRU || RB ? hn_all[tbh] : T(0),
                                              RB ? direct[bh] : T(0), gx, gh);
            if (HC) dc[bh] = dcv;
            if (CELL == GRU || RB) direct[bh] = dir;
        }
        if (lnc) {  // LN(c')'s backward over each row's H units, then the LSTM's
            double* pc = part + (size_t)gridDim.x * B * 2;
            __syncthreads();  // (the block's values, written by all its threads)
            for (int b = threadIdx.x; b < B; b += blockDim.x) {
                double s1 = 0.0, s2 = 0.0;
                for (int uu = 0; uu < U; ++uu) {
                    const size_t tbh = ((size_t)t * B + b) * H + u0 + uu;
                    const double d = (double)dlnc[tbh] * ln_c[u0 + uu];
                    s1 += d;
                    s2 += d * c_hat[tbh];
                }
                put_partials(pc, b, B, s1, s2);
            }
            step_barrier(grid);
            for (int p = threadIdx.x; p < U * B; p += blockDim.x) {
                const int uu = p / B, b = p - uu * B, u = u0 + uu;
                if (t >= lengths[b]) continue;
                const size_t bh = (size_t)b * H + u, tbh = ((size_t)t * B + b) * H + u;
                double s1, s2;
                sum_partials(pc, b, B, s1, s2);
                const T dthrough = T(c_rstd[(size_t)t * B + b] *
                                     (dlnc[tbh] * ln_c[u] - s1 / H - c_hat[tbh] * s2 / H));
                const T* ar = acts + ((size_t)t * B + b) * GH;
                const T cp = first ? c0[bh] : c_all[((size_t)tp * B + b) * H + u];
                const T tc = tanh(c_hat[tbh] * ln_c[u] + ln_cb[u]);
                T dcv = dc[bh];
                lstm_backward<CELL>(ar, peep, direct[bh], u, H, tc, dthrough, cp, dcv,
                                    dgh + ((size_t)t * B + b) * GH);
                dc[bh] = dcv;
            }
        }
        step_barrier(grid);  // every gate gradient of step t is written
        if (ln) {  // LN(W_hh h)'s backward over each row's G*H gates: sums, then own rows
            for (int b = threadIdx.x; b < B; b += blockDim.x) {
                double s1 = 0.0, s2 = 0.0;
                for (int r = 0; r < G * U; ++r) {
                    const int row = (r / U) * H + u0 + r % U;
                    const size_t i = ((size_t)t * B + b) * GH + row;
                    const double d = (double)dgh[i] * ln_hh[row];
                    s1 += d;
                    s2 += d * h_hat[i];
                }
                put_partials(part, b, B, s1, s2);
            }
            step_barrier(grid);
            for (int p = threadIdx.x; p < G * U * B; p += blockDim.x) {
                const int r = p / B, b = p - r * B;
                const int row = (r / U) * H + u0 + r % U;
                const size_t i = ((size_t)t * B + b) * GH + row;
                double s1, s2;
                sum_partials(part, b, B, s1, s2);
                dgh_raw[i] = T(h_rstd[(size_t)t * B + b] *
                               (dgh[i] * ln_hh[row] - s1 / GH - h_hat[i] * s2 / GH));
            }
            step_barrier(grid);  // every row's raw gradients, before the products
        }
        for (int p = warp; p < SN * B; p += warps) {
            const int q = p / B, b = p - q * B;
            const T acc = column_dot(q, b, t, 0, RB ? 2 * H : GH);
            if (lane == 0 && t < lengths[b]) {
                const size_t bs = (size_t)b * S + s0 + q;  // (S = H but with a projection)
                dh[bs] = acc + (CELL == GRU || RB ? direct[bs] : T(0)) +
                         (zoned ? zdh[bs] : T(0));
            }
        }
        __syncthreads();  // dh of owned units is final before the next step reads it
    }
}

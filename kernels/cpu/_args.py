"""Named groups of the arrays the compiled loops take (Numba passes named tuples of arrays
to compiled code as they are), and the plan of a call."""

from collections import namedtuple

# The pointwise parameters of a step: b_ih, b_hh [G*H] (zeros for a layer without bias)
# and gates = b_ih + b_hh: the biases enter in the gate passes, except the GRU's n gate,
# which takes b_in outside and b_hn inside r * (.); peep [3,H] the peephole weights of
# lstm_peephole (rows i, f, o; [0,0] for the other cells)
Biases = namedtuple("Biases", "ih hh gates peep")

# lengths [B] int64 (valid steps of each row) and reverse (walk time backwards)
Sequence = namedtuple("Sequence", "lengths reverse")

# What backward needs, written by the training forward ([T,B,*]; when inferring, one-step
# scratch [1,B,*] that every step overwrites): acts [G*H] the gate activations, h_prev [H]
# the state each step started from, c_all [H] the LSTM's cell state after each step (else
# [1,B,H] scratch), hn_all [H] the GRU's W_hn h + b_hn or r * h, or the projected LSTM's
# o * tanh(c') (else [1,B,H] scratch). h_prev has the state's size S: H, or the
# projection's
Saved = namedtuple("Saved", "acts h_prev c_all hn_all")

# The forward's outputs: y [T,B,H], h_n and c_n [B,H]
Outputs = namedtuple("Outputs", "y h_n c_n")

# The backward's results: dgx, dgh [T,B,G*H] the input-side and recurrent-side gate
# gradients (one array except for the GRU), dh0 [B,S], dc0 [B,H], db [blocks, G*H + 3*H]
# the sums of each row or unit block: the biases' gradients, then the GRU's n block of dgh
# or lstm_peephole's peephole gradients [3*H]; dhs [T,B,S] the state gradient reaching
# each step of an LSTM with a projection (else [0,B,S])
Grads = namedtuple("Grads", "dgx dgh dh0 dc0 db dhs")

# How a forward call runs: threads it may use, units (the unit blocks of the unit-split
# loops, or None for the batch split) and where the input projection is computed
# ("gemm", "batch", "units", "rowdot" or "step", see the package's _projection)
Plan = namedtuple("Plan", "threads units projection")

# The input projection: xg [T,B,G*H] (without bias), x the input and w its weights, per
# the steps a product covers. The batch-split loop computes xg itself when xg is empty (x
# [T,B,I], w = w_ih.T packed); the unit-split loop when per > 0 (x [T*B,I], w = w_ih, or
# its int8 or bfloat16 values with, for int8, its row scales in scale; else empty)
Projection = namedtuple("Projection", "xg x w per scale")

# The recurrent weights of the unit-split loops: w_hh [G*H,H] as it is (read when packed is
# empty), or packed: unit block q's gate g in the panels from starts[q*G + g]
# (forward), or unit block q's columns from starts[q] (backward). Quantized inference
# passes w_hh's int8 or bfloat16 values (kernels/quantize.py) as it is, and for int8 its
# scale [G*H] (each row's); scale is empty otherwise
UnitWeights = namedtuple("UnitWeights", "w_hh packed starts scale")

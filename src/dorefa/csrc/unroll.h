// DOREFA_UNROLL before a loop over a register tile's rows or columns (compile-time bounds):
// unroll it completely, early. GCC 12 at -O3 otherwise unrolls such loops late, after it has
// given each multiply-add's accumulator a copy: a VPDPBUSD tile of 24 int32 sums then moved
// every sum between registers and stored part of them on the stack at every step (the
// input-gradient GEMM's 4 x 6 tile ran 1.5-2x slower); with the loops unrolled early the loop
// body is the loads, the broadcasts and the multiply-adds only.
#ifndef DOREFA_CSRC_UNROLL_H_
#define DOREFA_CSRC_UNROLL_H_

#define DOREFA_UNROLL _Pragma("GCC unroll 32")

#endif  // DOREFA_CSRC_UNROLL_H_

/*
 * simd_end.h -- closes one instance of the SIMD kernels in tiled.c: after
 * simd.h, tiled_impl.h and decode_impl.h, it undefines what they and the
 * includer defined, so that the next (ISA, REAL) instance starts clean.
 */

#undef ALWAYS_INLINE
#undef ROW_BLOCKS
#undef SIMD_REGISTERS
#undef TILED_nonfinite_dims
#undef KEY_PANEL
#undef VALUE_PANEL
#undef VALUE_PAD
#undef PANEL_WIDTH
#undef DVEC
#undef DW
#undef DV_LOAD
#undef DV_STORE
#undef DV_SET1
#undef DV_ZERO
#undef DV_FMA
#undef DV_MUL
#undef DV_ADD
#undef DV_SUB
#undef DV_FMSUB
#undef DV_KEEP_FINITE
#undef DV_FROM_REAL
#undef RVEC
#undef RW
#undef RV_LOAD
#undef RV_STORE
#undef RV_SET1
#undef RV_FMA
#undef RV_MUL
#undef RV_ADD
#undef RV_SUB
#undef RV_MAX
#undef RV_MIN
#undef RV_FNMADD
#undef RV_ROUND
#undef ROUND_SCALE_SHIFTER
#undef ROUND_SCALE_PRESCALE
#undef EXP_LO
#undef EXP_HI
#undef EXP_LN2_HI
#undef EXP_LN2_LO
#undef REAL
#undef REAL_IS_DOUBLE
#undef EXP
#undef LOG
#undef TILED

/*
 * backward_tiled.c -- the SIMD paths of the backward: backward_tiled_impl.h
 * instantiated per instruction set and float type, as tiled.c instantiates
 * the forward (AVX-512 and AVX2+FMA in target regions on x86-64, NEON on
 * aarch64), with simd.h's vector operations and simd_exp.h's exp.
 * backward.c runs them on the code path the forward uses.
 */
#define _POSIX_C_SOURCE 200809L

#include "backward.h"

#if ATTNREF_TILED || ATTNREF_NEON

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if ATTNREF_TILED
#include <immintrin.h>
#endif
#if ATTNREF_NEON
#include <arm_neon.h>
#endif


#if ATTNREF_TILED

TARGET_PUSH("avx512f,avx512dq,fma")
#define SIMD_AVX512 1
#define REAL float
#define REAL_IS_DOUBLE 0
#define TILED(name) name##_avx512_f32
#include "simd.h"
#include "backward_tiled_impl.h"
#include "simd_end.h"
#define REAL double
#define REAL_IS_DOUBLE 1
#define TILED(name) name##_avx512_f64
#include "simd.h"
#include "backward_tiled_impl.h"
#include "simd_end.h"
#undef SIMD_AVX512
TARGET_POP

TARGET_PUSH("avx2,fma")
#define SIMD_AVX2 1
#define REAL float
#define REAL_IS_DOUBLE 0
#define TILED(name) name##_avx2_f32
#include "simd.h"
#include "backward_tiled_impl.h"
#include "simd_end.h"
#define REAL double
#define REAL_IS_DOUBLE 1
#define TILED(name) name##_avx2_f64
#include "simd.h"
#include "backward_tiled_impl.h"
#include "simd_end.h"
#undef SIMD_AVX2
TARGET_POP

#endif /* ATTNREF_TILED */

#if ATTNREF_NEON
#define SIMD_NEON 1
#define REAL float
#define REAL_IS_DOUBLE 0
#define TILED(name) name##_neon_f32
#include "simd.h"
#include "backward_tiled_impl.h"
#include "simd_end.h"
#define REAL double
#define REAL_IS_DOUBLE 1
#define TILED(name) name##_neon_f64
#include "simd.h"
#include "backward_tiled_impl.h"
#include "simd_end.h"
#undef SIMD_NEON
#endif /* ATTNREF_NEON */

#endif /* ATTNREF_TILED || ATTNREF_NEON */

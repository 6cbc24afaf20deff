/* Peak arithmetic rate of one CPU core for the three instructions a float32, bfloat16 or float16
 * matrix product is built from: what reduced precision could gain at best on this machine.
 *
 *   gcc -O2 -march=sapphirerapids benchmarks/isa_peak.c -o /tmp/isa_peak && /tmp/isa_peak
 *
 * Needs a CPU with AVX512-BF16 and AVX512-FP16 (it stops with "Illegal instruction" otherwise).
 * Each loop keeps 16 independent accumulators in zmm registers, enough to hide the instructions'
 * latency, so the figure is their throughput. One fused multiply-add counts as 2 FLOPs:
 *   vfmadd*ps:   16 float32 lanes                        = 32 FLOPs per instruction
 *   vdpbf16ps:   16 float32 lanes, each += 2 bf16 products = 64 FLOPs per instruction
 *   vfmadd*ph:   32 float16 lanes                        = 64 FLOPs per instruction
 * vfmadd*ph also accumulates in float16. Matrix products for training accumulate in float32, which
 * AVX512-FP16 has no instruction for, so they convert first and cannot reach that figure. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ITERATIONS 100000000L
#define ACCUMULATORS 16 /* as many as EACH16 names */
/* An empty asm that "may change" the register: the compiler can neither merge nor drop the chains. */
#define KEEP(v) __asm__ volatile("" : "+v"(v));

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* EACH16(M, args...) is M(0, args...) M(1, args...) ... M(15, args...): the accumulators are named
 * variables a0..a15, so that they stay in registers (an array would be spilled to memory). */
#define EACH16(M, ...)                                                                           \
  M(0, __VA_ARGS__) M(1, __VA_ARGS__) M(2, __VA_ARGS__) M(3, __VA_ARGS__) M(4, __VA_ARGS__)     \
  M(5, __VA_ARGS__) M(6, __VA_ARGS__) M(7, __VA_ARGS__) M(8, __VA_ARGS__) M(9, __VA_ARGS__)     \
  M(10, __VA_ARGS__) M(11, __VA_ARGS__) M(12, __VA_ARGS__) M(13, __VA_ARGS__) M(14, __VA_ARGS__) \
  M(15, __VA_ARGS__)
#define DECLARE(i, VECTOR, FROM_FLOAT) VECTOR a##i = FROM_FLOAT((float)i);
#define STEP(i, OP) a##i = OP(a##i, x, y); KEEP(a##i)
#define ADD(i, TO_FLOAT) *check += TO_FLOAT(a##i);

/* One timing function per instruction: ITERATIONS rounds of `a = OP(a, x, y)` on each of the 16
 * independent accumulators (VECTOR, starting at 0..15), then the checksum of their sum. */
#define DEFINE_MEASURE(name, VECTOR, OPERAND, FROM_FLOAT, OP, TO_FLOAT) \
  static double name(OPERAND x, OPERAND y, float *check) {            \
    EACH16(DECLARE, VECTOR, FROM_FLOAT)                                 \
    double start = seconds();                                           \
    for (long n = 0; n < ITERATIONS; n++) {                             \
      EACH16(STEP, OP)                                                  \
    }                                                                   \
    double elapsed = seconds() - start;                                 \
    *check = 0.0f;                                                      \
    EACH16(ADD, TO_FLOAT)                                               \
    return elapsed;                                                     \
  }

static __m512h ph_from_float(float v) { return _mm512_set1_ph((_Float16)v); }
static float ph_to_float(__m512h v) { return (float)_mm512_reduce_add_ph(v); }
static __m512 ps_fma(__m512 acc, __m512 x, __m512 y) { return _mm512_fmadd_ps(acc, x, y); }
static __m512h ph_fma(__m512h acc, __m512h x, __m512h y) { return _mm512_fmadd_ph(acc, x, y); }

DEFINE_MEASURE(measure_fp32_fma, __m512, __m512, _mm512_set1_ps, ps_fma, _mm512_reduce_add_ps)
DEFINE_MEASURE(measure_bf16_dot, __m512, __m512bh, _mm512_set1_ps, _mm512_dpbf16_ps, _mm512_reduce_add_ps)
DEFINE_MEASURE(measure_fp16_fma, __m512h, __m512h, ph_from_float, ph_fma, ph_to_float)

static void report(const char *name, double flops_per_instruction, double elapsed, float check) {
  double gflops = ITERATIONS * (double)ACCUMULATORS * flops_per_instruction / elapsed / 1e9;
  printf("%-28s %7.1f GFLOP/s per core   (checksum %g)\n", name, gflops, check);
}

int main(void) {
  float check;
  double elapsed = measure_fp32_fma(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.5f), &check);
  report("float32 FMA (vfmadd*ps)", 32.0, elapsed, check);
  const __m512bh one_bf16 = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 in bfloat16 */
  elapsed = measure_bf16_dot(one_bf16, one_bf16, &check);
  report("bfloat16 dot (vdpbf16ps)", 64.0, elapsed, check);
  elapsed = measure_fp16_fma(ph_from_float(1.0f), ph_from_float(0.001f), &check);
  report("float16 FMA (vfmadd*ph)", 64.0, elapsed, check);
  return 0;
}

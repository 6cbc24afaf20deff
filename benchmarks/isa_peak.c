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
#define EACH16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
/* An empty asm that "may change" the register: the compiler can neither merge nor drop the chains. */
#define KEEP(v) __asm__ volatile("" : "+v"(v));

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void report(const char *name, double flops_per_instruction, double elapsed, float check) {
  double gflops = ITERATIONS * 16.0 * flops_per_instruction / elapsed / 1e9;
  printf("%-28s %7.1f GFLOP/s per core   (checksum %g)\n", name, gflops, check);
}

int main(void) {
  double start, elapsed;
  float check = 0.0f;

  const __m512 half = _mm512_set1_ps(0.5f);
#define DECLARE_PS(i) __m512 a##i = _mm512_set1_ps((float)i);
  EACH16(DECLARE_PS)
  start = seconds();
  for (long n = 0; n < ITERATIONS; n++) {
#define FMA_PS(i) a##i = _mm512_fmadd_ps(a##i, half, half); KEEP(a##i)
    EACH16(FMA_PS)
  }
  elapsed = seconds() - start;
#define SUM_PS(i) check += _mm512_reduce_add_ps(a##i);
  EACH16(SUM_PS)
  report("float32 FMA (vfmadd*ps)", 32.0, elapsed, check);

  const __m512bh one_bf16 = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 in bfloat16 */
#define DECLARE_BF(i) __m512 b##i = _mm512_set1_ps((float)i);
  EACH16(DECLARE_BF)
  start = seconds();
  for (long n = 0; n < ITERATIONS; n++) {
#define DOT_BF(i) b##i = _mm512_dpbf16_ps(b##i, one_bf16, one_bf16); KEEP(b##i)
    EACH16(DOT_BF)
  }
  elapsed = seconds() - start;
  check = 0.0f;
#define SUM_BF(i) check += _mm512_reduce_add_ps(b##i);
  EACH16(SUM_BF)
  report("bfloat16 dot (vdpbf16ps)", 64.0, elapsed, check);

  const __m512h one_fp16 = _mm512_set1_ph((_Float16)1.0f), tiny = _mm512_set1_ph((_Float16)0.001f);
#define DECLARE_PH(i) __m512h h##i = _mm512_set1_ph((_Float16)i);
  EACH16(DECLARE_PH)
  start = seconds();
  for (long n = 0; n < ITERATIONS; n++) {
#define FMA_PH(i) h##i = _mm512_fmadd_ph(h##i, one_fp16, tiny); KEEP(h##i)
    EACH16(FMA_PH)
  }
  elapsed = seconds() - start;
  check = 0.0f;
#define SUM_PH(i) check += (float)_mm512_reduce_add_ph(h##i);
  EACH16(SUM_PH)
  report("float16 FMA (vfmadd*ph)", 64.0, elapsed, check);
  return 0;
}

/* libcublas.so.12 for a bench machine that has only CUDA 13's cuBLAS (the lent device's image).
 *
 * PyPI's FAISS GPU build (faiss-gpu-cu12) links against CUDA 12's cuBLAS, versioned symbols
 * `name@libcublas.so.12`; the lent machine has CUDA 13 and no network, and CUDA 12's cuBLAS wheel is far
 * beyond what a call may carry. FAISS calls eight cuBLAS entry points whose signatures are the same in
 * cuBLAS 12 and 13; this library exports them under the libcublas.so.12 version node (see
 * cublas12_shim.map) and forwards each to libcublas.so.13, loaded on first use. Enum arguments are passed
 * through as int (their values are unchanged between the two versions).
 *
 * Benchmarks only: deployments install CUDA 12's cuBLAS beside faiss-gpu-cu12 (deploy/), never this.
 * Built by benchmarks/device/faiss_gpu.sh:
 *   cc -shared -fPIC -O2 -Wl,-soname,libcublas.so.12 -Wl,--version-script=cublas12_shim.map \
 *      -o libcublas.so.12 cublas12_shim.c -ldl
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int status_t;  /* cublasStatus_t */
typedef void *handle_t; /* cublasHandle_t */

static void *forward(const char *name) {
    static void *lib;
    if (!lib) {
        lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
        if (!lib) {
            fprintf(stderr, "cublas12 shim: cannot load libcublas.so.13: %s\n", dlerror());
            abort();
        }
    }
    void *f = dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "cublas12 shim: libcublas.so.13 has no %s\n", name);
        abort();
    }
    return f;
}

#define FORWARD(name, params, args)                                  \
    status_t name params {                                           \
        static status_t(*f) params;                                  \
        if (!f) f = (status_t(*) params)forward(#name);              \
        return f args;                                               \
    }

FORWARD(cublasCreate_v2, (handle_t *h), (h))
FORWARD(cublasDestroy_v2, (handle_t h), (h))
FORWARD(cublasSetStream_v2, (handle_t h, void *stream), (h, stream))
FORWARD(cublasGetMathMode, (handle_t h, int *mode), (h, mode))
FORWARD(cublasSetMathMode, (handle_t h, int mode), (h, mode))
FORWARD(cublasSgemmEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const void *A, int at, int lda,
         const void *B, int bt, int ldb, const float *beta, void *C, int ct, int ldc),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc))
FORWARD(cublasGemmEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at, int lda,
         const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, compute, algo))
FORWARD(cublasGemmStridedBatchedEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at, int lda,
         long long sa, const void *B, int bt, int ldb, long long sb, const void *beta, void *C, int ct, int ldc,
         long long sc, int batch, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, compute, algo))

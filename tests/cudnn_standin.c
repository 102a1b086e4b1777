/* A host-memory stand-in for the part of libcudnn that pyfacelayers/gpu/cudnn.py calls,
 * so that the binding (argument order, descriptors, algorithm choice, workspace, alpha
 * and beta) is tested on machines without a GPU. The "device pointers" are host
 * pointers; the convolutions are plain loops.
 *
 * It is strict where a real cuDNN would be: unknown formats, modes and types are
 * refused, an algorithm outside the ones it offered or a short workspace is an error,
 * and the math type must be FMA when a convolution runs.
 *
 * Built by tests/test_cudnn.py with the C compiler: cc -shared -fPIC.
 */
#include <stdlib.h>
#include <string.h>
#include <stddef.h>

#define OK 0
#define NOT_INITIALIZED 1001
#define BAD_PARAM 2000
#define NOT_SUPPORTED 3000

enum { TENSOR = 1, FILTER = 2, CONV = 3 };
enum { FWD = 0, BWD_DATA = 1, BWD_FILTER = 2 };

typedef struct { int kind; int type; int d[8]; } Desc;
typedef struct { int algo, status; float time; size_t memory; int determinism, math_type, reserved[3]; } Perf;

static int live_descriptors = 0;
static int last_algo[3] = {-1, -1, -1};
static int runs[3] = {0, 0, 0};

int standin_live_descriptors(void) { return live_descriptors; }
int standin_last_algo(int direction) { return last_algo[direction]; }
int standin_runs(int direction) { return runs[direction]; }

size_t cudnnGetVersion(void) {
    const char *v = getenv("STANDIN_VERSION");
    return v ? (size_t)atol(v) : 90000;
}

const char *cudnnGetErrorString(int status) {
    switch (status) {
        case OK: return "CUDNN_STATUS_SUCCESS";
        case NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
        case BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
        case NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
        default: return "CUDNN_STATUS_UNKNOWN";
    }
}

int cudnnCreate(void **handle) {
    if (getenv("STANDIN_NO_DEVICE")) return NOT_INITIALIZED;
    *handle = malloc(1);
    return OK;
}

int cudnnSetStream(void *handle, void *stream) { (void)handle; (void)stream; return OK; }

static int create(void **out, int kind) {
    Desc *d = calloc(1, sizeof(Desc));
    d->kind = kind;
    *out = d;
    live_descriptors++;
    return OK;
}
static int destroy(void *p, int kind) {
    if (!p || ((Desc *)p)->kind != kind) return BAD_PARAM;
    free(p);
    live_descriptors--;
    return OK;
}
int cudnnCreateTensorDescriptor(void **d) { return create(d, TENSOR); }
int cudnnCreateFilterDescriptor(void **d) { return create(d, FILTER); }
int cudnnCreateConvolutionDescriptor(void **d) { return create(d, CONV); }
int cudnnDestroyTensorDescriptor(void *d) { return destroy(d, TENSOR); }
int cudnnDestroyFilterDescriptor(void *d) { return destroy(d, FILTER); }
int cudnnDestroyConvolutionDescriptor(void *d) { return destroy(d, CONV); }

static int set4(Desc *d, int kind, int format, int type, int n, int c, int h, int w) {
    if (!d || d->kind != kind || format != 0 || (type != 0 && type != 1) ||
        n < 1 || c < 1 || h < 1 || w < 1) return BAD_PARAM;
    d->type = type;
    d->d[0] = n; d->d[1] = c; d->d[2] = h; d->d[3] = w;
    return OK;
}
int cudnnSetTensor4dDescriptor(Desc *d, int format, int type, int n, int c, int h, int w) {
    return set4(d, TENSOR, format, type, n, c, h, w);
}
int cudnnSetFilter4dDescriptor(Desc *d, int type, int format, int k, int c, int h, int w) {
    return set4(d, FILTER, format, type, k, c, h, w);
}
/* conv d[]: pad_h pad_w stride_h stride_w dil_h dil_w group math */
int cudnnSetConvolution2dDescriptor(Desc *d, int ph, int pw, int sh, int sw, int dh, int dw,
                                    int mode, int type) {
    if (!d || d->kind != CONV || mode != 1 || (type != 0 && type != 1) || ph < 0 || pw < 0 ||
        sh < 1 || sw < 1 || dh < 1 || dw < 1) return BAD_PARAM;
    d->type = type;
    d->d[0] = ph; d->d[1] = pw; d->d[2] = sh; d->d[3] = sw; d->d[4] = dh; d->d[5] = dw;
    d->d[6] = 1; d->d[7] = 0;
    return OK;
}
int cudnnSetConvolutionGroupCount(Desc *d, int g) {
    if (!d || d->kind != CONV || g < 1) return BAD_PARAM;
    d->d[6] = g;
    return OK;
}
int cudnnSetConvolutionMathType(Desc *d, int m) {
    if (!d || d->kind != CONV || m < 0 || m > 3) return BAD_PARAM;
    d->d[7] = m;
    return OK;
}

static int out_size(int size, int k, int p, int s, int dil) {
    return (size + 2 * p - (dil * (k - 1) + 1)) / s + 1;
}

static int check_geometry(Desc *x, Desc *w, Desc *c, Desc *y) {
    if (!x || x->kind != TENSOR || !w || w->kind != FILTER || !c || c->kind != CONV ||
        (y && y->kind != TENSOR)) return BAD_PARAM;
    int g = c->d[6];
    if (x->type != w->type || x->type != c->type || x->d[1] != w->d[1] * g || w->d[0] % g)
        return BAD_PARAM;
    if (y && (y->type != x->type || y->d[0] != x->d[0] || y->d[1] != w->d[0] ||
              y->d[2] != out_size(x->d[2], w->d[2], c->d[0], c->d[2], c->d[4]) ||
              y->d[3] != out_size(x->d[3], w->d[3], c->d[1], c->d[3], c->d[5])))
        return BAD_PARAM;
    return OK;
}

int cudnnGetConvolution2dForwardOutputDim(Desc *c, Desc *x, Desc *w, int *n, int *k, int *h,
                                          int *wd) {
    int s = check_geometry(x, w, c, NULL);
    if (s != OK) return s;
    *n = x->d[0]; *k = w->d[0];
    *h = out_size(x->d[2], w->d[2], c->d[0], c->d[2], c->d[4]);
    *wd = out_size(x->d[3], w->d[3], c->d[1], c->d[3], c->d[5]);
    return OK;
}

/* What each query offers, best first: entries a correct caller must skip (FFT and
 * Winograd, tensor-op math, failed status, a huge workspace) come before usable ones. */
static const Perf offered[2][3][4] = {
    {   /* heuristic (_v7) */
        {{6, OK, 0, 64, 1, 3}, {1, OK, 0, 0, 1, 1}, {1, OK, 0, 0, 1, 3}, {0, OK, 0, 0, 1, 3}},
        {{0, OK, 0, 0, 0, 3}, {5, OK, 0, 0, 1, 3}, {1, OK, 0, 0, 1, 3}, {0, OK, 0, 0, 0, 3}},
        {{3, OK, 0, 0, 0, 3}, {2, OK, 0, 0, 1, 3}, {1, OK, 0, 0, 1, 3}, {0, OK, 0, 0, 0, 3}},
    },
    {   /* timed (Find) */
        {{7, OK, 0, 0, 1, 3}, {2, OK, 0, 0, 1, 3}, {0, NOT_SUPPORTED, 0, 0, 1, 3}, {3, OK, 0, 0, 1, 3}},
        {{4, OK, 0, 0, 1, 3}, {0, OK, 0, 0, 0, 3}, {1, OK, 0, 0, 1, 3}, {1, OK, 0, 0, 1, 1}},
        {{6, OK, 0, 0, 1, 3}, {3, OK, 0, 0, 0, 3}, {1, OK, 0, 0, 1, 3}, {0, OK, 0, 0, 0, 3}},
    },
};

static size_t workspace_bytes(int direction, int algo) {
    /* GEMM-style forward algorithm 2 asks for more than the default 1 GiB cap. */
    if (direction == FWD && algo == 2) return (size_t)3 << 30;
    return (size_t)(algo + 1) * 4096 + (size_t)direction * 512;
}

static int query(int timed, int direction, int requested, int *returned, Perf *perf) {
    if (getenv("STANDIN_FIND_FAILS") && timed) return NOT_SUPPORTED;
    int n = requested < 4 ? requested : 4;
    for (int i = 0; i < n; i++) {
        perf[i] = offered[timed][direction][i];
        perf[i].memory = workspace_bytes(direction, perf[i].algo);
    }
    *returned = n;
    return OK;
}

#define QUERY(name, timed, dir, A, B, C, D) \
    int name(void *h, Desc *a, Desc *b, Desc *c, Desc *d, int req, int *ret, Perf *perf) { \
        (void)h; int s = check_geometry(A, B, C, D); \
        return s != OK ? s : query(timed, dir, req, ret, perf); }
QUERY(cudnnGetConvolutionForwardAlgorithm_v7, 0, FWD, a, b, c, d)
QUERY(cudnnFindConvolutionForwardAlgorithm, 1, FWD, a, b, c, d)
QUERY(cudnnGetConvolutionBackwardDataAlgorithm_v7, 0, BWD_DATA, d, a, c, b)
QUERY(cudnnFindConvolutionBackwardDataAlgorithm, 1, BWD_DATA, d, a, c, b)
QUERY(cudnnGetConvolutionBackwardFilterAlgorithm_v7, 0, BWD_FILTER, a, d, c, b)
QUERY(cudnnFindConvolutionBackwardFilterAlgorithm, 1, BWD_FILTER, a, d, c, b)

static int offered_anywhere(int direction, int algo) {
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 4; i++)
            if (offered[t][direction][i].algo == algo) return 1;
    return 0;
}

#define WSIZE(name, dir, A, B, C, D) \
    int name(void *h, Desc *a, Desc *b, Desc *c, Desc *d, int algo, size_t *bytes) { \
        (void)h; int s = check_geometry(A, B, C, D); \
        if (s != OK) return s; \
        if (!offered_anywhere(dir, algo)) return NOT_SUPPORTED; \
        *bytes = workspace_bytes(dir, algo); return OK; }
WSIZE(cudnnGetConvolutionForwardWorkspaceSize, FWD, a, b, c, d)
WSIZE(cudnnGetConvolutionBackwardDataWorkspaceSize, BWD_DATA, d, a, c, b)
WSIZE(cudnnGetConvolutionBackwardFilterWorkspaceSize, BWD_FILTER, a, d, c, b)

static double load(const void *p, int type, size_t i) {
    return type ? ((const double *)p)[i] : ((const float *)p)[i];
}
static void store(void *p, int type, size_t i, double v) {
    if (type) ((double *)p)[i] = v; else ((float *)p)[i] = (float)v;
}
static double scalar(const void *p, int type) { return type ? *(const double *)p : *(const float *)p; }

/* One pass over every (image, output channel, output position, input channel, tap)
 * with the input position it reads; the three directions differ only in what they
 * accumulate into acc (sized as the output of that direction). */
static void sweep(int direction, Desc *x, Desc *w, Desc *c, const void *xp, const void *wp,
                  const void *yp, double *acc) {
    int N = x->d[0], C = x->d[1], H = x->d[2], W = x->d[3];
    int K = w->d[0], Cg = w->d[1], KH = w->d[2], KW = w->d[3];
    int G = c->d[6], Kg = K / G;
    int OH = out_size(H, KH, c->d[0], c->d[2], c->d[4]);
    int OW = out_size(W, KW, c->d[1], c->d[3], c->d[5]);
    int t = x->type;
    for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++)
    for (int oh = 0; oh < OH; oh++)
    for (int ow = 0; ow < OW; ow++) {
        size_t yi = (((size_t)n * K + k) * OH + oh) * OW + ow;
        for (int ci = 0; ci < Cg; ci++)
        for (int i = 0; i < KH; i++)
        for (int j = 0; j < KW; j++) {
            int h = oh * c->d[2] - c->d[0] + i * c->d[4];
            int v = ow * c->d[3] - c->d[1] + j * c->d[5];
            if (h < 0 || h >= H || v < 0 || v >= W) continue;
            int ch = (k / Kg) * Cg + ci;
            size_t xi = (((size_t)n * C + ch) * H + h) * W + v;
            size_t wi = (((size_t)k * Cg + ci) * KH + i) * KW + j;
            if (direction == FWD) acc[yi] += load(xp, t, xi) * load(wp, t, wi);
            else if (direction == BWD_DATA) acc[xi] += load(yp, t, yi) * load(wp, t, wi);
            else acc[wi] += load(yp, t, yi) * load(xp, t, xi);
        }
    }
}

static int run(int direction, Desc *x, Desc *w, Desc *c, Desc *y, const void *alpha,
               const void *xp, const void *wp, const void *yp, void *out, Desc *out_desc,
               int algo, void *ws, size_t ws_size, const void *beta) {
    int s = check_geometry(x, w, c, y);
    if (s != OK) return s;
    if (c->d[7] != 3 || !offered_anywhere(direction, algo)) return NOT_SUPPORTED;
    size_t need = workspace_bytes(direction, algo);
    if (ws_size < need || (need && !ws)) return BAD_PARAM;
    memset(ws, 0xA5, need);  /* a short allocation would be overrun here */
    size_t count = (size_t)out_desc->d[0] * out_desc->d[1] * out_desc->d[2] * out_desc->d[3];
    double *acc = calloc(count, sizeof(double));
    sweep(direction, x, w, c, xp, wp, yp, acc);
    double a = scalar(alpha, x->type), b = scalar(beta, x->type);
    for (size_t i = 0; i < count; i++)
        store(out, x->type, i, a * acc[i] + (b != 0 ? b * load(out, x->type, i) : 0));
    free(acc);
    last_algo[direction] = algo;
    runs[direction]++;
    return OK;
}

int cudnnConvolutionForward(void *h, const void *alpha, Desc *xd, const void *x, Desc *wd,
                            const void *w, Desc *cd, int algo, void *ws, size_t wss,
                            const void *beta, Desc *yd, void *y) {
    (void)h;
    return run(FWD, xd, wd, cd, yd, alpha, x, w, NULL, y, yd, algo, ws, wss, beta);
}

int cudnnConvolutionBackwardData(void *h, const void *alpha, Desc *wd, const void *w,
                                 Desc *dyd, const void *dy, Desc *cd, int algo, void *ws,
                                 size_t wss, const void *beta, Desc *dxd, void *dx) {
    (void)h;
    return run(BWD_DATA, dxd, wd, cd, dyd, alpha, NULL, w, dy, dx, dxd, algo, ws, wss, beta);
}

int cudnnConvolutionBackwardFilter(void *h, const void *alpha, Desc *xd, const void *x,
                                   Desc *dyd, const void *dy, Desc *cd, int algo, void *ws,
                                   size_t wss, const void *beta, Desc *dwd, void *dw) {
    (void)h;
    return run(BWD_FILTER, xd, dwd, cd, dyd, alpha, x, NULL, dy, dw, dwd, algo, ws, wss, beta);
}

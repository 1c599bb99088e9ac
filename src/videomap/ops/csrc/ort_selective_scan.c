/*
 * The selective scan as an onnxruntime custom operator: videomap::SelectiveScan (domain
 * "videomap", version 1), computed by the same C kernel as eager PyTorch (selective_scan.c,
 * compiled into this library as one translation unit).
 *
 * Load it with SessionOptions.register_custom_ops_library(path) (Python), or
 * RegisterCustomOpsLibrary / the C++ and C# equivalents: onnxruntime then calls
 * RegisterCustomOps below with its API table.  This file needs no onnxruntime headers: it
 * declares the few API entries it calls by their position in onnxruntime's C API table
 * (OrtApi), which onnxruntime only ever appends to, and requests API version 17 (1.17+).
 * The scan runs on onnxruntime's own intra-op threads (KernelContext_ParallelFor, split by
 * channels): OpenMP threads of its own would compete with onnxruntime's spinning workers.
 *
 * Node: inputs u, delta (B, E, L); A (E, N); B, C (B, N, L); optional D (E), z (B, E, L),
 * delta_bias (E); attribute softplus (int, default 0).  Outputs y (B, E, L) and the last
 * state (B, E, N).  All fp32; y = scan(...) + D*u, times silu(z) when z is given.
 */
#include "selective_scan.c"

#include <stdio.h>

/* ---- the onnxruntime C API, as far as this library uses it ---------------------------- */
typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtShapeInfo OrtShapeInfo; /* OrtTensorTypeAndShapeInfo */
typedef void OrtApi;                      /* a table of function pointers, indexed below */

typedef struct {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

#define API_VERSION 17
#define TYPE_FLOAT 1           /* ONNXTensorElementDataType */
#define ERR_INVALID_ARGUMENT 2 /* OrtErrorCode */
#define ERR_FAIL 1
#define IO_REQUIRED 0 /* OrtCustomOpInputOutputCharacteristic */
#define IO_OPTIONAL 1

/* positions in OrtApi (0-based) */
enum {
    I_CreateStatus = 0,
    I_CreateCustomOpDomain = 26,
    I_CustomOpDomain_Add = 27,
    I_AddCustomOpDomain = 28,
    I_GetTensorMutableData = 51,
    I_GetDimensionsCount = 61,
    I_GetDimensions = 62,
    I_GetTensorTypeAndShape = 65,
    I_KernelInfoGetAttribute_int64 = 86,
    I_KernelContext_GetInputCount = 88,
    I_KernelContext_GetInput = 90,
    I_KernelContext_GetOutput = 91,
    I_ReleaseStatus = 93,
    I_ReleaseTensorTypeAndShapeInfo = 99,
    I_KernelContext_ParallelFor = 274,
};
#define API_FN(api, idx) (((void *const *)(api))[idx])

typedef OrtStatus *(*CreateStatusFn)(int code, const char *msg);
typedef OrtStatus *(*CreateDomainFn)(const char *domain, OrtCustomOpDomain **out);
typedef OrtStatus *(*DomainAddFn)(OrtCustomOpDomain *domain, const void *op);
typedef OrtStatus *(*AddDomainFn)(OrtSessionOptions *options, OrtCustomOpDomain *domain);
typedef OrtStatus *(*MutableDataFn)(OrtValue *value, void **out);
typedef OrtStatus *(*DimsCountFn)(const OrtShapeInfo *info, size_t *out);
typedef OrtStatus *(*DimsFn)(const OrtShapeInfo *info, int64_t *dims, size_t n);
typedef OrtStatus *(*TypeAndShapeFn)(const OrtValue *value, OrtShapeInfo **out);
typedef OrtStatus *(*AttrIntFn)(const OrtKernelInfo *info, const char *name, int64_t *out);
typedef OrtStatus *(*InputCountFn)(const OrtKernelContext *ctx, size_t *out);
typedef OrtStatus *(*GetInputFn)(const OrtKernelContext *ctx, size_t index, const OrtValue **out);
typedef OrtStatus *(*GetOutputFn)(OrtKernelContext *ctx, size_t index, const int64_t *dims, size_t n, OrtValue **out);
typedef void (*ReleaseStatusFn)(OrtStatus *status);
typedef void (*ReleaseShapeFn)(OrtShapeInfo *info);
typedef OrtStatus *(*ParallelForFn)(const OrtKernelContext *ctx, void (*fn)(void *, size_t), size_t total,
                                    size_t num_batch, void *data);

/* OrtCustomOp, fields in onnxruntime's order; versions 16-17 read those up to KernelComputeV2 */
typedef struct CustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct CustomOp *op, const OrtApi *api, const OrtKernelInfo *info);
    const char *(*GetName)(const struct CustomOp *op);
    const char *(*GetExecutionProviderType)(const struct CustomOp *op);
    int (*GetInputType)(const struct CustomOp *op, size_t index);
    size_t (*GetInputTypeCount)(const struct CustomOp *op);
    int (*GetOutputType)(const struct CustomOp *op, size_t index);
    size_t (*GetOutputTypeCount)(const struct CustomOp *op);
    void (*KernelCompute)(void *kernel, OrtKernelContext *ctx);
    void (*KernelDestroy)(void *kernel);
    int (*GetInputCharacteristic)(const struct CustomOp *op, size_t index);
    int (*GetOutputCharacteristic)(const struct CustomOp *op, size_t index);
    int (*GetInputMemoryType)(const struct CustomOp *op, size_t index);
    int (*GetVariadicInputMinArity)(const struct CustomOp *op);
    int (*GetVariadicInputHomogeneity)(const struct CustomOp *op);
    int (*GetVariadicOutputMinArity)(const struct CustomOp *op);
    int (*GetVariadicOutputHomogeneity)(const struct CustomOp *op);
    OrtStatus *(*CreateKernelV2)(const struct CustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                 void **kernel);
    OrtStatus *(*KernelComputeV2)(void *kernel, OrtKernelContext *ctx);
    void *unused[8]; /* later fields (shape inference, versions, aliasing): null = not provided */
} CustomOp;

/* ---- the kernel ------------------------------------------------------------------------ */
#define N_INPUTS 8
#define N_OUTPUTS 2

typedef struct {
    const OrtApi *api;
    int softplus;
} Kernel;

static OrtStatus *fail(const OrtApi *api, int code, const char *msg) {
    return ((CreateStatusFn)API_FN(api, I_CreateStatus))(code, msg);
}

/* Shape of one input into dims (at most 4); NULL value = absent optional input (ndim = -1). */
static OrtStatus *input_shape(const OrtApi *api, const OrtValue *value, int64_t *dims, int *ndim) {
    *ndim = -1;
    if (!value) return NULL;
    OrtShapeInfo *info = NULL;
    OrtStatus *st = ((TypeAndShapeFn)API_FN(api, I_GetTensorTypeAndShape))(value, &info);
    if (st) return st;
    size_t n = 0;
    st = ((DimsCountFn)API_FN(api, I_GetDimensionsCount))(info, &n);
    if (!st && n > 4) st = fail(api, ERR_INVALID_ARGUMENT, "videomap::SelectiveScan: an input has more than 4 dimensions");
    if (!st) st = ((DimsFn)API_FN(api, I_GetDimensions))(info, dims, n);
    ((ReleaseShapeFn)API_FN(api, I_ReleaseTensorTypeAndShapeInfo))(info);
    *ndim = (int)n;
    return st;
}

static int same(const int64_t *a, int na, const int64_t *b, int nb) {
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* One call of the scan over a block of channels, for onnxruntime's ParallelFor. */
#define PARTS 64
typedef struct {
    const float *u, *delta, *A, *Bt, *Ct, *D, *z, *bias;
    int softplus;
    int64_t nbatch, E, L, NP;
    float *out, *last, *state;
    int64_t parts;
} Job;

static void run_part(void *data, size_t i) {
    const Job *j = (const Job *)data;
    const int64_t e0 = j->E * (int64_t)i / j->parts, e1 = j->E * ((int64_t)i + 1) / j->parts;
    scan_fwd_rows(j->u, j->delta, j->A, j->Bt, j->Ct, j->D, j->z, j->bias, j->softplus, j->nbatch, j->E, j->L,
                  j->NP, j->out, j->last, NULL, 0, e0, e1, j->state);
}

static OrtStatus *compute(void *kernel_ptr, OrtKernelContext *ctx) {
    const Kernel *k = (const Kernel *)kernel_ptr;
    const OrtApi *api = k->api;
    const OrtValue *in[N_INPUTS] = {0};
    size_t count = 0;
    OrtStatus *st = ((InputCountFn)API_FN(api, I_KernelContext_GetInputCount))(ctx, &count);
    for (size_t i = 0; !st && i < N_INPUTS && i < count; i++)
        st = ((GetInputFn)API_FN(api, I_KernelContext_GetInput))(ctx, i, &in[i]);
    if (st) return st;
    int64_t dims[N_INPUTS][4];
    int nd[N_INPUTS];
    for (int i = 0; i < N_INPUTS; i++)
        if ((st = input_shape(api, in[i], dims[i], &nd[i]))) return st;
    char msg[256];
    if (nd[0] != 3 || nd[2] != 2 || nd[3] != 3) {
        snprintf(msg, sizeof msg, "videomap::SelectiveScan: expected u (B, E, L), A (E, N), B (B, N, L); "
                 "got %d, %d and %d dimensions", nd[0], nd[2], nd[3]);
        return fail(api, ERR_INVALID_ARGUMENT, msg);
    }
    const int64_t nbatch = dims[0][0], E = dims[0][1], L = dims[0][2], N = dims[2][1];
    const int64_t bcl[3] = {nbatch, N, L}, el[1] = {E};
    if (!same(dims[1], nd[1], dims[0], 3) || dims[2][0] != E || !same(dims[3], nd[3], bcl, 3) ||
        !same(dims[4], nd[4], bcl, 3) || (nd[5] >= 0 && !same(dims[5], nd[5], el, 1)) ||
        (nd[6] >= 0 && !same(dims[6], nd[6], dims[0], 3)) || (nd[7] >= 0 && !same(dims[7], nd[7], el, 1))) {
        snprintf(msg, sizeof msg, "videomap::SelectiveScan: inconsistent shapes for u (%lld, %lld, %lld) "
                 "and N = %lld (delta and z as u, A (E, N), B and C (B, N, L), D and delta_bias (E))",
                 (long long)nbatch, (long long)E, (long long)L, (long long)N);
        return fail(api, ERR_INVALID_ARGUMENT, msg);
    }
    const int64_t NP = (N + VW - 1) / VW * VW;
    if (N < 1 || NP > NBMAX * VW) {
        snprintf(msg, sizeof msg, "videomap::SelectiveScan: state size N = %lld outside 1..%d", (long long)N, NBMAX * VW);
        return fail(api, ERR_INVALID_ARGUMENT, msg);
    }
    const float *data[N_INPUTS] = {0};
    for (int i = 0; i < N_INPUTS; i++)
        if (in[i] && (st = ((MutableDataFn)API_FN(api, I_GetTensorMutableData))((OrtValue *)in[i], (void **)&data[i])))
            return st;
    OrtValue *out_y = NULL, *out_last = NULL;
    const int64_t last_dims[3] = {nbatch, E, N};
    if ((st = ((GetOutputFn)API_FN(api, I_KernelContext_GetOutput))(ctx, 0, dims[0], 3, &out_y))) return st;
    if ((st = ((GetOutputFn)API_FN(api, I_KernelContext_GetOutput))(ctx, 1, last_dims, 3, &out_last))) return st;
    float *y = NULL, *last = NULL;
    if ((st = ((MutableDataFn)API_FN(api, I_GetTensorMutableData))(out_y, (void **)&y))) return st;
    if ((st = ((MutableDataFn)API_FN(api, I_GetTensorMutableData))(out_last, (void **)&last))) return st;
    if (nbatch == 0 || E == 0 || L == 0) {
        memset(last, 0, (size_t)(nbatch * E * N) * sizeof(float));
        return NULL;
    }
    /* the kernel's layouts: A (E, NP), B and C time-major (B, L, NP), zero-padded in the state */
    float *Ap = xalloc((size_t)(E * NP) * sizeof(float));
    float *Bt = xalloc((size_t)(nbatch * L * NP) * sizeof(float));
    float *Ct = xalloc((size_t)(nbatch * L * NP) * sizeof(float));
    float *lastp = xalloc((size_t)(nbatch * E * NP) * sizeof(float));
    int rc = -1;
    if (Ap && Bt && Ct && lastp) {
        memset(Ap, 0, (size_t)(E * NP) * sizeof(float));
        for (int64_t e = 0; e < E; e++) memcpy(Ap + e * NP, data[2] + e * N, (size_t)N * sizeof(float));
        memset(Bt, 0, (size_t)(nbatch * L * NP) * sizeof(float));
        memset(Ct, 0, (size_t)(nbatch * L * NP) * sizeof(float));
        for (int64_t b = 0; b < nbatch; b++)
            for (int64_t n = 0; n < N; n++) {
                const float *bs = data[3] + (b * N + n) * L, *cs = data[4] + (b * N + n) * L;
                float *bd = Bt + b * L * NP + n, *cd = Ct + b * L * NP + n;
                for (int64_t l = 0; l < L; l++) bd[l * NP] = bs[l], cd[l * NP] = cs[l];
            }
        float *state = xalloc((size_t)(E * NP) * sizeof(float));
        if (state) {
            Job job = {data[0], data[1], Ap, Bt, Ct, data[5], data[6], data[7], k->softplus, nbatch, E, L, NP,
                       y, lastp, state, E < PARTS ? E : PARTS};
            st = ((ParallelForFn)API_FN(api, I_KernelContext_ParallelFor))(ctx, run_part, (size_t)job.parts, 0, &job);
            rc = 0;
            free(state);
        }
        if (rc == 0 && !st)
            for (int64_t r = 0; r < nbatch * E; r++) memcpy(last + r * N, lastp + r * NP, (size_t)N * sizeof(float));
    }
    free(Ap), free(Bt), free(Ct), free(lastp);
    if (st) return st;
    if (rc != 0) return fail(api, ERR_FAIL, "videomap::SelectiveScan: out of memory");
    return NULL;
}

static OrtStatus *create_kernel(const CustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    (void)op;
    int64_t softplus = 0;
    OrtStatus *st = ((AttrIntFn)API_FN(api, I_KernelInfoGetAttribute_int64))(info, "softplus", &softplus);
    if (st) { /* absent attribute: default 0 */
        ((ReleaseStatusFn)API_FN(api, I_ReleaseStatus))(st);
        softplus = 0;
    }
    Kernel *k = malloc(sizeof *k);
    if (!k) return fail(api, ERR_FAIL, "videomap::SelectiveScan: out of memory");
    k->api = api;
    k->softplus = softplus != 0;
    *out = k;
    return NULL;
}

static void destroy_kernel(void *kernel) { free(kernel); }
static const char *op_name(const CustomOp *op) { (void)op; return "SelectiveScan"; }
static const char *op_provider(const CustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int io_type(const CustomOp *op, size_t i) { (void)op, (void)i; return TYPE_FLOAT; }
static size_t n_inputs(const CustomOp *op) { (void)op; return N_INPUTS; }
static size_t n_outputs(const CustomOp *op) { (void)op; return N_OUTPUTS; }
static int input_kind(const CustomOp *op, size_t i) { (void)op; return i >= 5 ? IO_OPTIONAL : IO_REQUIRED; }
static int output_kind(const CustomOp *op, size_t i) { (void)op, (void)i; return IO_REQUIRED; }
static int mem_default(const CustomOp *op, size_t i) { (void)op, (void)i; return 0; }
static int variadic_one(const CustomOp *op) { (void)op; return 1; }

static const CustomOp SCAN_OP = {
    .version = API_VERSION,
    .GetName = op_name,
    .GetExecutionProviderType = op_provider,
    .GetInputType = io_type,
    .GetInputTypeCount = n_inputs,
    .GetOutputType = io_type,
    .GetOutputTypeCount = n_outputs,
    .KernelDestroy = destroy_kernel,
    .GetInputCharacteristic = input_kind,
    .GetOutputCharacteristic = output_kind,
    .GetInputMemoryType = mem_default,
    .GetVariadicInputMinArity = variadic_one,
    .GetVariadicInputHomogeneity = variadic_one,
    .GetVariadicOutputMinArity = variadic_one,
    .GetVariadicOutputHomogeneity = variadic_one,
    .CreateKernelV2 = create_kernel,
    .KernelComputeV2 = compute,
};

/* Entry point onnxruntime looks up when the library is registered. */
__attribute__((visibility("default"))) OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    const OrtApi *api = base->GetApi(API_VERSION);
    if (!api) return NULL; /* onnxruntime older than 1.17: it cannot report an error through an API it lacks */
    OrtCustomOpDomain *domain = NULL;
    OrtStatus *st = ((CreateDomainFn)API_FN(api, I_CreateCustomOpDomain))("videomap", &domain);
    if (!st) st = ((DomainAddFn)API_FN(api, I_CustomOpDomain_Add))(domain, &SCAN_OP);
    if (!st) st = ((AddDomainFn)API_FN(api, I_AddCustomOpDomain))(options, domain);
    return st; /* the domain lives as long as the process: sessions may outlive these options */
}

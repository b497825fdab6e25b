/* The thin launch path (aiter_ext/core/thin.py): load a compiled kernel (a cubin on CUDA, an hsaco on ROCm) and launch it with
 * one C call from Python, instead of Triton's per-call argument binding and specialisation in Python.
 *
 * A CPython extension with no CUDA, HIP or torch headers: the driver is opened with dlopen at init(), and
 * the few entry points used are declared here by their documented C signatures (the CUDA driver API and
 * HIP's module API take the same arguments for these calls). So one file builds anywhere a C compiler and
 * Python's headers are (Triton needs both to build its own launchers), and the same build runs on either
 * platform.
 *
 *   init(platform)                        "cuda" or "hip": open the driver (once per process): the one already
 *                                         in the process where there is one (torch's HIP runtime), else by name.
 *   loaded_library(prefix)                the path of a library already in the process (tests).
 *   load(image, name, shared, device)     load a code object into the current context of `device` and
 *                                         return the kernel's handle (an int).
 *   signature(*args)                      the launch signature of the arguments (bytes): per argument what
 *                                         Triton specialises a compiled kernel on (see thin.py).
 *   launch(fn, gx, gy, gz, threads, shared, stream, fmt, *args)
 *                                         launch on `stream`; fmt has one letter per argument:
 *                                         'p' a pointer (an int, None for NULL, or an object with
 *                                         data_ptr(), such as a tensor), 'i' int32, 'l' int64, 'f' fp32.
 *   use_types(tensor_types, stream_getter)
 *                                         the exact types call_key() takes as tensors (torch.Tensor,
 *                                         nn.Parameter), and torch's current-stream function (device ->
 *                                         raw stream), for run_plan().
 *   call_key(*args)                       a call plan's key (core/plans.py): bytes describing every argument
 *                                         completely for the launches an op makes from it, or None where a
 *                                         plan cannot serve the call (a CPU tensor, an argument of another
 *                                         type, a tensor subclass such as torch.compile's fake tensors).
 *   run_plan(plan, *slots)                replay a call plan: its launches, with pointers taken from `slots`.
 *   explain_plan(plan, *slots)            what run_plan would launch, as a list (tests; needs no driver).
 * Errors raise RuntimeError with the driver's message; nothing is launched then.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dl_iterate_phdr */
#endif
#include <Python.h>
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <string.h>

#define MAX_ARGS 96

typedef int (*module_load_data_fn)(void **module, const void *image);
typedef int (*module_get_function_fn)(void **function, void *module, const char *name);
typedef int (*launch_kernel_fn)(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                unsigned bz, unsigned shared, void *stream, void **params, void **extra);
typedef int (*ctx_get_current_fn)(void **ctx);
typedef int (*device_primary_ctx_retain_fn)(void **ctx, int device);
typedef int (*ctx_set_current_fn)(void *ctx);
typedef int (*func_set_attribute_fn)(void *function, int attribute, int value);
typedef int (*func_get_attribute_fn)(int *value, int attribute, void *function);
typedef int (*cu_get_error_string_fn)(int error, const char **text);
typedef const char *(*hip_get_error_string_fn)(int error);
/* cuMemsetD32Async and hipMemsetD32Async: (device pointer, 32-bit value, count of words, stream). */
typedef int (*memset_d32_async_fn)(uint64_t dst, unsigned value, size_t words, void *stream);

/* Attribute and method names, interned once (PyInit): a lookup by a C string builds a str object per call. */
static PyObject *name_dtype, *name_data_ptr, *name_get_device, *name_shape, *name_stride, *name_itemsize;

static struct {
  int ready, is_hip;
  module_load_data_fn module_load_data;
  module_get_function_fn module_get_function;
  launch_kernel_fn launch_kernel;
  memset_d32_async_fn memset_d32_async;
  ctx_get_current_fn ctx_get_current;
  device_primary_ctx_retain_fn device_primary_ctx_retain;
  ctx_set_current_fn ctx_set_current;
  func_set_attribute_fn func_set_attribute;
  func_get_attribute_fn func_get_attribute;
  cu_get_error_string_fn cu_get_error_string;
  hip_get_error_string_fn hip_get_error_string;
} drv;

/* CUDA driver API constants (cuda.h): CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, ..._MAX_DYNAMIC_SHARED_SIZE_BYTES. */
#define CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES 1
#define CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES 8
/* Above this much dynamic shared memory a CUDA kernel must opt in (the default per-block limit). */
#define CUDA_DEFAULT_SHARED_LIMIT 49152

static PyObject *driver_error(const char *what, int code) {
  const char *text = NULL;
  if (drv.is_hip && drv.hip_get_error_string) text = drv.hip_get_error_string(code);
  if (!drv.is_hip && drv.cu_get_error_string) drv.cu_get_error_string(code, &text);
  PyErr_Format(PyExc_RuntimeError, "%s failed: error %d (%s)", what, code, text ? text : "no description");
  return NULL;
}

static void *symbol(void *lib, const char *name) {
  void *sym = dlsym(lib, name);
  if (!sym) PyErr_Format(PyExc_RuntimeError, "the GPU driver has no %s", name);
  return sym;
}

/* The path of a library already mapped into this process whose file name starts with `prefix`, or "". */
struct loaded_search {
  const char *prefix;
  char path[4096];
};

static int match_loaded(struct dl_phdr_info *info, size_t size, void *data) {
  struct loaded_search *search = (struct loaded_search *)data;
  const char *name = info->dlpi_name ? info->dlpi_name : "";
  const char *base = strrchr(name, '/');
  base = base ? base + 1 : name;
  if (strncmp(base, search->prefix, strlen(search->prefix)) != 0) return 0;
  snprintf(search->path, sizeof search->path, "%s", name);
  return 1;
}

static PyObject *loaded_library(PyObject *self, PyObject *args) {
  struct loaded_search search = {NULL, ""};
  if (!PyArg_ParseTuple(args, "s", &search.prefix)) return NULL;
  dl_iterate_phdr(match_loaded, &search);
  return PyUnicode_DecodeFSDefault(search.path);
}

static PyObject *init(PyObject *self, PyObject *args) {
  const char *platform;
  if (!PyArg_ParseTuple(args, "s", &platform)) return NULL;
  if (drv.ready) Py_RETURN_NONE;
  int hip = strcmp(platform, "hip") == 0;
  if (!hip && strcmp(platform, "cuda") != 0)
    return PyErr_Format(PyExc_ValueError, "platform must be 'cuda' or 'hip', got '%s'", platform);
  /* ROCm builds of torch carry their own HIP runtime (torch/lib/libamdhip64.so*). Opening one by name could map a
   * second runtime (the system's), whose modules and streams are not torch's: take the one already in the process
   * first, by its path, and open one by name only where none is. (The CUDA driver is the system's, one per host.) */
  struct loaded_search search = {hip ? "libamdhip64.so" : "libcuda.so", ""};
  dl_iterate_phdr(match_loaded, &search);
  const char *names[] = {search.path, hip ? "libamdhip64.so" : "libcuda.so.1",
                         hip ? "libamdhip64.so.7" : "libcuda.so", hip ? "libamdhip64.so.6" : ""};
  void *lib = NULL;
  for (int i = 0; i < 4 && !lib; i++)
    if (names[i][0]) lib = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) return PyErr_Format(PyExc_RuntimeError, "cannot open the %s driver: %s", platform, dlerror());
  if (hip) {
    if (!(drv.module_load_data = (module_load_data_fn)symbol(lib, "hipModuleLoadData")) ||
        !(drv.module_get_function = (module_get_function_fn)symbol(lib, "hipModuleGetFunction")) ||
        !(drv.launch_kernel = (launch_kernel_fn)symbol(lib, "hipModuleLaunchKernel")) ||
        !(drv.memset_d32_async = (memset_d32_async_fn)symbol(lib, "hipMemsetD32Async")) ||
        !(drv.hip_get_error_string = (hip_get_error_string_fn)symbol(lib, "hipGetErrorString")))
      return NULL;
  } else {
    if (!(drv.module_load_data = (module_load_data_fn)symbol(lib, "cuModuleLoadData")) ||
        !(drv.module_get_function = (module_get_function_fn)symbol(lib, "cuModuleGetFunction")) ||
        !(drv.launch_kernel = (launch_kernel_fn)symbol(lib, "cuLaunchKernel")) ||
        !(drv.memset_d32_async = (memset_d32_async_fn)symbol(lib, "cuMemsetD32Async")) ||
        !(drv.ctx_get_current = (ctx_get_current_fn)symbol(lib, "cuCtxGetCurrent")) ||
        !(drv.device_primary_ctx_retain = (device_primary_ctx_retain_fn)symbol(lib, "cuDevicePrimaryCtxRetain")) ||
        !(drv.ctx_set_current = (ctx_set_current_fn)symbol(lib, "cuCtxSetCurrent")) ||
        !(drv.func_set_attribute = (func_set_attribute_fn)symbol(lib, "cuFuncSetAttribute")) ||
        !(drv.func_get_attribute = (func_get_attribute_fn)symbol(lib, "cuFuncGetAttribute")) ||
        !(drv.cu_get_error_string = (cu_get_error_string_fn)symbol(lib, "cuGetErrorString")))
      return NULL;
  }
  drv.is_hip = hip;
  drv.ready = 1;
  Py_RETURN_NONE;
}

static PyObject *load(PyObject *self, PyObject *args) {
  Py_buffer image;
  const char *name;
  int shared, device, err;
  if (!PyArg_ParseTuple(args, "y*sii", &image, &name, &shared, &device)) return NULL;
  if (!drv.ready) {
    PyBuffer_Release(&image);
    return PyErr_Format(PyExc_RuntimeError, "init() first");
  }
  void *module = NULL, *function = NULL;
  if (!drv.is_hip) {  /* a module belongs to a context: use the device's primary one (torch's) if none is current */
    void *ctx = NULL;
    if ((err = drv.ctx_get_current(&ctx))) goto fail_ctx;
    if (!ctx) {
      if ((err = drv.device_primary_ctx_retain(&ctx, device)) || (err = drv.ctx_set_current(ctx))) goto fail_ctx;
    }
  }
  err = drv.module_load_data(&module, image.buf);
  PyBuffer_Release(&image);
  if (err) return driver_error("loading the code object", err);
  if ((err = drv.module_get_function(&function, module, name))) return driver_error("finding the kernel", err);
  if (!drv.is_hip && shared > CUDA_DEFAULT_SHARED_LIMIT) {  /* opt in to the shared memory the kernel needs */
    int static_bytes = 0;
    if ((err = drv.func_get_attribute(&static_bytes, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function)) ||
        (err = drv.func_set_attribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                      shared - static_bytes)))
      return driver_error("raising the kernel's shared memory limit", err);
  }
  return PyLong_FromVoidPtr(function);
fail_ctx:
  PyBuffer_Release(&image);
  return driver_error("making the device's context current", err);
}

/* A pointer argument: an int, None (NULL), or an object with data_ptr() (a tensor). */
static int as_pointer(PyObject *obj, uint64_t *out) {
  if (obj == Py_None) { *out = 0; return 0; }
  if (PyLong_Check(obj)) { *out = PyLong_AsUnsignedLongLongMask(obj); return PyErr_Occurred() ? -1 : 0; }
  PyObject *ptr = PyObject_CallMethodNoArgs(obj, name_data_ptr);
  if (!ptr) return -1;
  *out = PyLong_AsUnsignedLongLongMask(ptr);
  Py_DECREF(ptr);
  return PyErr_Occurred() ? -1 : 0;
}

/* signature(*args) -> bytes. Per argument, one class byte and, for a tensor, its dtype object's address
 * (torch's dtypes are singletons) and its device (a kernel's handle belongs to one device's context):
 *   a tensor (anything with data_ptr and dtype): 'T' | 16-byte aligned, the dtype's 8 bytes, the device's 2;
 *   an int: 'I', then one byte: bit 0 fits int32, bit 1 divisible by 16, bit 2 equals 1;
 *   bool 'B' | value, float 'F', None 'N'; anything else 'O' (thin.py then leaves the call to Triton). */
static PyObject *signature(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  (void)self;
  if (nargs > MAX_ARGS) return PyErr_Format(PyExc_ValueError, "signature(): at most %d arguments", MAX_ARGS);
  char buf[MAX_ARGS * 12];
  Py_ssize_t n = 0;
  for (Py_ssize_t i = 0; i < nargs; i++) {
    PyObject *a = args[i];
    if (a == Py_None) { buf[n++] = 'N'; continue; }
    if (PyBool_Check(a)) { buf[n++] = 'B'; buf[n++] = (char)(a == Py_True); continue; }
    if (PyLong_CheckExact(a)) {
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(a, &overflow);
      if (v == -1 && PyErr_Occurred()) return NULL;
      buf[n++] = 'I';
      buf[n++] = overflow ? 8 : (char)((v >= INT32_MIN && v <= INT32_MAX) | ((v % 16 == 0) << 1) | ((v == 1) << 2));
      continue;
    }
    if (PyFloat_CheckExact(a)) { buf[n++] = 'F'; continue; }
    PyObject *dtype = PyObject_GetAttr(a, name_dtype);
    PyObject *ptr = dtype ? PyObject_CallMethodNoArgs(a, name_data_ptr) : NULL;
    PyObject *device = ptr ? PyObject_CallMethodNoArgs(a, name_get_device) : NULL;
    if (!device) {
      Py_XDECREF(dtype);
      Py_XDECREF(ptr);
      PyErr_Clear();
      buf[n++] = 'O';
      continue;
    }
    uint64_t address = PyLong_AsUnsignedLongLongMask(ptr);
    int16_t device_index = (int16_t)PyLong_AsLong(device);
    Py_DECREF(ptr);
    Py_DECREF(device);
    if (PyErr_Occurred()) { Py_DECREF(dtype); return NULL; }
    uintptr_t dtype_id = (uintptr_t)dtype;
    Py_DECREF(dtype);  /* the dtype singleton outlives the call: only its address is kept */
    buf[n++] = 'T';
    buf[n++] = (char)((address & 15) == 0);
    memcpy(buf + n, &dtype_id, sizeof dtype_id);
    n += sizeof dtype_id;
    memcpy(buf + n, &device_index, sizeof device_index);
    n += sizeof device_index;
  }
  return PyBytes_FromStringAndSize(buf, n);
}

static PyObject *launch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  /* fn, gx, gy, gz, threads, shared, stream, fmt, *kernel args */
  if (nargs < 8) return PyErr_Format(PyExc_TypeError, "launch() takes at least 8 arguments, got %zd", nargs);
  if (!drv.ready) return PyErr_Format(PyExc_RuntimeError, "init() first");
  void *function = PyLong_AsVoidPtr(args[0]);
  unsigned long long dims[5];
  for (int i = 0; i < 5; i++) dims[i] = PyLong_AsUnsignedLongLong(args[1 + i]);
  void *stream = PyLong_AsVoidPtr(args[6]);
  if (PyErr_Occurred()) return NULL;
  const char *fmt = PyBytes_AsString(args[7]);
  if (!fmt) return NULL;
  Py_ssize_t count = nargs - 8;
  if ((Py_ssize_t)strlen(fmt) != count || count > MAX_ARGS)
    return PyErr_Format(PyExc_ValueError, "launch(): format '%s' for %zd arguments (at most %d)", fmt, count,
                        MAX_ARGS);
  union { uint64_t u64; int32_t i32; int64_t i64; float f32; } slots[MAX_ARGS];
  void *params[MAX_ARGS];
  for (Py_ssize_t i = 0; i < count; i++) {
    PyObject *a = args[8 + i];
    switch (fmt[i]) {
      case 'p': if (as_pointer(a, &slots[i].u64)) return NULL; break;
      case 'i': slots[i].i32 = (int32_t)PyLong_AsLong(a); break;
      case 'l': slots[i].i64 = PyLong_AsLongLong(a); break;
      case 'f': slots[i].f32 = (float)PyFloat_AsDouble(a); break;
      default: return PyErr_Format(PyExc_ValueError, "launch(): unknown argument kind '%c'", fmt[i]);
    }
    if (PyErr_Occurred()) return NULL;
    params[i] = &slots[i];
  }
  if (dims[0] * dims[1] * dims[2] == 0) Py_RETURN_NONE;  /* an empty grid launches nothing, as Triton's */
  int err = drv.launch_kernel(function, (unsigned)dims[0], (unsigned)dims[1], (unsigned)dims[2], (unsigned)dims[3], 1, 1,
                              (unsigned)dims[4], stream, params, NULL);
  if (err) return driver_error("launching the kernel", err);
  Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------------
 * Call plans (core/plans.py). */

static PyObject *tensor_types = NULL;  /* a tuple of the exact types taken as tensors */
static PyObject *stream_getter = NULL; /* device index -> torch's current raw stream on it */

static PyObject *use_types(PyObject *self, PyObject *args) {
  PyObject *types, *getter;
  if (!PyArg_ParseTuple(args, "O!O", &PyTuple_Type, &types, &getter)) return NULL;
  Py_XSETREF(tensor_types, Py_NewRef(types));
  Py_XSETREF(stream_getter, Py_NewRef(getter));
  Py_RETURN_NONE;
}

static int is_tensor(PyObject *a) {
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tensor_types); i++)
    if ((PyObject *)Py_TYPE(a) == PyTuple_GET_ITEM(tensor_types, i)) return 1;
  return 0;
}

/* A growable byte buffer for the key. */
typedef struct { char *data; Py_ssize_t size, cap; } keybuf;

static int put(keybuf *b, const void *src, Py_ssize_t n) {
  if (b->size + n > b->cap) {
    Py_ssize_t cap = 2 * (b->size + n);
    char *grown = (char *)PyMem_Realloc(b->data, cap);
    if (!grown) { PyErr_NoMemory(); return -1; }
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->size, src, n);
  b->size += n;
  return 0;
}

static int put_byte(keybuf *b, char c) { return put(b, &c, 1); }
static int put_i64(keybuf *b, int64_t v) { return put(b, &v, 8); }

/* Appends a Python int's value; returns 1 (no key) where it does not fit 64 bits. */
static int put_int(keybuf *b, PyObject *obj) {
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (v == -1 && PyErr_Occurred()) return -1;
  if (overflow) return 1;
  return put_i64(b, v);
}

/* Appends the ints of a tuple (a shape, a stride); returns their product-free span data to the caller. */
static int put_ints(keybuf *b, PyObject *seq, int64_t *values, Py_ssize_t max) {
  if (!seq || !PyTuple_Check(seq) || PyTuple_GET_SIZE(seq) > max) return 1;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
    int overflow = 0;
    values[i] = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(seq, i), &overflow);
    if (values[i] == -1 && PyErr_Occurred()) return -1;
    if (overflow) return 1;
  }
  return put(b, values, 8 * PyTuple_GET_SIZE(seq));
}

#define MAX_DIMS 16
#define MAX_KEY_TENSORS 32

/* A dtype's element size, cached by the dtype's address (torch's dtypes are singletons); 0 with an error set. */
static uint64_t itemsize_of(PyObject *dtype) {
  static struct { PyObject *dtype; uint64_t bytes; } cache[64];
  static int used = 0;
  for (int i = 0; i < used; i++)
    if (cache[i].dtype == dtype) return cache[i].bytes;
  PyObject *size = PyObject_GetAttr(dtype, name_itemsize);
  if (!size) return 0;
  uint64_t bytes = PyLong_AsUnsignedLongLongMask(size);
  Py_DECREF(size);
  if (PyErr_Occurred()) return 0;
  if (used < 64) {
    Py_INCREF(dtype);  /* kept alive while its address is a key */
    cache[used].dtype = dtype;
    cache[used++].bytes = bytes;
  }
  return bytes;
}

/* Appends a tensor's part of the key (below) and returns its byte range; 0 done, 1 no key (a CPU tensor:
 * plans serve GPU calls only), -1 an error. The device is asked first, so that a CPU tensor costs one call. */
static int put_tensor(keybuf *b, PyObject *a, uint64_t *start, uint64_t *end) {
  PyObject *device = PyObject_CallMethodNoArgs(a, name_get_device);
  if (!device) return -1;
  long dev = PyLong_AsLong(device);
  Py_DECREF(device);
  if (dev == -1 && PyErr_Occurred()) return -1;
  if (dev < 0) return 1;
  PyObject *dtype = PyObject_GetAttr(a, name_dtype);
  if (!dtype) return -1;
  uintptr_t dtype_id = (uintptr_t)dtype;  /* torch's dtypes are singletons: the address names it */
  uint64_t element_bytes = itemsize_of(dtype);
  Py_DECREF(dtype);
  if (PyErr_Occurred()) return -1;
  PyObject *ptr = PyObject_CallMethodNoArgs(a, name_data_ptr);
  if (!ptr) return -1;
  uint64_t address = PyLong_AsUnsignedLongLongMask(ptr);
  Py_DECREF(ptr);
  if (PyErr_Occurred()) return -1;
  PyObject *shape = PyObject_GetAttr(a, name_shape);
  PyObject *stride = shape ? PyObject_CallMethodNoArgs(a, name_stride) : NULL;
  int64_t sizes[MAX_DIMS], strides[MAX_DIMS];
  int rc = stride ? 1 : -1;  /* a shape or stride that is not a tuple: no key */
  if (stride && PyTuple_Check(shape) && PyTuple_Check(stride) && !(rc = put_byte(b, 'T')) && !(rc = put(b, &dtype_id, sizeof dtype_id)) && !(rc = put_i64(b, dev)) &&
      !(rc = put_byte(b, (char)(address & 15))) && !(rc = put_byte(b, (char)PyTuple_GET_SIZE(shape))) &&
      !(rc = put_ints(b, shape, sizes, MAX_DIMS)) && !(rc = put_ints(b, stride, strides, MAX_DIMS))) {
    uint64_t span = 1;  /* in elements, from the first to one past the last */
    for (Py_ssize_t d = 0; d < PyTuple_GET_SIZE(shape); d++) {
      if (sizes[d] == 0) { span = 0; break; }
      span += (uint64_t)(sizes[d] - 1) * (uint64_t)(strides[d] < 0 ? -strides[d] : strides[d]);
    }
    *start = address;
    *end = address + element_bytes * span;
  }
  Py_XDECREF(shape);
  Py_XDECREF(stride);
  return rc;
}

/* call_key(*args) -> bytes | None. What the key holds, per argument: None, a bool, an int or a float by
 * value, a str by its text, and a tensor by dtype, device, shape, strides and data pointer modulo 16 (what
 * Triton specialises on; the ops read no finer alignment). After the arguments, for every pair of
 * tensors whose byte ranges overlap (first element to one past the last), the distance between their
 * data pointers: an op's launches may depend on aliasing (out is input, a view of a tensor passed beside
 * it). The ranges are exact: fresh tensors that the allocator happens to place side by side must not
 * differ in key from one call to the next. So two calls with one key differ only in where their tensors
 * are, and the launches of one are those of the other with the pointers moved. */
static PyObject *call_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  (void)self;
  if (!tensor_types) return PyErr_Format(PyExc_RuntimeError, "use_types() first");
  keybuf b = {NULL, 0, 0};
  uint64_t starts[MAX_KEY_TENSORS], ends[MAX_KEY_TENSORS];
  int tensors = 0, rc = 0;
  for (Py_ssize_t i = 0; i < nargs && rc == 0; i++) {
    PyObject *a = args[i];
    if (a == Py_None) rc = put_byte(&b, 'N');
    else if (PyBool_Check(a)) rc = put_byte(&b, a == Py_True ? 'b' : 'B');
    else if (PyLong_CheckExact(a)) rc = put_byte(&b, 'I') ? -1 : put_int(&b, a);
    else if (PyFloat_CheckExact(a)) {
      double v = PyFloat_AS_DOUBLE(a);
      rc = put_byte(&b, 'F') ? -1 : put(&b, &v, 8);
    } else if (PyUnicode_CheckExact(a)) {
      Py_ssize_t n;
      const char *text = PyUnicode_AsUTF8AndSize(a, &n);
      rc = !text ? -1 : put_byte(&b, 'S') ? -1 : put_i64(&b, n) ? -1 : put(&b, text, n);
    } else if (is_tensor(a) && tensors < MAX_KEY_TENSORS) {
      if ((rc = put_tensor(&b, a, &starts[tensors], &ends[tensors])) == 0) tensors++;
    } else rc = 1;  /* anything else: no key */
  }
  for (int i = 0; i < tensors && rc == 0; i++)
    for (int j = i + 1; j < tensors && rc == 0; j++)
      if (starts[i] < ends[j] && starts[j] < ends[i]) {
        int64_t pair = (int64_t)i << 32 | j, delta = (int64_t)(starts[j] - starts[i]);
        rc = put_byte(&b, 'R') ? -1 : put_i64(&b, pair) ? -1 : put_i64(&b, delta);
      }
  PyObject *key = rc == 0 ? PyBytes_FromStringAndSize(b.data, b.size) : NULL;
  PyMem_Free(b.data);
  if (rc < 0) return NULL;
  if (rc > 0) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  return key;
}

/* A plan (built by core/plans.py, which owns the format): a header, then per launch its header and its
 * parameters. Each parameter is a constant (its 8 bytes as the launch passes them) or, for a pointer, a
 * slot of run_plan's arguments and a byte offset into it. A launch whose function is 0 is a memset instead:
 * gx 32-bit zeros written at its one parameter (a workspace the call zeroes, plans.scratch). */
typedef struct { int32_t device, launches, slots, reserved; } plan_header;
typedef struct { uint64_t function; uint32_t gx, gy, gz, threads, shared, params; } launch_header;
typedef struct { uint8_t kind, from_slot; uint16_t slot; uint32_t reserved; uint64_t value; } plan_param;

/* Walks a plan with its slots: launches each kernel on torch's current stream, or, given `collect` (a list),
 * appends what it would launch instead: (function, gx, gy, gz, threads, shared, (parameter bits, ...)). */
static PyObject *walk_plan(PyObject *const *args, Py_ssize_t nargs, PyObject *collect) {
  if (nargs < 1 || !PyBytes_CheckExact(args[0])) return PyErr_Format(PyExc_TypeError, "a plan (bytes), then its slots");
  if (!collect && (!drv.ready || !stream_getter))
    return PyErr_Format(PyExc_RuntimeError, "init() and use_types() first");
  const char *at = PyBytes_AS_STRING(args[0]), *end = at + PyBytes_GET_SIZE(args[0]);
  plan_header head;
  if (end - at < (Py_ssize_t)sizeof head) return PyErr_Format(PyExc_ValueError, "a truncated plan");
  memcpy(&head, at, sizeof head);
  at += sizeof head;
  if (head.slots > MAX_ARGS) return PyErr_Format(PyExc_ValueError, "a plan with too many slots");
  if (nargs - 1 != head.slots)
    return PyErr_Format(PyExc_TypeError, "the plan takes %d slots, got %zd", head.slots, nargs - 1);
  uint64_t pointers[MAX_ARGS];
  for (int i = 0; i < head.slots; i++)
    if (as_pointer(args[1 + i], &pointers[i])) return NULL;
  void *stream = NULL;
  if (!collect) {
    PyObject *device = PyLong_FromLong(head.device);
    PyObject *stream_obj = device ? PyObject_CallOneArg(stream_getter, device) : NULL;
    Py_XDECREF(device);
    if (!stream_obj) return NULL;
    stream = PyLong_AsVoidPtr(stream_obj);
    Py_DECREF(stream_obj);
    if (PyErr_Occurred()) return NULL;
  }
  for (int l = 0; l < head.launches; l++) {
    launch_header lh;
    if (end - at < (Py_ssize_t)sizeof lh) return PyErr_Format(PyExc_ValueError, "a truncated plan");
    memcpy(&lh, at, sizeof lh);
    at += sizeof lh;
    if (lh.params > MAX_ARGS || end - at < (Py_ssize_t)(lh.params * sizeof(plan_param)))
      return PyErr_Format(PyExc_ValueError, "a truncated plan");
    uint64_t values[MAX_ARGS];
    void *params[MAX_ARGS];
    for (uint32_t p = 0; p < lh.params; p++, at += sizeof(plan_param)) {
      plan_param pp;
      memcpy(&pp, at, sizeof pp);
      if (pp.from_slot && pp.slot >= head.slots) return PyErr_Format(PyExc_ValueError, "a plan with a bad slot");
      values[p] = pp.from_slot ? pointers[pp.slot] + pp.value : pp.value;
      params[p] = &values[p];  /* every kind starts at its value's first byte (little-endian) */
    }
    if (collect) {
      PyObject *bits = PyTuple_New(lh.params);
      if (!bits) return NULL;
      for (uint32_t p = 0; p < lh.params; p++) PyTuple_SET_ITEM(bits, p, PyLong_FromUnsignedLongLong(values[p]));
      PyObject *item = Py_BuildValue("(KIIIIIN)", (unsigned long long)lh.function, lh.gx, lh.gy, lh.gz, lh.threads,
                                     lh.shared, bits);
      if (!item || PyList_Append(collect, item)) { Py_XDECREF(item); return NULL; }
      Py_DECREF(item);
      continue;
    }
    if ((uint64_t)lh.gx * lh.gy * lh.gz == 0) continue;  /* an empty grid launches nothing, as launch() */
    if (lh.function == 0) {
      if (lh.params != 1) return PyErr_Format(PyExc_ValueError, "a plan's memset takes one pointer");
      int err = drv.memset_d32_async(values[0], 0, lh.gx, stream);
      if (err) return driver_error("zeroing a workspace", err);
      continue;
    }
    int err = drv.launch_kernel((void *)(uintptr_t)lh.function, lh.gx, lh.gy, lh.gz, lh.threads, 1, 1, lh.shared,
                                stream, params, NULL);
    if (err) return driver_error("launching the kernel", err);
  }
  Py_RETURN_NONE;
}

static PyObject *run_plan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  (void)self;
  return walk_plan(args, nargs, NULL);
}

static PyObject *explain_plan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  (void)self;
  PyObject *launches = PyList_New(0);
  if (!launches) return NULL;
  PyObject *done = walk_plan(args, nargs, launches);
  if (!done) { Py_DECREF(launches); return NULL; }
  Py_DECREF(done);
  return launches;
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(platform): open the 'cuda' or 'hip' driver."},
    {"loaded_library", loaded_library, METH_VARARGS,
     "loaded_library(prefix) -> the path of a library in this process whose file name starts with prefix, or ''."},
    {"load", load, METH_VARARGS, "load(image, name, shared, device) -> the kernel's handle."},
    {"signature", (PyCFunction)(void (*)(void))signature, METH_FASTCALL, "signature(*args) -> bytes."},
    {"launch", (PyCFunction)(void (*)(void))launch, METH_FASTCALL,
     "launch(fn, gx, gy, gz, threads, shared, stream, fmt, *args)."},
    {"use_types", use_types, METH_VARARGS, "use_types(tensor_types, stream_getter)."},
    {"call_key", (PyCFunction)(void (*)(void))call_key, METH_FASTCALL, "call_key(*args) -> bytes | None."},
    {"run_plan", (PyCFunction)(void (*)(void))run_plan, METH_FASTCALL, "run_plan(plan, *slots)."},
    {"explain_plan", (PyCFunction)(void (*)(void))explain_plan, METH_FASTCALL,
     "explain_plan(plan, *slots) -> what run_plan would launch (tests)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "aiter_ext_launch", NULL, -1, methods};

PyMODINIT_FUNC PyInit_aiter_ext_launch(void) {
  if (!(name_dtype = PyUnicode_InternFromString("dtype")) || !(name_data_ptr = PyUnicode_InternFromString("data_ptr")) ||
      !(name_get_device = PyUnicode_InternFromString("get_device")) ||
      !(name_shape = PyUnicode_InternFromString("shape")) || !(name_stride = PyUnicode_InternFromString("stride")) ||
      !(name_itemsize = PyUnicode_InternFromString("itemsize")))
    return NULL;
  return PyModule_Create(&module_def);
}

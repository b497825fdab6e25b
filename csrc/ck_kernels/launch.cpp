/* The thin launch path (aiter_ext/core/thin.py): load a compiled kernel (a cubin on CUDA, an hsaco on ROCm) and launch it with
 * one C call from Python, instead of Triton's per-call argument binding and specialisation in Python.
 *
 * A CPython extension with no CUDA, HIP or torch headers: the driver is opened with dlopen at init(), and
 * the few entry points used are declared here by their documented C signatures (the CUDA driver API and
 * HIP's module API take the same arguments for these calls). So one file builds anywhere a C compiler and
 * Python's headers are (Triton needs both to build its own launchers), and the same build runs on either
 * platform.
 *
 *   init(platform)                        "cuda" or "hip": open the driver (once per process).
 *   load(image, name, shared, device)     load a code object into the current context of `device` and
 *                                         return the kernel's handle (an int).
 *   signature(*args)                      the launch signature of the arguments (bytes): per argument what
 *                                         Triton specialises a compiled kernel on (see thin.py).
 *   launch(fn, gx, gy, gz, threads, shared, stream, fmt, *args)
 *                                         launch on `stream`; fmt has one letter per argument:
 *                                         'p' a pointer (an int, None for NULL, or an object with
 *                                         data_ptr(), such as a tensor), 'i' int32, 'l' int64, 'f' fp32.
 * Errors raise RuntimeError with the driver's message; nothing is launched then.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
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

static struct {
  int ready, is_hip;
  module_load_data_fn module_load_data;
  module_get_function_fn module_get_function;
  launch_kernel_fn launch_kernel;
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

static PyObject *init(PyObject *self, PyObject *args) {
  const char *platform;
  if (!PyArg_ParseTuple(args, "s", &platform)) return NULL;
  if (drv.ready) Py_RETURN_NONE;
  int hip = strcmp(platform, "hip") == 0;
  if (!hip && strcmp(platform, "cuda") != 0)
    return PyErr_Format(PyExc_ValueError, "platform must be 'cuda' or 'hip', got '%s'", platform);
  const char *names[] = {hip ? "libamdhip64.so" : "libcuda.so.1", hip ? "libamdhip64.so.6" : "libcuda.so"};
  void *lib = NULL;
  for (int i = 0; i < 2 && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) return PyErr_Format(PyExc_RuntimeError, "cannot open the %s driver: %s", platform, dlerror());
  if (hip) {
    if (!(drv.module_load_data = (module_load_data_fn)symbol(lib, "hipModuleLoadData")) ||
        !(drv.module_get_function = (module_get_function_fn)symbol(lib, "hipModuleGetFunction")) ||
        !(drv.launch_kernel = (launch_kernel_fn)symbol(lib, "hipModuleLaunchKernel")) ||
        !(drv.hip_get_error_string = (hip_get_error_string_fn)symbol(lib, "hipGetErrorString")))
      return NULL;
  } else {
    if (!(drv.module_load_data = (module_load_data_fn)symbol(lib, "cuModuleLoadData")) ||
        !(drv.module_get_function = (module_get_function_fn)symbol(lib, "cuModuleGetFunction")) ||
        !(drv.launch_kernel = (launch_kernel_fn)symbol(lib, "cuLaunchKernel")) ||
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
  PyObject *ptr = PyObject_CallMethod(obj, "data_ptr", NULL);
  if (!ptr) return -1;
  *out = PyLong_AsUnsignedLongLongMask(ptr);
  Py_DECREF(ptr);
  return PyErr_Occurred() ? -1 : 0;
}

/* signature(*args) -> bytes. Per argument, one class byte and, for a tensor, its dtype object's address
 * (torch's dtypes are singletons):
 *   a tensor (anything with data_ptr and dtype): 'T' | 16-byte aligned, then the dtype's 8 bytes;
 *   an int: 'I', then one byte: bit 0 fits int32, bit 1 divisible by 16, bit 2 equals 1;
 *   bool 'B' | value, float 'F', None 'N'; anything else 'O' (thin.py then leaves the call to Triton). */
static PyObject *signature(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  (void)self;
  if (nargs > MAX_ARGS) return PyErr_Format(PyExc_ValueError, "signature(): at most %d arguments", MAX_ARGS);
  char buf[MAX_ARGS * 10];
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
    PyObject *dtype = PyObject_GetAttrString(a, "dtype");
    PyObject *ptr = dtype ? PyObject_CallMethod(a, "data_ptr", NULL) : NULL;
    if (!ptr) {
      Py_XDECREF(dtype);
      PyErr_Clear();
      buf[n++] = 'O';
      continue;
    }
    uint64_t address = PyLong_AsUnsignedLongLongMask(ptr);
    Py_DECREF(ptr);
    if (PyErr_Occurred()) { Py_DECREF(dtype); return NULL; }
    uintptr_t dtype_id = (uintptr_t)dtype;
    Py_DECREF(dtype);  /* the dtype singleton outlives the call: only its address is kept */
    buf[n++] = 'T';
    buf[n++] = (char)((address & 15) == 0);
    memcpy(buf + n, &dtype_id, sizeof dtype_id);
    n += sizeof dtype_id;
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

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(platform): open the 'cuda' or 'hip' driver."},
    {"load", load, METH_VARARGS, "load(image, name, shared, device) -> the kernel's handle."},
    {"signature", (PyCFunction)(void (*)(void))signature, METH_FASTCALL, "signature(*args) -> bytes."},
    {"launch", (PyCFunction)(void (*)(void))launch, METH_FASTCALL,
     "launch(fn, gx, gy, gz, threads, shared, stream, fmt, *args)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "aiter_ext_launch", NULL, -1, methods};

PyMODINIT_FUNC PyInit_aiter_ext_launch(void) { return PyModule_Create(&module_def); }

/* Runs a TVM Relax module compiled for aarch64 (export_library) on a batch of inputs, through
 * TVM's C ABI (tvm/ffi/c_api.h) and the aarch64 libtvm_runtime.so / libtvm_ffi.so from PyPI's
 * apache-tvm wheels. Built by tinyseek/export/tvm.py with aarch64-linux-gnu-gcc, run under
 * qemu-aarch64 (or on a board):
 *
 *   runner MODEL.so INPUTS.bin LOGITS.bin
 *
 * INPUTS.bin: int64 N, int64 L, int64 C, then N*L int64 token ids and N*L int64 mask values.
 * LOGITS.bin: N*C float32, row by row, one sample per call of the module's `main`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tvm/ffi/c_api.h>

static void die_ffi(const char* what) {
  TVMFFIObjectHandle err = NULL;
  TVMFFIErrorMoveFromRaised(&err);
  if (err) {
    TVMFFIErrorCell* cell = (TVMFFIErrorCell*)((char*)err + sizeof(TVMFFIObject));
    fprintf(stderr, "%s: %.*s: %.*s\n", what, (int)cell->kind.size, cell->kind.data, (int)cell->message.size,
            cell->message.data);
  } else {
    fprintf(stderr, "%s failed\n", what);
  }
  exit(2);
}

static TVMFFIObjectHandle global(const char* name) {
  TVMFFIByteArray n = {name, strlen(name)};
  TVMFFIObjectHandle f = NULL;
  if (TVMFFIFunctionGetGlobal(&n, &f) != 0 || f == NULL) die_ffi(name);
  return f;
}

static TVMFFIAny call(TVMFFIObjectHandle f, TVMFFIAny* args, int n, const char* what) {
  TVMFFIAny out;
  memset(&out, 0, sizeof out);
  out.type_index = kTVMFFINone;
  if (TVMFFIFunctionCall(f, args, n, &out) != 0) die_ffi(what);
  return out;
}

static TVMFFIAny str_arg(const char* s) {
  TVMFFIAny a;
  memset(&a, 0, sizeof a);
  a.type_index = kTVMFFIRawStr;
  a.v_c_str = s;
  return a;
}

static TVMFFIAny int_arg(int64_t v, int32_t type_index) {
  TVMFFIAny a;
  memset(&a, 0, sizeof a);
  a.type_index = type_index;
  a.v_int64 = v;
  return a;
}

static TVMFFIObjectHandle get_function(TVMFFIAny module, const char* name) {
  TVMFFIAny args[3] = {module, str_arg(name), int_arg(0, kTVMFFIBool)};
  TVMFFIAny f = call(global("ffi.ModuleGetFunction"), args, 3, name);
  if (f.type_index != kTVMFFIFunction) {
    fprintf(stderr, "the module has no function %s\n", name);
    exit(2);
  }
  return f.v_obj;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL.so INPUTS.bin LOGITS.bin\n", argv[0]);
    return 1;
  }
  FILE* in = fopen(argv[2], "rb");
  int64_t head[3];
  if (!in || fread(head, sizeof(int64_t), 3, in) != 3) {
    fprintf(stderr, "cannot read %s\n", argv[2]);
    return 1;
  }
  int64_t n = head[0], len = head[1], classes = head[2];
  int64_t* ids = malloc(sizeof(int64_t) * n * len);
  int64_t* mask = malloc(sizeof(int64_t) * n * len);
  float* logits = malloc(sizeof(float) * n * classes);
  if (fread(ids, sizeof(int64_t), n * len, in) != (size_t)(n * len) ||
      fread(mask, sizeof(int64_t), n * len, in) != (size_t)(n * len)) {
    fprintf(stderr, "%s is short\n", argv[2]);
    return 1;
  }
  fclose(in);

  TVMFFIAny path = str_arg(argv[1]);
  TVMFFIAny lib = call(global("ffi.ModuleLoadFromFile"), &path, 1, "ffi.ModuleLoadFromFile");
  TVMFFIAny vm = call(get_function(lib, "vm_load_executable"), NULL, 0, "vm_load_executable");
  /* CPU (kDLCPU = 1), device 0, pooled allocator (2): what tvm.relax.VirtualMachine passes. */
  TVMFFIAny init[3] = {int_arg(1, kTVMFFIInt), int_arg(0, kTVMFFIInt), int_arg(2, kTVMFFIInt)};
  call(get_function(vm, "vm_initialization"), init, 3, "vm_initialization");
  TVMFFIObjectHandle run = get_function(vm, "main");

  int64_t shape[2] = {1, len};
  DLDataType i64 = {kDLInt, 64, 1};
  DLDevice cpu = {kDLCPU, 0};
  for (int64_t s = 0; s < n; s++) {
    DLTensor t_ids = {ids + s * len, cpu, 2, i64, shape, NULL, 0};
    DLTensor t_mask = {mask + s * len, cpu, 2, i64, shape, NULL, 0};
    TVMFFIAny args[2];
    memset(args, 0, sizeof args);
    args[0].type_index = args[1].type_index = kTVMFFIDLTensorPtr;
    args[0].v_ptr = &t_ids;
    args[1].v_ptr = &t_mask;
    TVMFFIAny out = call(run, args, 2, "main");
    if (out.type_index != kTVMFFITensor) {
      fprintf(stderr, "main returned type %d, not a tensor\n", out.type_index);
      return 2;
    }
    DLTensor* t = (DLTensor*)((char*)out.v_obj + sizeof(TVMFFIObject));
    if (t->dtype.code != kDLFloat || t->dtype.bits != 32 || t->shape[t->ndim - 1] != classes) {
      fprintf(stderr, "main returned an unexpected tensor\n");
      return 2;
    }
    memcpy(logits + s * classes, (char*)t->data + t->byte_offset, sizeof(float) * classes);
    TVMFFIObjectDecRef(out.v_obj);
  }
  FILE* o = fopen(argv[3], "wb");
  if (!o || fwrite(logits, sizeof(float), n * classes, o) != (size_t)(n * classes)) {
    fprintf(stderr, "cannot write %s\n", argv[3]);
    return 1;
  }
  fclose(o);
  return 0;
}

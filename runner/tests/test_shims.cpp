// Tests of the aoti_torch_* shims and delegate helpers. The CPU part runs anywhere; the GPU part runs
// only when cudaGetDeviceCount finds a device (it prints SKIP otherwise).
//
// Usage: test_shims [FAKE_AOTI_SO]   (the .so checks that a dlopen'ed model resolves our shims)
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_backend.h"
#include "shims.h"

namespace {

int g_failures = 0;
#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)
#define CHECK_OK(call) CHECK((call) == AOTI_TORCH_SUCCESS)

AtenTensorHandle from_blob(void* data, std::vector<int64_t> sizes, std::vector<int64_t> strides, int64_t offset,
                           int32_t dtype, int32_t device = 0) {
  AtenTensorHandle t = nullptr;
  CHECK_OK(aoti_torch_create_tensor_from_blob(data, static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(),
                                              offset, dtype, device, 0, &t));
  return t;
}

AtenTensorHandle empty(std::vector<int64_t> sizes, std::vector<int64_t> strides, int32_t dtype, int32_t device) {
  AtenTensorHandle t = nullptr;
  CHECK_OK(aoti_torch_empty_strided(static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(), dtype, device, 0,
                                    &t));
  return t;
}

void test_constants() {
  CHECK(aoti_torch_dtype_uint8() == 0);
  CHECK(aoti_torch_dtype_int8() == 1);
  CHECK(aoti_torch_dtype_int16() == 2);
  CHECK(aoti_torch_dtype_int32() == 3);
  CHECK(aoti_torch_dtype_int64() == 4);
  CHECK(aoti_torch_dtype_float16() == 5);
  CHECK(aoti_torch_dtype_float32() == 6);
  CHECK(aoti_torch_dtype_bool() == 11);
  CHECK(aoti_torch_dtype_bfloat16() == 15);
  CHECK(aoti_torch_device_type_cpu() == 0);
  CHECK(aoti_torch_device_type_cuda() == 1);
  CHECK(aoti_torch_layout_strided() == 0);
  CHECK(aoti_torch_dtype_element_size(aoti_torch_dtype_bfloat16()) == 2);
  CHECK(aoti_torch_dtype_element_size(aoti_torch_dtype_int64()) == 8);
  CHECK(!aoti_torch_grad_mode_is_enabled());
  aoti_torch_grad_mode_set_enabled(true);
  CHECK(aoti_torch_grad_mode_is_enabled());
  aoti_torch_grad_mode_set_enabled(false);
}

void test_metadata() {
  std::vector<float> buf(64);
  AtenTensorHandle t = from_blob(buf.data(), {2, 3, 4}, {12, 4, 1}, 5, aoti_torch_dtype_float32());
  int64_t *sizes = nullptr, *strides = nullptr, v = 0;
  int32_t i32 = -1;
  void* p = nullptr;
  CHECK_OK(aoti_torch_get_sizes(t, &sizes));
  CHECK_OK(aoti_torch_get_strides(t, &strides));
  CHECK(sizes[0] == 2 && sizes[1] == 3 && sizes[2] == 4);
  CHECK(strides[0] == 12 && strides[1] == 4 && strides[2] == 1);
  CHECK_OK(aoti_torch_get_data_ptr(t, &p));
  CHECK(p == buf.data() + 5);  // data pointer includes the storage offset
  CHECK_OK(aoti_torch_get_storage_offset(t, &v));
  CHECK(v == 5);
  CHECK_OK(aoti_torch_get_storage_size(t, &v));
  CHECK(v == (5 + 24) * 4);
  CHECK_OK(aoti_torch_get_dim(t, &v));
  CHECK(v == 3);
  CHECK_OK(aoti_torch_get_numel(t, &v));
  CHECK(v == 24);
  CHECK_OK(aoti_torch_get_size(t, -1, &v));
  CHECK(v == 4);
  CHECK_OK(aoti_torch_get_stride(t, 0, &v));
  CHECK(v == 12);
  CHECK_OK(aoti_torch_get_dtype(t, &i32));
  CHECK(i32 == 6);
  CHECK_OK(aoti_torch_get_device_type(t, &i32));
  CHECK(i32 == 0);
  CHECK_OK(aoti_torch_get_device_index(t, &i32));
  CHECK(i32 == 0);
  bool b = false;
  CHECK_OK(aoti_torch_is_contiguous(t, &b));
  CHECK(b);
  // The sizes pointer stays valid while the handle lives, whatever else is created.
  std::vector<AtenTensorHandle> others;
  for (int k = 0; k < 100; ++k) others.push_back(from_blob(buf.data(), {1, 1}, {1, 1}, 0, aoti_torch_dtype_float32()));
  CHECK(sizes[0] == 2 && sizes[2] == 4 && strides[1] == 4);
  for (auto o : others) CHECK_OK(aoti_torch_delete_tensor_object(o));
  CHECK_OK(aoti_torch_delete_tensor_object(t));
}

void test_uint8() {
  std::vector<uint8_t> buf(32);
  AtenTensorHandle t = from_blob(buf.data(), {4, 2}, {4, 1}, 3, aoti_torch_dtype_uint8());
  void* p = nullptr;
  int32_t dt = -1;
  int64_t n = 0;
  CHECK_OK(aoti_torch_get_data_ptr(t, &p));
  CHECK(p == buf.data() + 3);  // offset counted in 1-byte elements
  CHECK_OK(aoti_torch_get_dtype(t, &dt));
  CHECK(dt == 0);
  CHECK_OK(aoti_torch_get_storage_size(t, &n));
  CHECK(n == 3 + 3 * 4 + 1 + 1);  // offset + span of a [4,2] view with stride 4
  bool contiguous = true;
  CHECK_OK(aoti_torch_is_contiguous(t, &contiguous));
  CHECK(!contiguous);
  CHECK_OK(aoti_torch_delete_tensor_object(t));
}

void test_sharing() {
  AtenTensorHandle a = empty({4}, {1}, aoti_torch_dtype_int64(), 0);
  int64_t* pa = nullptr;
  CHECK_OK(aoti_torch_get_data_ptr(a, reinterpret_cast<void**>(&pa)));
  for (int i = 0; i < 4; ++i) pa[i] = 10 + i;
  AtenTensorHandle b = nullptr;
  CHECK_OK(aoti_torch_new_tensor_handle(a, &b));
  CHECK(tq::shim::storage_use_count(a) == 2);
  CHECK_OK(aoti_torch_delete_tensor_object(a));  // b keeps the owning storage alive
  CHECK(tq::shim::storage_use_count(b) == 1);
  int64_t* pb = nullptr;
  CHECK_OK(aoti_torch_get_data_ptr(b, reinterpret_cast<void**>(&pb)));
  CHECK(pb == pa && pb[3] == 13);

  // _reinterpret_tensor adds to the storage offset and shares the storage.
  int64_t sizes[2] = {2, 2}, strides[2] = {1, 2};
  AtenTensorHandle r = nullptr;
  CHECK_OK(aoti_torch__reinterpret_tensor(b, 2, sizes, strides, 1, &r));
  int64_t off = -1;
  CHECK_OK(aoti_torch_get_storage_offset(r, &off));
  CHECK(off == 1);
  int64_t* pr = nullptr;
  CHECK_OK(aoti_torch_get_data_ptr(r, reinterpret_cast<void**>(&pr)));
  CHECK(pr == pb + 1 && pr[0] == 11);
  CHECK(tq::shim::storage_use_count(b) == 2);
  AtenTensorHandle r2 = nullptr;
  CHECK_OK(aoti_torch__reinterpret_tensor(r, 2, sizes, strides, 1, &r2));
  CHECK_OK(aoti_torch_get_storage_offset(r2, &off));
  CHECK(off == 2);
  CHECK_OK(aoti_torch_delete_tensor_object(r2));
  CHECK_OK(aoti_torch_delete_tensor_object(r));
  CHECK_OK(aoti_torch_delete_tensor_object(b));

  // _alloc_from_pool: a typed view at a byte offset into a uint8 pool.
  AtenTensorHandle pool = empty({64}, {1}, aoti_torch_dtype_uint8(), 0);
  int64_t fs[1] = {4}, fst[1] = {1};
  AtenTensorHandle f = nullptr;
  CHECK_OK(aoti_torch__alloc_from_pool(pool, 16, aoti_torch_dtype_float32(), 1, fs, fst, &f));
  void *pp = nullptr, *pf = nullptr;
  CHECK_OK(aoti_torch_get_data_ptr(pool, &pp));
  CHECK_OK(aoti_torch_get_data_ptr(f, &pf));
  CHECK(static_cast<char*>(pf) == static_cast<char*>(pp) + 16);
  CHECK_OK(aoti_torch_get_storage_offset(f, &off));
  CHECK(off == 4);
  CHECK_OK(aoti_torch_delete_tensor_object(pool));
  CHECK_OK(aoti_torch_delete_tensor_object(f));
}

void test_copy_clone_cpu() {
  std::vector<float> src(6);
  std::iota(src.begin(), src.end(), 0.f);  // [[0,1,2],[3,4,5]]
  AtenTensorHandle s = from_blob(src.data(), {2, 3}, {3, 1}, 0, 6);
  AtenTensorHandle st = from_blob(src.data(), {3, 2}, {1, 3}, 0, 6);  // transpose view
  std::vector<float> dst(6, -1.f);
  AtenTensorHandle d = from_blob(dst.data(), {3, 2}, {2, 1}, 0, 6);
  CHECK_OK(aoti_torch_copy_(d, st, 0));
  CHECK(dst[0] == 0 && dst[1] == 3 && dst[2] == 1 && dst[3] == 4 && dst[4] == 2 && dst[5] == 5);

  std::vector<float> dst2(6, -1.f);
  AtenTensorHandle d2 = from_blob(dst2.data(), {2, 3}, {3, 1}, 0, 6);
  CHECK_OK(aoti_torch_copy_(d2, s, 0));
  CHECK(dst2 == src);

  // clone keeps the strides of a dense (transposed) tensor.
  AtenTensorHandle c = nullptr;
  CHECK_OK(aoti_torch_clone(st, &c));
  int64_t* cs = nullptr;
  CHECK_OK(aoti_torch_get_strides(c, &cs));
  CHECK(cs[0] == 1 && cs[1] == 3);
  float* pc = nullptr;
  CHECK_OK(aoti_torch_get_data_ptr(c, reinterpret_cast<void**>(&pc)));
  CHECK(pc != src.data() && pc[4] == 4);

  // A strided slice (every other column) is not dense: clone makes it contiguous.
  AtenTensorHandle sl = from_blob(src.data(), {2, 2}, {3, 2}, 0, 6);  // columns 0 and 2
  AtenTensorHandle c2 = nullptr;
  CHECK_OK(aoti_torch_clone(sl, &c2));
  CHECK_OK(aoti_torch_get_strides(c2, &cs));
  CHECK(cs[0] == 2 && cs[1] == 1);
  CHECK_OK(aoti_torch_get_data_ptr(c2, reinterpret_cast<void**>(&pc)));
  CHECK(pc[0] == 0 && pc[1] == 2 && pc[2] == 3 && pc[3] == 5);

  // clone_preserve_strides keeps even non-dense strides.
  AtenTensorHandle c3 = nullptr;
  CHECK_OK(aoti_torch_clone_preserve_strides(sl, &c3));
  CHECK_OK(aoti_torch_get_strides(c3, &cs));
  CHECK(cs[0] == 3 && cs[1] == 2);
  CHECK_OK(aoti_torch_get_data_ptr(c3, reinterpret_cast<void**>(&pc)));
  CHECK(pc[0] == 0 && pc[2] == 2 && pc[3] == 3 && pc[5] == 5);

  CHECK_OK(aoti_torch_zero_(d2));
  CHECK(dst2[5] == 0.f);

  AtenTensorHandle sc = nullptr;
  CHECK_OK(aoti_torch_scalar_to_tensor_int64(42, &sc));
  int64_t item = 0;
  CHECK_OK(aoti_torch_item_int64(sc, &item));
  CHECK(item == 42);

  for (auto h : {s, st, d, d2, c, sl, c2, c3, sc}) CHECK_OK(aoti_torch_delete_tensor_object(h));
}

void test_errors() {
  void* p = nullptr;
  CHECK(aoti_torch_get_data_ptr(nullptr, &p) == AOTI_TORCH_FAILURE);
  CHECK(!tq::shim::last_error().empty());
  float x = 0;
  int64_t one = 1;
  AtenTensorHandle t = nullptr;
  CHECK(aoti_torch_create_tensor_from_blob(&x, 1, &one, &one, 0, 99, 0, 0, &t) == AOTI_TORCH_FAILURE);
  CHECK(aoti_torch_create_tensor_from_blob_v2(&x, 1, &one, &one, 0, 6, 0, 0, &t, 1, nullptr, 0) ==
        AOTI_TORCH_FAILURE);
  AtenTensorHandle a = from_blob(&x, {1}, {1}, 0, 6);
  int32_t i = 0;
  AtenTensorHandle b = from_blob(&i, {1}, {1}, 0, 3);
  CHECK(aoti_torch_copy_(a, b, 0) == AOTI_TORCH_FAILURE);  // dtype conversion is refused loudly
  CHECK(tq::shim::last_error().find("dtype") != std::string::npos);
  CHECK_OK(aoti_torch_delete_tensor_object(a));
  CHECK_OK(aoti_torch_delete_tensor_object(b));
  bool threw = false;
  try {
    aoti_torch_check(false, "fn", "file.cpp", 7, "boom");
  } catch (const std::exception& e) {
    threw = std::string(e.what()).find("boom") != std::string::npos;
  }
  CHECK(threw);
  aoti_torch_check(true, "fn", "file.cpp", 7, "not thrown");
  CHECK(aoti_torch_proxy_executor_call_function(nullptr, 0, 0, nullptr, 0, nullptr) == AOTI_TORCH_FAILURE);
}

void test_dlopen(const char* so_path) {
  void* so = dlopen(so_path, RTLD_LAZY | RTLD_LOCAL);
  CHECK(so != nullptr);
  if (!so) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return;
  }
  auto probe = reinterpret_cast<int (*)()>(dlsym(so, "fake_aoti_probe"));
  CHECK(probe != nullptr);
  if (probe) {
    int rc = probe();
    if (rc) std::fprintf(stderr, "fake_aoti_probe failed check %d\n", rc);
    CHECK(rc == 0);
  }
  dlclose(so);
}

void test_backend_helpers() {
  auto k = tq::cuda::resolve_blob_keys("", "prefill");
  CHECK(k.so_key == "prefill_so_blob" && k.weights_key == "prefill_weights_blob");
  k = tq::cuda::resolve_blob_keys("ab12_so_blob\ncd34_weights_blob", "decode");
  CHECK(k.so_key == "ab12_so_blob" && k.weights_key == "cd34_weights_blob");
  k = tq::cuda::resolve_blob_keys(std::string_view("ab12_so_blob\ncd34_weights_blob\n\0", 33), "decode");
  CHECK(k.so_key == "ab12_so_blob" && k.weights_key == "cd34_weights_blob");
  k = tq::cuda::resolve_blob_keys("", "");
  CHECK(k.so_key == "so_blob" && k.weights_key == "weights_blob");
  CHECK(tq::cuda::register_backend() == executorch::runtime::Error::Ok);
  CHECK(tq::cuda::register_backend() == executorch::runtime::Error::Ok);  // idempotent
}

void test_gpu(bool simulated) {
  using tq::shim::memory_stats;
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s) == cudaSuccess);
  CUDAStreamGuardHandle g = nullptr;
  CHECK_OK(aoti_torch_create_cuda_stream_guard(s, 0, &g));
  void* cur = nullptr;
  CHECK_OK(aoti_torch_get_current_cuda_stream(0, &cur));
  CHECK(cur == s);

  int64_t live0 = memory_stats().live_bytes;
  AtenTensorHandle dev = empty({2, 3}, {3, 1}, 6, 1);
  CHECK(memory_stats().live_bytes == live0 + 24);
  std::vector<float> host(6);
  std::iota(host.begin(), host.end(), 0.f);
  AtenTensorHandle h = from_blob(host.data(), {2, 3}, {3, 1}, 0, 6);
  CHECK_OK(aoti_torch_copy_(dev, h, 0));  // host -> device
  int32_t dt = -1;
  CHECK_OK(aoti_torch_get_device_type(dev, &dt));
  CHECK(dt == 1);

  // device transpose through the strided copy kernel (simulated CUDA cannot run kernels)
  AtenTensorHandle dev_t = nullptr;
  int64_t ts[2] = {3, 2}, tst[2] = {1, 3};
  CHECK_OK(aoti_torch__reinterpret_tensor(dev, 2, ts, tst, 0, &dev_t));
  AtenTensorHandle dev_c = empty({3, 2}, {2, 1}, 6, 1);
  std::vector<float> back(6, -1.f);
  AtenTensorHandle hb = from_blob(back.data(), {3, 2}, {2, 1}, 0, 6);
  if (simulated) {
    CHECK(aoti_torch_copy_(dev_c, dev_t, 0) == AOTI_TORCH_FAILURE);  // the launch error surfaces
  } else {
    CHECK_OK(aoti_torch_copy_(dev_c, dev_t, 0));
    CHECK_OK(aoti_torch_copy_(hb, dev_c, 0));  // device -> host, blocking
    CHECK(back[0] == 0 && back[1] == 3 && back[2] == 1 && back[5] == 5);
  }

  AtenTensorHandle cl = nullptr;
  CHECK_OK(aoti_torch_clone_preserve_strides(dev_t, &cl));
  CHECK_OK(aoti_torch_zero_(dev));
  CHECK_OK(aoti_torch_copy_(h, dev, 0));
  CHECK(host[4] == 0.f);

  void* raw = nullptr;
  CHECK_OK(aoti_torch_cuda_caching_allocator_raw_alloc(1024, &raw));
  CHECK_OK(aoti_torch_cuda_caching_allocator_raw_delete(raw));

  for (auto t : {dev, h, dev_t, dev_c, hb, cl}) CHECK_OK(aoti_torch_delete_tensor_object(t));
  CHECK(memory_stats().live_bytes == live0);
  CHECK_OK(aoti_torch_delete_cuda_stream_guard(g));
  CHECK(cudaStreamSynchronize(s) == cudaSuccess);
  cudaStreamDestroy(s);
}

}  // namespace

int main(int argc, char** argv) {
  test_constants();
  test_metadata();
  test_uint8();
  test_sharing();
  test_copy_clone_cpu();
  test_errors();
  test_backend_helpers();
  if (argc > 1) test_dlopen(argv[1]);
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    bool simulated = std::strstr(prop.name, "simulated") != nullptr;
    test_gpu(simulated);
    std::printf("GPU checks ran on %s\n", prop.name);
  } else {
    cudaGetLastError();
    std::printf("SKIP GPU checks: no CUDA device\n");
  }
  if (g_failures) {
    std::printf("%d check(s) FAILED\n", g_failures);
    return 1;
  }
  std::printf("all shim checks passed\n");
  return 0;
}

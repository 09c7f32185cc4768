// Empty stand-in for libcuda.so.1 next to sim_cudart (see sim_cudart.cpp): lets the runner dlopen "the
// driver" on a machine without one.
extern "C" int tq_sim_cuda_driver_present() { return 1; }

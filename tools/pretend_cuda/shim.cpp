// Pretend CUDA, native half: lets a CPU-only torch build treat tensors whose device is cuda:N as
// ordinary tensors in the autograd engine. Built by tools/pretend_cuda/build.py against the
// installed torch and loaded (RTLD_GLOBAL) before `import torch`.
//
// Two registrations, both through c10/ATen's own registries:
// - a device guard for DeviceType::CUDA (the engine asks it for the device count, the current
//   device and streams when a graph holds cuda tensors; without one it refuses them);
// - stand-in CUDA hooks (the engine asks whether a device has a primary context before it
//   synchronises streams; the CPU build's default hooks raise there).
// No memory is ever allocated on a device: the tensors' data live in wrapped CPU tensors (Python).
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <array>
#include <cstdlib>

namespace {

constexpr c10::DeviceIndex kMaxDevices = 8;

c10::DeviceIndex configured_device_count() {
  // PRETEND_CUDA_DEVICES: how many GPUs the machine pretends to have (1 by default).
  const char* value = std::getenv("PRETEND_CUDA_DEVICES");
  int count = value ? std::atoi(value) : 1;
  if (count < 1) count = 1;
  if (count > kMaxDevices) count = kMaxDevices;
  return static_cast<c10::DeviceIndex>(count);
}

thread_local c10::DeviceIndex current_device = 0;
thread_local std::array<c10::StreamId, kMaxDevices> current_streams = {};

struct PretendCudaGuard final : public c10::impl::DeviceGuardImplInterface {
  PretendCudaGuard() = default;
  explicit PretendCudaGuard(c10::DeviceType) {}
  c10::DeviceType type() const override { return c10::DeviceType::CUDA; }
  c10::Device exchangeDevice(c10::Device device) const override {
    c10::Device old = getDevice();
    current_device = device.index();
    return old;
  }
  c10::Device getDevice() const override { return c10::Device(c10::DeviceType::CUDA, current_device); }
  void setDevice(c10::Device device) const override {
    TORCH_CHECK(device.index() >= 0 && device.index() < deviceCount(), "pretend CUDA: invalid device ", device);
    current_device = device.index();
  }
  void uncheckedSetDevice(c10::Device device) const noexcept override { current_device = device.index(); }
  c10::Stream getStream(c10::Device device) const noexcept override {
    return c10::Stream(c10::Stream::UNSAFE, device, current_streams[device.index()]);
  }
  c10::Stream exchangeStream(c10::Stream stream) const noexcept override {
    auto old = current_streams[stream.device_index()];
    current_streams[stream.device_index()] = stream.id();
    return c10::Stream(c10::Stream::UNSAFE, stream.device(), old);
  }
  c10::DeviceIndex deviceCount() const noexcept override {
    static const c10::DeviceIndex count = configured_device_count();
    return count;
  }
  // Events: work is synchronous on the CPU, so every event has already happened.
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeEvent(void*) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
  void recordDataPtrOnStream(const c10::DataPtr&, const c10::Stream&) const override {}
};

}  // namespace

C10_REGISTER_GUARD_IMPL(CUDA, PretendCudaGuard);

namespace at {

struct PretendCudaHooks final : public CUDAHooksInterface {
  explicit PretendCudaHooks(CUDAHooksArgs) {}
  void init() const override {}
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(DeviceIndex) const override { return true; }
  DeviceIndex deviceCount() const override { return c10::impl::getDeviceGuardImpl(DeviceType::CUDA)->deviceCount(); }
  DeviceIndex getCurrentDevice() const override { return c10::impl::getDeviceGuardImpl(DeviceType::CUDA)->getDevice().index(); }
  DeviceIndex current_device() const override { return getCurrentDevice(); }
  void setCurrentDevice(DeviceIndex device) const override {
    c10::impl::getDeviceGuardImpl(DeviceType::CUDA)->setDevice(Device(DeviceType::CUDA, device));
  }
  DeviceIndex exchangeDevice(DeviceIndex device) const override {
    return c10::impl::getDeviceGuardImpl(DeviceType::CUDA)->exchangeDevice(Device(DeviceType::CUDA, device)).index();
  }
  DeviceIndex maybeExchangeDevice(DeviceIndex device) const override { return exchangeDevice(device); }
  int getNumGPUs() const override { return deviceCount(); }
  void deviceSynchronize(DeviceIndex) const override {}
};

// Registered under the name ATen looks up ("CUDAHooks"), as the real CUDA library registers its own.
C10_REGISTER_CLASS(CUDAHooksRegistry, CUDAHooks, PretendCudaHooks)

}  // namespace at

"""Triton's compiled launch path on a machine without a GPU.

`TargetOnlyDriver` stands in for Triton's CUDA driver: it names an H200
(sm_90) as the target and device 0 as current, which is all that
JITFunction.warmup asks (the generated binder, the specialization, a compile
down to a cubin with the ptxas the wheel bundles). `NoLaunchDriver` also lets
JITFunction.run go to its end with a launcher that does nothing: what is left
of a call is its host cost less the C launcher's, which is how
benchmarks/bench_host.py measures the Triton path's Python on the CPU.

Install one with `triton.runtime.driver.driver.set_active(...)` in a process
whose kernels were decorated without TRITON_INTERPRET. Imports nothing from
gflops (tests load this file by path, without the C++ extension).
"""
SM90 = ("cuda", 90, 32)  # H200


class TargetOnlyDriver:
    """What JITFunction.run asks of the driver before it launches; warmup never launches."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget(*SM90)


class _Utils:
    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132}  # H200

    def load_binary(self, name, kernel, shared, device):
        # (module, function, registers, spills, max threads): only the thread limit is checked.
        return 1, 1, 0, 0, 1024


class NoLaunchDriver(TargetOnlyDriver):
    """JITFunction.run's whole path, a launcher that launches nothing."""

    utils = _Utils()

    def launcher_cls(self, src, metadata):
        return lambda *args: None

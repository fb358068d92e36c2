"""The XLA flags of every JAX process the tests start: the pytest workers (conftest) and the
CLIs they run as subprocesses.

The suite's time goes mostly to XLA compiling small programs, not to running them. LLVM's
optimisation level 0 compiles the tiny train step in about half the time (19 s -> 11 s on
2 cores) and changes no result a test checks: XLA's own HLO passes still run, and CPU
floating point stays strict (no fast math) at every level. Runs whose figures are measured
with the production flags (the README's quick start, tests/toyworld) start without these.
"""

FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test process; `devices` fake CPU devices when given."""
    count = () if devices is None else (f"--xla_force_host_platform_device_count={devices}",)
    return " ".join((*count, *FAST_COMPILE))

"""Compute device and numeric precision: ``--device auto|cpu|cuda|mps``, ``precision auto|bf16|fp32``.

``auto`` precision means bf16 autocast where the hardware runs bf16 natively (CUDA with bf16
support; x86 CPUs with AVX512-BF16 or AMX), fp32 elsewhere. ``fp32`` is exact and is what the
determinism tests use. Channels-last memory layout is used on CPU and CUDA (oneDNN / cuDNN pick
their fastest convolution kernels for NHWC bf16).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
# intra-op threads this process started with: OMP_NUM_THREADS if set, else the physical cores
CPU_THREADS = torch.get_num_threads()
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda, then mps, then cpu. An unavailable explicit device is a ConfigError."""
    if name not in DEVICES:
        raise ConfigError(f"--device {name!r} is not one of {DEVICES}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but torch.cuda.is_available() is False; "
                          "use --device auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps requested but MPS is not available; use --device auto or cpu")
    return torch.device(name)


@contextlib.contextmanager
def compute_threads(threads: int):
    """Run the block with ``threads`` intra-op CPU threads (0: every core), then restore."""
    before = torch.get_num_threads()
    wanted = threads or CPU_THREADS
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def cpu_jobs(requested: int, cpu_threads: int, device: torch.device) -> int:
    """Worker processes for a study on this machine: ``requested``, or with 0 as many as the
    cores allow at ``cpu_threads`` each (one on a GPU, or when computations use every core)."""
    if requested:
        return requested
    if device.type != "cpu" or not cpu_threads:
        return 1
    return max(1, CPU_THREADS // cpu_threads)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX tiles)."""
    return cpu_kind() != "no_bf16"


def cpu_kind() -> str:
    """The family of bf16 kernels oneDNN runs on this CPU: ``amx``, ``avx512_bf16`` or
    ``no_bf16``. The families round bf16 products differently, so a run reproduces to the bit
    only on a CPU of the same kind (seen: fold rows of one seed differ by up to 0.22 macro-F1
    between an AMX and an AVX512-BF16 host, arm means by < 0.015)."""
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    return "no_bf16"


def hardware(device: torch.device) -> str:
    """What a run's numbers depend on beyond the code and seed: ``cpu:<cpu_kind>``, or
    ``cuda:<GPU name>``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{cpu_kind()}"
    return device.type


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_fast_bf16() and torch.backends.mkldnn.is_available()
    return False


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed; ``autocast()`` wraps every forward pass."""

    device: torch.device
    precision: str          # "bf16" | "fp32" (resolved)
    channels_last: bool
    compile: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Copy a batch to the device (pinned + non-blocking on CUDA), 4-D in the chosen layout."""
        if x.device != self.device:
            if self.pin_memory and not x.is_pinned():
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=self.pin_memory)
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{self.device.type}/{self.precision}/{layout}" + ("/compiled" if self.compile else "")


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: bool = True,
                    compile: bool = False) -> Runtime:
    """Resolve CLI/profile settings into a Runtime (and set cudnn.benchmark on CUDA)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {PRECISIONS}")
    dev = resolve_device(device)
    if precision == "auto":
        precision = "bf16" if bf16_native(dev) else "fp32"
    elif precision == "bf16" and dev.type == "mps":
        raise ConfigError("precision bf16 is not supported on mps here; use auto or fp32")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    layout = channels_last and dev.type in ("cpu", "cuda")
    return Runtime(device=dev, precision=precision, channels_last=layout,
                   compile=bool(compile and dev.type in ("cpu", "cuda")))


def compiled(module: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """``torch.compile`` when the runtime asks for it. On CPU inductor's weight freezing lets
    oneDNN fuse conv + ReLU and pre-pack bf16 weights (measured: VGG19 features at 224 px,
    21 → 23 img/s on 2 cores); it costs ~15 s of compilation per input shape."""
    if not runtime.compile:
        return module
    if runtime.device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    return torch.compile(module)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (timing on asynchronous devices)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _matmul_rate(device: torch.device, n: int, reps: int) -> float:
    """Best FLOP/s of ``reps`` n×n bf16 matmuls after one warm-up (private generator: the
    global RNG, and so every result, is untouched)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, generator=g, device=device).to(torch.bfloat16)
    a @ b
    synchronize(device)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        synchronize(device)
        best = max(best, 2 * n ** 3 / max(time.perf_counter() - t, 1e-9))
    return best


def measure_bf16_peak(device: str | torch.device = "cpu", n: int | None = None, reps: int = 3,
                      budget_s: float | None = 1.0) -> float:
    """The bf16 matmul peak of ``device`` in GFLOP/s: best of ``reps`` n×n products (default
    n: 2048 on CPU, 8192 on GPUs).

    It is the reference for the throughput suite's "fraction of peak" and for a run's
    normalised cost (``timing.py``). With ``budget_s`` a first 256×256 product sizes n down
    (to a multiple of 256) so that the timed products take about that long on hosts without
    native bf16; ``None`` keeps n as given (the throughput suite).
    """
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    if budget_s is not None:
        rate = _matmul_rate(device, 256, 1)
        fits = int((budget_s / (reps + 1) * rate / 2) ** (1 / 3)) // 256 * 256
        n = max(256, min(n, fits))
    return _matmul_rate(device, n, reps) / 1e9

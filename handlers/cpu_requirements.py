"""The CPU instruction sets an AOTInductor archive's compiled kernels need, and the check a worker makes at load.

AOTInductor compiles its C++ kernels for the build host's vector ISA (torch._inductor.cpu_vec_isa.pick_vec_isa():
"avx2", "avx512", "avx512 avx512_vnni", "avx512 avx512_vnni amx_tile"). On a CPU without those instructions the
worker dies of SIGILL on its first request, and TorchServe restarts it forever without saying why. So the build
records the flags (handler settings `requiredCpuFlags` and `builtForIsa`) and the worker refuses to load with
UnsupportedCpu, naming what is missing, before it runs a single kernel.
Inductor's default is `-march=native`, which lets the compiler use every extension of the build host (BMI2, GFNI,
AVX512-FP16...), not only the vector ISA's: the build pins `-march` to the x86-64 level the ISA implies (`isa_march`)
so that the recorded flags are all the compiler may use. Measured on a Xeon with AMX (docs/optimize.md): the pinned
level is no slower, and faster for bf16 MiniLM.
Pure: imports nothing from `ts` (the archive builder in scripts/tskit uses the same table).
"""

from typing import Iterable, List, Optional, Set, Tuple

from handlers.model_settings import SettingsError

CPUINFO = "/proc/cpuinfo"

# Each word of pick_vec_isa()'s str -> the /proc/cpuinfo flags its kernels' compile flags enable
# (VecAVX2 "-mavx2 -mfma -mf16c"; VecAVX512 "-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma";
# VecAVX512VNNI adds "-mavx512vnni"; VecAMX adds "-mamx-tile -mamx-bf16 -mamx-int8" whatever the model's dtype).
ISA_FLAGS = {
    "avx2": ("avx2", "fma", "f16c"),
    "avx512": ("avx512f", "avx512dq", "avx512vl", "avx512bw", "fma"),
    "avx512_vnni": ("avx512_vnni",),
    "amx_tile": ("amx_tile", "amx_bf16", "amx_int8"),
}
# Compile flags the ISA adds only on some hosts (VecISA.build_arch_flags(): -mavx512bf16 where the build host
# has AVX512_BF16, -mamx-fp16 where it has AMX-FP16): the kernels may use those instructions too.
ARCH_FLAG_CPUINFO = {
    "-mavx2": "avx2", "-mfma": "fma", "-mf16c": "f16c",
    "-mavx512f": "avx512f", "-mavx512dq": "avx512dq", "-mavx512vl": "avx512vl", "-mavx512bw": "avx512bw",
    "-mavx512vnni": "avx512_vnni", "-mavx512bf16": "avx512_bf16",
    "-mamx-tile": "amx_tile", "-mamx-bf16": "amx_bf16", "-mamx-int8": "amx_int8", "-mamx-fp16": "amx_fp16",
}
# The x86-64 micro-architecture level each vector ISA implies (every AVX2 CPU has x86-64-v3, every AVX-512 one
# x86-64-v4), as /proc/cpuinfo names its flags (SSE3 is "pni", LZCNT "abm"; OSXSAVE is not listed by Linux).
X86_64_V3 = ("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",
             "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
MARCH_FLAGS = {
    "x86-64": (),  # the baseline every x86-64 CPU has (SSE2): a build host without a vector ISA
    "x86-64-v3": X86_64_V3,
    "x86-64-v4": X86_64_V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}
ISA_MARCH = {"avx2": "x86-64-v3", "avx512": "x86-64-v4"}
X86_MACHINES = ("x86_64", "AMD64")
FIX = "rebuild the archive on this host (make archives / make optimize)"


class UnsupportedCpu(SettingsError):
    """This CPU lacks instructions the archive's compiled kernels use. A SettingsError: the worker does not load."""


def isa_march(isa: str, machine: str = "x86_64") -> Optional[str]:
    """The -march an archive for vector ISA `isa` is compiled with: its x86-64 level, the baseline on an x86 host
    without a vector ISA, None (inductor's own choice) elsewhere (NEON, SVE: not x86)."""
    if machine not in X86_MACHINES:
        return None
    words = isa.split()
    return ISA_MARCH.get(words[0]) if words else "x86-64"


def isa_cpu_flags(isa: str, arch_flags: str = "") -> List[str]:
    """The /proc/cpuinfo flags kernels compiled for vector ISA `isa` (pick_vec_isa()'s str) with compiler
    `arch_flags` (its build_arch_flags()) and -march at the ISA's level (isa_march) may use, sorted. An ISA
    this table does not know (NEON, SVE: not x86, whose cpuinfo names features differently) gives no
    requirement rather than a wrong one."""
    flags: Set[str] = set(MARCH_FLAGS.get(isa_march(isa), ()))  # an ISA not in the table: no level, nothing
    for word in isa.split():
        flags.update(ISA_FLAGS.get(word, ()))
    for word in arch_flags.split():
        if word in ARCH_FLAG_CPUINFO:
            flags.add(ARCH_FLAG_CPUINFO[word])
    return sorted(flags)


def build_host_isa() -> Tuple[str, str]:
    """(pick_vec_isa()'s name, its compile flags) on this host; ("", "") without a vector ISA."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    return (str(isa), isa.build_arch_flags()) if isa else ("", "")


def build_host_requirement() -> Tuple[str, List[str]]:
    """(the ISA name, its flags) AOTInductor compiles for on this host, as the archive records them."""
    name, arch_flags = build_host_isa()
    return name, isa_cpu_flags(name, arch_flags)  # no vector ISA: plain C++ at the baseline, nothing required


def build_host_march() -> Optional[str]:
    """The -march AOTInductor compiles with on this host (inductor config `cpp.march`), matching what
    build_host_requirement records; None: inductor's default (not x86)."""
    import platform

    return isa_march(build_host_isa()[0], platform.machine())


def cpuinfo_field(text: str, keys: Tuple[str, ...]) -> Optional[str]:
    """The value of the first line of /proc/cpuinfo's text whose key is one of `keys` (every core lists the same)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpuinfo_flags(text: str, keys: Tuple[str, ...] = ("flags",)) -> Set[str]:
    """The feature flags of /proc/cpuinfo's text: x86's `flags` line (the guard compares x86 names only);
    keys=("flags", "Features") also reads ARM's, for a report of the host."""
    return set((cpuinfo_field(text, keys) or "").split())


def read_cpuinfo(path: str = CPUINFO) -> Optional[str]:
    """/proc/cpuinfo's text, or None where there is none (not Linux): then nothing is refused."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def check_cpu(required: Iterable[str], isa: Optional[str], cpuinfo: Optional[str]) -> None:
    """Raise UnsupportedCpu when `cpuinfo` (the text) lacks a flag of `required`. No requirement, or no
    cpuinfo to read, or a cpuinfo without a flags line (not x86) passes: refuse only what is known to crash."""
    required = list(required)
    if not required or cpuinfo is None:
        return
    available = cpuinfo_flags(cpuinfo)
    if not available:
        return
    missing = [flag for flag in required if flag not in available]
    if missing:
        raise UnsupportedCpu(
            f"this CPU lacks {', '.join(missing)}: the archive's AOTInductor kernels were compiled for "
            f"{isa or 'another CPU'} (requiredCpuFlags: {', '.join(required)}) and would crash the worker "
            f"with an illegal instruction; {FIX}")

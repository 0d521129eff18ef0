"""CPU instruction-set requirements of AOTInductor archives (handlers/cpu_requirements.py).

An aoti archive's kernels are compiled for its build host's vector ISA; on a CPU without it the worker would
die of SIGILL and restart forever. The build records the flags, the worker refuses to load naming what is
missing. No archive is compiled here (AOTInductor takes minutes): the recorded flags come from a function
tested on pick_vec_isa()'s strings and compile flags as torch 2.14 spells them.
"""

import pytest

import shutil
import subprocess

from handlers import cpu_requirements
from handlers.cpu_requirements import (ARCH_FLAG_CPUINFO, MARCH_FLAGS, X86_64_V3, UnsupportedCpu, check_cpu, cpuinfo_flags,
                              isa_cpu_flags, isa_march, read_cpuinfo)
from handlers.image_classifier_handler import ImageClassifierHandler
from handlers.model_settings import SettingsError
from support import make_context
from tskit import archive, formats
from tskit.declaration import load
from tskit.kinds import kind, parse_settings
from tskit.sources import LoadedSource

# torch._inductor.cpu_vec_isa's str() and build_arch_flags() of each x86 ISA (VecAMX on a host with AVX512_BF16)
AVX2 = ("avx2", "-mavx2 -mfma -mf16c")
AVX512 = ("avx512", "-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma")
VNNI = ("avx512 avx512_vnni", AVX512[1] + " -mavx512vnni -mavx512vl")
AMX = ("avx512 avx512_vnni amx_tile", VNNI[1] + " -mamx-tile -mamx-bf16 -mamx-int8 -mavx512bf16")

AVX2_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz
flags\t\t: fpu vme sse sse2 pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c rdrand lahf_lm abm avx2 bmi1 bmi2
processor\t: 1
flags\t\t: fpu vme sse sse2 pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c rdrand lahf_lm abm avx2 bmi1 bmi2
"""
AMX_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c lahf_lm abm bmi1 bmi2 avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni avx512_bf16 \
avx512_vnni avx512_bitalg amx_bf16 avx512_fp16 amx_tile amx_int8
"""
AMX_FLAGS = isa_cpu_flags(*AMX)


# ---- what the build records ----------------------------------------------------------------------------
V4 = set(MARCH_FLAGS["x86-64-v4"])


def test_each_isa_gives_its_x86_64_level_and_the_flags_its_kernels_are_compiled_with():
    assert set(isa_cpu_flags(*AVX2)) == set(X86_64_V3) and {"avx2", "f16c", "fma", "bmi2", "abm"} <= set(X86_64_V3)
    assert set(isa_cpu_flags(*AVX512)) == V4 and {"avx512f", "avx512cd", "avx2"} <= V4
    assert set(isa_cpu_flags(*VNNI)) == V4 | {"avx512_vnni"}
    assert set(AMX_FLAGS) == V4 | {"amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni"}
    assert AMX_FLAGS == sorted(AMX_FLAGS)


def test_the_isa_name_alone_gives_its_base_flags():
    # amx_tile brings amx_bf16 and amx_int8: VecAMX compiles with -mamx-bf16 -mamx-int8 whatever the dtype
    assert set(isa_cpu_flags("avx512 avx512_vnni amx_tile")) == V4 | {"amx_bf16", "amx_int8", "amx_tile",
                                                                       "avx512_vnni"}


@pytest.mark.parametrize("isa, machine, march", [
    ("avx2", "x86_64", "x86-64-v3"), ("avx512", "x86_64", "x86-64-v4"),
    ("avx512 avx512_vnni amx_tile", "x86_64", "x86-64-v4"), ("", "x86_64", "x86-64"), ("", "AMD64", "x86-64"),
    ("asimd", "aarch64", None), ("", "aarch64", None)])
def test_the_march_an_archive_is_compiled_with(isa, machine, march):
    """Not -march=native: the level the ISA implies, so that the recorded flags cover all the compiler may use."""
    assert isa_march(isa, machine) == march


# gcc's option -> the /proc/cpuinfo flag; options that gcc enables at a level but never emits on its own (the
# crc32/mwait intrinsics) or that alias another (-msse4) are left out
GCC_TO_CPUINFO = {"-msse3": "pni", "-mssse3": "ssse3", "-msse4.1": "sse4_1", "-msse4.2": "sse4_2", "-mcx16": "cx16",
                  "-msahf": "lahf_lm", "-mpopcnt": "popcnt", "-mavx": "avx", "-mavx2": "avx2", "-mbmi": "bmi1",
                  "-mbmi2": "bmi2", "-mf16c": "f16c", "-mfma": "fma", "-mlzcnt": "abm", "-mmovbe": "movbe",
                  "-mxsave": "xsave", "-mavx512f": "avx512f", "-mavx512bw": "avx512bw", "-mavx512cd": "avx512cd",
                  "-mavx512dq": "avx512dq", "-mavx512vl": "avx512vl"}
NOT_EMITTED = {"-mcrc32", "-mmwait", "-msse4"}


def gcc_enabled(march: str) -> set:
    out = subprocess.run(["gcc", f"-march={march}", "-Q", "--help=target"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["[enabled]"]}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc here (the compiler AOTInductor uses)")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64-v4"])
def test_each_level_lists_every_extension_gcc_enables_for_it(march):
    """Against the compiler itself: what -march=<level> enables beyond the x86-64 baseline is in the table."""
    added = gcc_enabled(march) - gcc_enabled("x86-64") - NOT_EMITTED
    assert added <= set(GCC_TO_CPUINFO), sorted(added - set(GCC_TO_CPUINFO))
    assert {GCC_TO_CPUINFO[option] for option in added} == set(MARCH_FLAGS[march])


def test_aoti_is_compiled_at_the_level_the_archive_records(monkeypatch):
    """formats.to_aoti passes the pinned -march to inductor (no compile here: the call is captured)."""
    import torch._inductor

    seen = {}
    monkeypatch.setattr(formats, "build_host_march", lambda: "x86-64-v4")
    monkeypatch.setattr(formats, "exported_program", lambda *args: "program")
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package",
                        lambda program, package_path, inductor_configs: seen.update(inductor_configs))
    formats.to_aoti(LoadedSource("x", ("aoti",)), kind("image-classifier"), None, None, "model.pt2")
    assert seen == {"freezing": True, "cpp.march": "x86-64-v4"}


def test_this_host_can_run_what_it_builds():
    """The build host's own requirement (level + ISA) is met by its own cpuinfo, and its -march is that level."""
    name, arch_flags = cpu_requirements.build_host_isa()
    text = read_cpuinfo() or ""
    if not cpuinfo_flags(text):
        pytest.skip("no /proc/cpuinfo flags here (not x86 Linux)")
    check_cpu(isa_cpu_flags(name, arch_flags), name, text)
    assert cpu_requirements.build_host_march() in MARCH_FLAGS


def test_the_table_covers_every_compile_flag_of_this_torch():
    """Against torch's own classes (no compile: the class attributes, not pick_vec_isa()): a torch upgrade that
    adds a compile flag to an x86 ISA fails here instead of recording too little."""
    from torch._inductor import cpu_vec_isa

    for isa in (cpu_vec_isa.VecAVX2(), cpu_vec_isa.VecAVX512(), cpu_vec_isa.VecAVX512VNNI(), cpu_vec_isa.VecAMX()):
        compile_flags = isa._arch_flags.split()
        assert set(compile_flags) <= set(ARCH_FLAG_CPUINFO), f"{isa}: {compile_flags}"
        # the ISA's name alone already gives every flag its base compile flags enable
        assert set(isa_cpu_flags(str(isa))) == set(isa_cpu_flags(str(isa), isa._arch_flags)), str(isa)


@pytest.mark.parametrize("isa", ["", "asimd", "sve256", "INVALID_VEC_ISA"])
def test_an_isa_not_in_the_table_requires_nothing(isa):
    assert isa_cpu_flags(isa, "-march=armv8-a+sve") == []


def write_declaration(tmp_path, model_format):
    folder = tmp_path / "mine"
    folder.mkdir(exist_ok=True)
    (folder / "model.yaml").write_text(f"kind: image-classifier\nsource: model.pt2\nformat: {model_format}\n"
                                       "precision: fp32\nhandler:\n  topk: 3\n", encoding="utf-8")
    return load("mine", str(tmp_path))


def test_an_aoti_build_records_the_host_isa_in_the_handler_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "build_host_requirement", lambda: (AMX[0], AMX_FLAGS))
    section = archive.served_handler(write_declaration(tmp_path, "aoti"), LoadedSource("a .pt2", ("aoti",)))
    assert section["requiredCpuFlags"] == AMX_FLAGS and section["builtForIsa"] == AMX[0]
    settings = parse_settings("image-classifier", section)  # the worker reads it back typed
    assert settings.requiredCpuFlags == AMX_FLAGS and settings.topk == 3


@pytest.mark.parametrize("model_format", ["torchscript", "onnx"])
def test_other_formats_record_no_requirement(tmp_path, monkeypatch, model_format):
    monkeypatch.setattr(archive, "build_host_requirement", lambda: pytest.fail("asked for a non-aoti build"))
    section = archive.served_handler(write_declaration(tmp_path, model_format), LoadedSource("x", (model_format,)))
    assert "requiredCpuFlags" not in section and "builtForIsa" not in section


# ---- the settings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["image-classifier", "text-classifier", "text-embedding", "object-detector"])
def test_every_kind_defaults_to_no_requirement(kind):
    settings = parse_settings(kind, None)
    assert settings.requiredCpuFlags == [] and settings.builtForIsa is None


@pytest.mark.parametrize("value", ["avx2", ["avx2", 1], [True]])
def test_required_flags_must_be_a_list_of_strings(value):
    with pytest.raises(SettingsError, match=r"handler\.requiredCpuFlags: expected a list of strings"):
        parse_settings("image-classifier", {"requiredCpuFlags": value})


# ---- the check at load -------------------------------------------------------------------------------
def test_cpuinfo_flags_are_read_from_the_flags_line():
    assert {"avx2", "fma", "f16c"} <= cpuinfo_flags(AVX2_CPUINFO) and "avx512f" not in cpuinfo_flags(AVX2_CPUINFO)
    assert cpuinfo_flags("processor : 0\nFeatures : fp asimd\n") == set()  # the guard: x86 names only
    assert cpuinfo_flags("processor : 0\nFeatures : fp asimd\n", ("flags", "Features")) == {"fp", "asimd"}


def test_an_avx2_only_cpu_refuses_an_amx_archive_naming_what_is_missing():
    with pytest.raises(UnsupportedCpu) as refused:
        check_cpu(AMX_FLAGS, AMX[0], AVX2_CPUINFO)
    message = str(refused.value)
    assert message.startswith("this CPU lacks amx_bf16, amx_int8, amx_tile, avx512_bf16, avx512_vnni, avx512bw, "
                              "avx512cd, avx512dq, avx512f, avx512vl:")
    assert "compiled for avx512 avx512_vnni amx_tile" in message
    assert "rebuild the archive on this host (make archives / make optimize)" in message
    assert isinstance(refused.value, SettingsError)  # whoever catches a load's SettingsError catches it


def test_the_cpu_it_was_built_for_and_an_avx2_archive_pass():
    check_cpu(AMX_FLAGS, AMX[0], AMX_CPUINFO)
    check_cpu(isa_cpu_flags(*AVX2), AVX2[0], AVX2_CPUINFO)
    check_cpu(isa_cpu_flags(*AVX2), AVX2[0], AMX_CPUINFO)


@pytest.mark.parametrize("cpuinfo", [AVX2_CPUINFO, None, ""])
def test_no_requirement_always_passes(cpuinfo):
    check_cpu([], None, cpuinfo)


@pytest.mark.parametrize("cpuinfo", [None, "", "processor : 0\nFeatures : fp asimd\n"])
def test_no_cpuinfo_or_no_flags_line_is_not_refused(cpuinfo):
    check_cpu(AMX_FLAGS, AMX[0], cpuinfo)  # not Linux / not x86: nothing known to refuse on


def test_an_unreadable_cpuinfo_reads_as_none(tmp_path):
    assert read_cpuinfo(str(tmp_path / "missing")) is None


def test_a_worker_refuses_before_loading_the_model(tmp_path):
    """The real handler class: the check runs before the model file is opened (here there is none)."""
    if not cpuinfo_flags(read_cpuinfo() or ""):
        pytest.skip("no /proc/cpuinfo flags here")
    manifest = {"model": {"modelName": "mine", "serializedFile": "model.pt2"}}
    config = {"handler": {"modelFormat": "aoti", "requiredCpuFlags": ["avx2", "no_such_isa"],
                          "builtForIsa": "future_isa"}}
    with pytest.raises(UnsupportedCpu, match=r"this CPU lacks no_such_isa: .* compiled for future_isa"):
        ImageClassifierHandler().initialize(make_context(str(tmp_path), manifest, config))

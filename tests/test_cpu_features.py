"""CPU capability detection and the fast path's backend choice, on recorded cpuinfo of three CPU kinds."""

from __future__ import annotations

import pytest

from outpaint.engine.cpu_features import CpuFeatures, cpu_features, fast_backend, parse_cpuinfo, resolve_backend

# First lines of /proc/cpuinfo's first processor, flags cut to the ones that matter here.
ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
model name\t: ignored: the first processor speaks for all
"""
ICE_LAKE = "model name\t: Intel(R) Xeon(R) Processor @ 2.60GHz\nflags\t\t: avx avx2 avx512f avx512_vnni\n"
SAPPHIRE_RAPIDS = ("model name\t: Intel(R) Xeon(R) Platinum 8488C\n"
                   "flags\t\t: avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n")
AVX2_ONLY = "model name\t: AMD EPYC 7B13\nflags\t\t: avx avx2 fma\n"
OV_BF16 = ("WINOGRAD", "FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT")
OV_NO_BF16 = ("WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT")


def _features(cpuinfo: str, openvino: tuple[str, ...] | None) -> CpuFeatures:
    model, flags = parse_cpuinfo(cpuinfo)
    return CpuFeatures(model=model, logical_cpus=2, usable_cpus=2, flags=flags, openvino_capabilities=openvino)


def test_cpuinfo_gives_the_model_and_the_flags_of_interest():
    model, flags = parse_cpuinfo(ZEN4)
    assert model == "AMD EPYC 9R14"
    assert flags == {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}  # fpu, sse2, avx512bw are not of interest


@pytest.mark.parametrize("cpuinfo,expected", [
    (ZEN4, {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_tile": False, "amx_bf16": False,
            "amx_int8": False, "vnni": True, "native_bf16": True}),
    (ICE_LAKE, {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx_tile": False, "amx_bf16": False,
                "amx_int8": False, "vnni": True, "native_bf16": False}),
    (SAPPHIRE_RAPIDS, {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True,
                       "amx_int8": True, "vnni": True, "native_bf16": True}),
    (AVX2_ONLY, {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_tile": False, "amx_bf16": False,
                 "amx_int8": False, "vnni": False, "native_bf16": False}),
], ids=["zen4", "ice-lake", "sapphire-rapids", "avx2-only"])
def test_capabilities_from_cpuinfo_alone(cpuinfo, expected):
    assert _features(cpuinfo, None).capabilities() == expected


def test_avx_vnni_counts_as_vnni():
    assert _features("flags\t: avx2 avx_vnni\n", None).vnni


def test_openvino_decides_native_bf16_when_it_is_installed():
    # OpenVINO is what runs bf16: its report wins over the flags in either direction.
    assert not _features(ZEN4, OV_NO_BF16).native_bf16
    assert _features(AVX2_ONLY, OV_BF16).native_bf16


@pytest.mark.parametrize("cpuinfo,openvino,backend,precision,words", [
    (ZEN4, OV_BF16, "openvino-bf16", "bf16", "runs bf16 natively (OpenVINO reports WINOGRAD, FP32, BF16"),
    (ICE_LAKE, OV_NO_BF16, "ort-cpu", "fp32",
     "this CPU has no native bf16 (OpenVINO reports WINOGRAD, FP32, INT8, BIN, EXPORT_IMPORT): "
     "the fast path runs in fp32 on ort-cpu, the faster fp32 runtime"),
    (AVX2_ONLY, OV_NO_BF16, "ort-cpu", "fp32", "no native bf16"),
    (ZEN4, None, "ort-cpu", "fp32", "openvino is not installed"),
    (AVX2_ONLY, None, "ort-cpu", "fp32", "openvino is not installed"),
], ids=["zen4", "ice-lake", "avx2-only", "zen4-no-openvino", "avx2-no-openvino"])
def test_fast_backend_is_the_fastest_native_precision_and_says_why(cpuinfo, openvino, backend, precision, words):
    choice = fast_backend(_features(cpuinfo, openvino))
    assert (choice.backend, choice.precision) == (backend, precision)
    assert words in choice.reason and "\n" not in choice.reason


@pytest.mark.parametrize("cpuinfo,openvino,backend", [
    (ICE_LAKE, OV_NO_BF16, "openvino-int8"),  # VNNI, no bf16: the twins are used
    (ZEN4, OV_BF16, "openvino-bf16"),  # bf16 native: bf16 stays (int8 was no faster on AMX)
    (SAPPHIRE_RAPIDS, OV_BF16, "openvino-bf16"),
    (AVX2_ONLY, OV_NO_BF16, "ort-cpu"),  # no VNNI: int8 was no faster than fp32 capped to AVX2
    (ICE_LAKE, None, "ort-cpu"),  # without openvino nothing runs the twins
], ids=["ice-lake", "zen4", "sapphire-rapids", "avx2-only", "ice-lake-no-openvino"])
def test_int8_twins_are_picked_where_vnni_has_no_bf16_beside_it(cpuinfo, openvino, backend):
    choice = fast_backend(_features(cpuinfo, openvino), int8_twins=True)
    assert choice.backend == backend
    if backend == "openvino-int8":
        assert choice.precision == "int8" and "has int8 twins" in choice.reason
    without = fast_backend(_features(cpuinfo, openvino), int8_twins=False)
    assert without.backend != "openvino-int8"
    if (cpuinfo, openvino) == (ICE_LAKE, OV_NO_BF16):
        assert "`outpaint quantize` would add the int8 twins" in without.reason


def test_an_explicit_backend_is_kept_and_none_means_ort_cpu_without_fast():
    assert resolve_backend("openvino-bf16", fast=True) == ("openvino-bf16", None)
    assert resolve_backend(None, fast=False) == ("ort-cpu", None)
    choice = fast_backend()
    assert resolve_backend(None, fast=True) == (choice.backend, choice.reason)


def test_this_machine_is_detected_once_with_a_consistent_summary():
    features = cpu_features()
    assert cpu_features() is features
    summary = features.summary()
    assert summary["fast_backend"] == fast_backend().backend
    if summary["native_bf16"]:
        assert summary["fast_precision"] == "bf16" or not features.openvino

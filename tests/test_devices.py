"""Device and precision choice: `auto` picks bf16 only where the hardware has bf16 matrix units."""
from __future__ import annotations

import io

import pytest
import torch

from fpdm_core import devices


@pytest.fixture
def probes(monkeypatch):
    """Replace torch's CPU probes and /proc/cpuinfo; returns a setter (amx, avx512_bf16, cpuinfo text)."""
    def set_cpu(amx=False, avx512_bf16=False, cpuinfo: str | None = ""):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)

        def fake_open(path, *args, **kwargs):
            if cpuinfo is None:
                raise OSError("no /proc on this system")
            return io.StringIO(cpuinfo)

        monkeypatch.setattr(devices, "open", fake_open, raising=False)
        devices.cpu_has_fast_bf16.cache_clear()

    yield set_cpu
    devices.cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize("cpu, want", [
    (dict(amx=True), "bf16"),
    (dict(avx512_bf16=True), "fp32"),  # measured slower than float32 without AMX (bench speed)
    (dict(avx512_bf16=True, cpuinfo="flags : avx512f avx512_bf16"), "fp32"),
    (dict(cpuinfo="flags : fpu sse avx2 avx512f amx_bf16 amx_tile"), "bf16"),  # older torch: Linux's flags decide
    (dict(cpuinfo="flags : fpu sse avx2 avx512f avx512bw"), "fp32"),  # AVX-512 without bf16: emulated, slow
    (dict(cpuinfo=None), "fp32"),  # no /proc (macOS, Windows) and no probe
])
def test_auto_precision_on_the_cpu_follows_amx(probes, cpu, want):
    probes(**cpu)
    assert devices.resolve_precision("auto", torch.device("cpu")) == want
    assert devices.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # explicit choices are kept
    assert devices.resolve_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("supported, want", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cuda_follows_bf16_support(monkeypatch, supported, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert devices.resolve_precision("auto", torch.device("cuda")) == want


def test_auto_precision_elsewhere_is_fp32(probes):
    probes(amx=True)
    assert devices.resolve_precision("auto", torch.device("mps")) == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of"):
        devices.resolve_precision("fp16", torch.device("cpu"))


def test_autocast_is_bf16_or_nothing(probes):
    probes(amx=True)
    a = torch.randn(4, 4)
    with devices.autocast(torch.device("cpu"), "auto"):
        assert (a @ a).dtype == torch.bfloat16
    with devices.autocast(torch.device("cpu"), "fp32"):
        assert (a @ a).dtype == torch.float32

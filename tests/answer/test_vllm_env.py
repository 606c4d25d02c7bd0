"""The embedded vLLM server's environment: thread binding and the compile cache switch."""

import os

import pytest
from pydantic import ValidationError

from answer.vllm_server import one_cpu_per_core, vllm_env
from core.settings import Settings


def fake_sysfs(root, cores):
    """`cores`: cpu -> (package, core) as /sys/devices/system/cpu shows them."""
    for cpu, (package, core) in cores.items():
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return root


def test_one_cpu_per_core_skips_second_hardware_threads(tmp_path):
    # 2 packages × 2 cores × 2 threads, Linux numbering: cpu N and N+4 share a core
    cores = {cpu: (cpu % 4 // 2, cpu % 2) for cpu in range(8)}
    sysfs = fake_sysfs(tmp_path, cores)
    assert one_cpu_per_core(set(range(8)), sysfs) == [0, 1, 2, 3]
    assert one_cpu_per_core({1, 5, 6}, sysfs) == [1, 6]  # only the CPUs this process may use


def test_one_cpu_per_core_without_a_topology_uses_every_cpu(tmp_path):
    assert one_cpu_per_core({0, 3}, tmp_path) == [0, 3]


def test_this_machine_binds_one_thread_per_core_it_may_use():
    cpus = one_cpu_per_core()
    assert cpus and set(cpus) <= os.sched_getaffinity(0)
    assert vllm_env(Settings())["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cpus))


def test_other_bindings_pass_through_and_bad_ones_are_refused():
    assert vllm_env(Settings(vllm_cpu_bind="auto"))["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert vllm_env(Settings(vllm_cpu_bind="0-3"))["VLLM_CPU_OMP_THREADS_BIND"] == "0-3"
    with pytest.raises(ValidationError, match="vllm_cpu_bind"):
        Settings(vllm_cpu_bind="all; rm -rf /")


def test_the_aot_compile_cache_is_off_unless_the_environment_turns_it_on(monkeypatch):
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert vllm_env(Settings())["VLLM_USE_AOT_COMPILE"] == "0"
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    assert vllm_env(Settings())["VLLM_USE_AOT_COMPILE"] == "1"

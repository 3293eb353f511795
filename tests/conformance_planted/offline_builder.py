"""Test-only: a backend that cannot run here (no device) but builds ahead of
time, as cuda and hip do on a machine without a GPU."""
NAME = "offline_builder"
OPS: dict = {}
TARGETS = ("sm_90a",)


def available() -> tuple[bool, str]:
    return False, "no such device here"


def build(target, out_dir):
    from dsport.core.build import KernelBuild

    return [KernelBuild("offline_builder", "act_quant_kernel", ("act_quant",), target, "built", artifact=f"{out_dir}/k.bin")]

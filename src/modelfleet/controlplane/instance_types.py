"""What a SageMaker ``InstanceType`` means here: the memory, disk and CPUs of one instance.

SageMaker rents a machine per instance; modelfleet runs an instance as a process (``local``)
or a Ray actor (``ray``), with a byte budget for models in memory (``memory_limit``) and on disk
(``disk_limit``). A production variant's ``InstanceType`` picks those budgets from this table:
``memory_limit`` is the type's memory less 1 GiB for the serving process itself, ``disk_limit``
the variant's ``VolumeSizeInGB`` or else 30 GiB, and ``cpus`` what a Ray actor reserves. The
vCPU and memory figures are AWS's for each type (GPUs are not modelled). A server's settings
may add types or change any of them (``instance_types`` in the config file).
"""

from __future__ import annotations

from pydantic import BaseModel, ByteSize, ConfigDict, Field, PositiveFloat

GIB = 1024**3
DEFAULT_DISK_GIB = 30
PROCESS_HEADROOM_GIB = 1


class InstanceSize(BaseModel):
    """One instance type's budgets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_limit: ByteSize = Field(gt=0)
    """Bytes of models in memory (the type's memory less 1 GiB)."""
    disk_limit: ByteSize = Field(default=ByteSize(DEFAULT_DISK_GIB * GIB), gt=0)
    """Bytes of artifacts on disk, unless the variant gives ``VolumeSizeInGB``."""
    cpus: PositiveFloat = 1.0
    """vCPUs: what the instance's Ray actor reserves (``--backend ray``)."""


# GiB of memory per vCPU in each family, and the vCPUs of its sizes
_FAMILIES = {
    "m5": 4,
    "m5d": 4,
    "m6i": 4,
    "m7i": 4,
    "c5": 2,
    "c5d": 2,
    "c6i": 2,
    "c7i": 2,
    "r5": 8,
    "r5d": 8,
    "r6i": 8,
    "r7i": 8,
    "g4dn": 4,
    "g5": 4,
}
_SIZES = {
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
    "8xlarge": 32,
    "9xlarge": 36,
    "12xlarge": 48,
    "16xlarge": 64,
    "18xlarge": 72,
    "24xlarge": 96,
    "32xlarge": 128,
    "48xlarge": 192,
}
# (vCPUs, GiB) of the burstable types, which follow no ratio
_T2 = {"medium": (2, 4), "large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32)}


def _size(cpus: int, memory_gib: int) -> InstanceSize:
    return InstanceSize(
        memory_limit=ByteSize((memory_gib - PROCESS_HEADROOM_GIB) * GIB), cpus=float(cpus)
    )


def default_instance_types() -> dict[str, InstanceSize]:
    """The built-in table (those types SageMaker offers that exist in each family)."""
    from modelfleet.controlplane.shapes import service_model

    try:
        offered = set(service_model("sagemaker").shape_for("ProductionVariantInstanceType").enum)
    except ImportError:  # without botocore, every combination
        offered = set()
    table = {f"ml.t2.{size}": _size(cpus, gib) for size, (cpus, gib) in _T2.items()}
    for family, ratio in _FAMILIES.items():
        for size, cpus in _SIZES.items():
            name = f"ml.{family}.{size}"
            if not offered or name in offered:
                table[name] = _size(cpus, cpus * ratio)
    return table

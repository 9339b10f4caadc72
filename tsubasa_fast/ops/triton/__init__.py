"""The "triton" backend (placeholder until the kernels land)."""
NAME = "triton"


def is_available(device):
    return False, "the Triton kernels are not implemented yet"

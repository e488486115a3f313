"""Peer frameworks, each used only if installed: name -> callable for a Case.

cnorm itself never imports any of them. Each peer gets the same data in its own
preferred layout (the conversion is not timed) and the same thread count.
"""
import importlib.util

PEERS = ("torch", "onnxruntime", "tensorflow", "openvino")


def available():
    have = [name for name in PEERS if importlib.util.find_spec(name) is not None]
    return have, [name for name in PEERS if name not in have]


def set_threads(n_threads):
    """Fix the intra-op thread count of every installed peer that has a global one."""
    have, _ = available()
    if "torch" in have:
        import torch
        torch.set_num_threads(n_threads)


def function(name, case, n_threads):
    """A zero-argument callable running `case` in peer `name`, or None if unsupported."""
    builder = _BUILDERS.get(name)
    return None if builder is None else builder(case, n_threads)


_BUILDERS = {}

"""Turn the LRN and batch-norm layers of a small trained torch model into cnorm layers.

    python examples/torch_to_cnorm.py

Trains a tiny convolutional model for a few steps on random data (so its running
statistics are not the initial ones), switches it to eval(), records the input and
output of every LocalResponseNorm and BatchNorm2d with forward hooks, converts
each of those modules with ``from_torch`` and checks that the cnorm layer gives
the module's output on the module's input. Exits non-zero if one does not.
Needs torch (``pip install 'cnorm[torch]'``); cnorm itself does not import it.
"""
import sys

import numpy as np
import torch

import cnorm

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3, padding=1),
    torch.nn.LocalResponseNorm(5, alpha=1e-3, beta=0.75, k=2.0),
    torch.nn.BatchNorm2d(16),
    torch.nn.ReLU(),
    torch.nn.Conv2d(16, 32, 3, padding=1),
    torch.nn.BatchNorm2d(32, momentum=None),
    torch.nn.ReLU(),
    torch.nn.LocalResponseNorm(4),
)

# A few training steps: the batch norms' running statistics move away from 0 and 1.
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
model.train()
for _ in range(5):
    x = torch.randn(8, 3, 12, 12) * 2 + 1
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()

# Record each normalization module's input and output in eval mode.
seen = {}
hooks = [module.register_forward_hook(
    lambda module, inputs, output, name=name: seen.__setitem__(
        name, (inputs[0].detach().numpy(), output.detach().numpy())))
    for name, module in model.named_modules()
    if isinstance(module, (torch.nn.LocalResponseNorm, torch.nn.BatchNorm2d))]
with torch.no_grad():
    model(torch.randn(2, 3, 12, 12))
for hook in hooks:
    hook.remove()

failures = 0
for name, (x, expected) in seen.items():
    module = model.get_submodule(name)
    if isinstance(module, torch.nn.BatchNorm2d):
        layer = cnorm.BatchNorm.from_torch(module)         # axis=1: the module's NCHW
    else:
        layer = cnorm.LocalResponseNorm.from_torch(module)
    y = layer(x)
    error = float(np.abs(y - expected).max())
    ok = np.allclose(y, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
    failures += not ok
    print(f"model[{name}] {module}: max |cnorm - torch| = {error:.3g}"
          f"{'' if ok else '  MISMATCH'}")
print("all layers agree" if not failures else f"{failures} layers disagree")
sys.exit(1 if failures else 0)

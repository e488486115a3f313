"""Whole PyTorch networks: torch's normalization layers against cnorm's (cnorm.torch.convert).

    python benchmarks/torch_models.py [--threads 2] [--batch 1 16] [--repeat 7]
                                      [--networks alexnet googlenet resnet50]
                                      [--json results.json] [--quick]

Three networks defined here (no torchvision), random weights, float32, NCHW
(``--channels-last``: model and input in torch.channels_last):

* alexnet: torchvision's AlexNet layout with the original 2012 LRN layers
  (LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2) after the ReLU of conv1
  and conv2, before their max-pools), 224x224 input;
* googlenet: the stem of Caffe's BVLC GoogLeNet with its two LRN layers
  (conv1 7x7/2, relu, maxpool, LRN, conv2 1x1 and 3x3, relu, LRN, maxpool),
  inception 3a, 3b, maxpool, 4a, then adaptive average pooling and fc;
* resnet50: torchvision's ResNet-50 (Bottleneck [3, 4, 6, 3], its module
  names), its BatchNorm2d running statistics set by a few training-mode passes
  at batch 8 under no_grad (cumulative average) before anything is measured.

Each network is run as built (torch's layers) and as ``cnorm.torch.convert``
makes it (every BatchNorm*d and LocalResponseNorm a cnorm module, same state),
in eval mode under torch.inference_mode, with ``--threads`` intra-op threads.
Latency: for each batch size in ``--batch`` the repeats alternate the two
models (one call each per repeat, after warm-up calls), so noise on the shared
machine hits both alike; the table gives the median ms and its spread (min-max
over the repeats), images/s of the median, and the ratio cnorm/torch of the
medians. Norm share: in a separate pass (so the hooks do not distort the
latency figures), forward pre/post hooks on the normalization modules time
them with perf_counter; the share is their time over the whole forward's, the
median over a few calls. Max rel diff: the largest absolute difference between
the two models' outputs over the largest absolute output, beside torch's own
float32 error (its output against a float64 copy of the model). Other load:
the share of the machine's CPU time that other processes used, or the host
stole, while the case was timed (Linux /proc/stat): a gauge of how far to
trust the row (slowdowns from outside a virtual machine may not show in it).

For resnet50 it also times training steps (model.train(), forward, cross
entropy, backward, SGD step) at batch 16, interleaved the same way, and
compares the loss and the gradient of conv1.weight of one step from the
same state, each also against a float64 run of torch's model.

It prints the CPU model (lscpu's 'Model name'), the thread count and the
versions, then one markdown table for inference and one for training; with
``--json PATH`` it also writes every figure (the raw times included) as JSON.
``--quick`` is a smoke run (batch 1, 3 repeats, a training batch of 2) of
well under 30 s; the default run takes 2-5 minutes on 2 cores. ``--against
torch`` compares torch's model with a deep copy of itself instead (an A/A run:
its ratios show the measurement's noise), which needs no cnorm.torch.
"""
import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

import cnorm

NETWORKS = ("alexnet", "googlenet", "resnet50")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm)


# --- networks ------------------------------------------------------------------------

def lrn():
    """The LRN of AlexNet (2012) and of Caffe's GoogLeNet: size 5, alpha 1e-4, beta 0.75."""
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)


class AlexNet(nn.Module):
    """torchvision's AlexNet layout with LRN after the ReLUs of conv1 and conv2."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            lrn(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            lrn(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def conv_relu(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """Convolution with bias followed by an in-place ReLU, as Caffe's GoogLeNet has them."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
                         nn.ReLU(inplace=True))


class Inception(nn.Module):
    """A GoogLeNet inception module: 1x1, 1x1-3x3, 1x1-5x5 and pool-1x1 branches."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = conv_relu(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv_relu(in_channels, ch3x3red, 1),
                                     conv_relu(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(conv_relu(in_channels, ch5x5red, 1),
                                     conv_relu(ch5x5red, ch5x5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                     conv_relu(in_channels, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)],
                         1)


class GoogLeNet(nn.Module):
    """The first stages of Caffe's BVLC GoogLeNet, LRN where it has it, up to inception 4a."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            conv_relu(3, 64, 7, stride=2, padding=3),
            nn.MaxPool2d(3, stride=2, ceil_mode=True), lrn(),
            conv_relu(64, 64, 1),
            conv_relu(64, 192, 3, padding=1), lrn(),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
        )
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.inception3b(self.inception3a(self.stem(x)))
        x = self.avgpool(self.inception4a(self.maxpool3(x)))
        return self.fc(torch.flatten(x, 1))


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, in_channels, width, stride=1, downsample=None):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision's ResNet-50: Bottleneck blocks [3, 4, 6, 3], the same module names."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.in_channels = 64
        self.layer1 = self._layer(64, 3, 1)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, width, blocks, stride):
        out_channels = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))
        layers = [Bottleneck(self.in_channels, width, stride, downsample)]
        self.in_channels = out_channels
        layers += [Bottleneck(out_channels, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def calibrate(model, passes=3, batch=8):
    """Set the BatchNorm running statistics by training-mode passes on random images.

    The statistics are the cumulative average over the passes (momentum None
    while calibrating), so the eval-mode network sees its data's statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.momentum = None
    model.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(batch, 3, 224, 224, generator=generator))
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    return model.eval()


def build(name):
    """Network `name` with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    model = {"alexnet": AlexNet, "googlenet": GoogLeNet, "resnet50": ResNet50}[name]()
    return calibrate(model) if name == "resnet50" else model.eval()


def norm_modules(model):
    """The normalization modules of `model` (torch's classes and their subclasses)."""
    return [m for m in model.modules() if isinstance(m, NORM_TYPES)]


def converted(model, against):
    """The model compared with torch's: cnorm.torch.convert(model), or a plain deep copy."""
    if against == "torch":
        return copy.deepcopy(model)
    import cnorm.torch

    result = cnorm.torch.convert(model)
    left = [type(m).__name__ for m in norm_modules(result)
            if not type(m).__module__.startswith("cnorm")]
    if left:
        raise RuntimeError(f"cnorm.torch.convert left torch's modules: {left}")
    return result


# --- measurement ---------------------------------------------------------------------

def interleaved(functions, repeat, warmup):
    """Seconds per call of each function, {name: [one per repeat]}, the functions
    alternating, in reverse order every other repeat (A B B A ...): a fixed
    order made the second of two copies of torch's own ResNet-50 1.011x
    slower at batch 1 (an A/A run), a bias as large as the effects measured."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    seconds = {name: [] for name in functions}
    items = list(functions.items())
    for index in range(repeat):
        for name, function in (items if index % 2 == 0 else items[::-1]):
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def _cpu_ticks():
    """(busy, stolen, total) jiffies of all CPUs from /proc/stat, or None where it is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal, sum(fields)


def load_gauge():
    """Start gauging the machine; the returned function gives the share of its CPU time
    that other processes used or the host stole since (None without /proc/stat)."""
    ticks, own = _cpu_ticks(), sum(os.times()[:2])
    hertz = os.sysconf("SC_CLK_TCK")

    def share():
        now = _cpu_ticks()
        if ticks is None or now is None or now[2] == ticks[2]:
            return None
        busy, stolen, total = (b - a for a, b in zip(ticks, now))
        others = busy / hertz - (sum(os.times()[:2]) - own)
        return max(0.0, others * hertz + stolen) / total
    return share


def norm_share(model, x, calls):
    """Median, over `calls` forward calls, of the share of time spent in normalization modules.

    Forward pre/post hooks time each normalization module with perf_counter;
    the hooks are removed afterwards.
    """
    spent = [0.0]
    started = {}

    def before(module, inputs):
        started[module] = time.perf_counter()

    def after(module, inputs, output):
        spent[0] += time.perf_counter() - started.pop(module)

    handles = []
    for module in norm_modules(model):
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    shares = []
    try:
        with torch.inference_mode():
            model(x)
            for _ in range(calls):
                spent[0] = 0.0
                start = time.perf_counter()
                model(x)
                shares.append(spent[0] / (time.perf_counter() - start))
    finally:
        for handle in handles:
            handle.remove()
    return statistics.median(shares)


def relative_difference(got, expected):
    """max |got - expected| / max |expected|, in float64."""
    got, expected = got.detach().double(), expected.detach().double()
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def summary(seconds):
    """Median, min and max of a list of seconds, in milliseconds."""
    ms = [s * 1e3 for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "ms": ms}


def images(batch, generator, settings):
    """A batch of random 224x224 RGB images in the run's memory format."""
    x = torch.randn(batch, 3, 224, 224, generator=generator)
    return x.contiguous(memory_format=settings.memory_format)


def inference(name, model, other, batch, settings):
    """Latency, throughput, norm shares and output difference of one network at one batch."""
    x = images(batch, torch.Generator().manual_seed(2), settings)

    def run(network):
        def call():
            with torch.inference_mode():
                return network(x)
        return call

    with torch.inference_mode():
        expected, exact = model(x), copy.deepcopy(model).double()(x.double())
        difference = relative_difference(other(x), expected)
        float32_error = relative_difference(expected, exact)
    gauge = load_gauge()
    seconds = interleaved({"torch": run(model), "cnorm": run(other)}, settings.repeat,
                          settings.warmup)
    other_load = gauge()
    row = {"network": name, "batch": batch, "torch": summary(seconds["torch"]),
           "cnorm": summary(seconds["cnorm"]), "max_rel_diff": difference,
           "torch_float32_vs_float64": float32_error, "other_load": other_load,
           "norm_share_torch": norm_share(model, x, settings.share_calls),
           "norm_share_cnorm": norm_share(other, x, settings.share_calls)}
    for side in ("torch", "cnorm"):
        row[side]["images_per_s"] = batch / row[side]["median_ms"] * 1e3
    row["ratio"] = row["cnorm"]["median_ms"] / row["torch"]["median_ms"]
    return row


def training_step(model, optimizer, x, target):
    """One SGD step: forward, cross entropy, backward, step; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _stepper(model, optimizer, x, target):
    """A zero-argument function running one training step of `model`."""
    return lambda: training_step(model, optimizer, x, target)


def first_gradient(model, x, target, dtype=torch.float32):
    """Loss and conv1.weight gradient of one training-mode forward and backward of a copy."""
    model = copy.deepcopy(model).to(dtype).train()
    loss = nn.functional.cross_entropy(model(x.to(dtype)), target)
    loss.backward()
    return loss.detach(), model.conv1.weight.grad


def training(name, model, against, batch, settings):
    """Time per training step of torch's model and the converted one; loss and grad compared.

    The gradients of the first step are compared with each other and with a
    float64 run of torch's model: float32's own error is the yardstick.
    """
    generator = torch.Generator().manual_seed(3)
    x = images(batch, generator, settings)
    target = torch.randint(0, 1000, (batch,), generator=generator)
    models = {"torch": copy.deepcopy(model).train()}
    models["cnorm"] = converted(models["torch"], against).train()
    (loss, grad), (other_loss, other_grad), (exact_loss, exact_grad) = (
        first_gradient(models["torch"], x, target), first_gradient(models["cnorm"], x, target),
        first_gradient(models["torch"], x, target, torch.float64))
    row = {"network": name, "batch": batch, "loss": float(loss),
           "loss_rel_diff": relative_difference(other_loss, loss),
           "grad_rel_diff": relative_difference(other_grad, grad),
           "torch_grad_float32_vs_float64": relative_difference(grad, exact_grad),
           "cnorm_grad_float32_vs_float64": relative_difference(other_grad, exact_grad),
           "torch_loss_float32_vs_float64": relative_difference(loss, exact_loss)}
    optimizers = {side: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
                  for side, m in models.items()}
    steps = {side: _stepper(m, optimizers[side], x, target) for side, m in models.items()}
    gauge = load_gauge()
    seconds = interleaved(steps, settings.train_repeat, settings.train_warmup)
    row.update(torch=summary(seconds["torch"]), cnorm=summary(seconds["cnorm"]),
               other_load=gauge())
    row["ratio"] = row["cnorm"]["median_ms"] / row["torch"]["median_ms"]
    return row


# --- report --------------------------------------------------------------------------

def cpu_model():
    """lscpu's 'Model name', or the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _timing(entry):
    return f"{entry['median_ms']:.2f} ({entry['min_ms']:.2f}-{entry['max_ms']:.2f})"


def _share(value):
    return "n/a" if value is None else f"{value:.0%}"


def inference_table(rows):
    """Markdown table of the inference rows."""
    lines = ["| network | batch | torch ms (min-max) | cnorm ms (min-max) | torch img/s "
             "| cnorm img/s | ratio cnorm/torch | norm share torch | norm share cnorm "
             "| max rel diff | torch f32 vs f64 | other load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['batch']} | {_timing(r['torch'])} "
                     f"| {_timing(r['cnorm'])} | {r['torch']['images_per_s']:.1f} "
                     f"| {r['cnorm']['images_per_s']:.1f} | {r['ratio']:.3f} "
                     f"| {r['norm_share_torch']:.1%} | {r['norm_share_cnorm']:.1%} "
                     f"| {r['max_rel_diff']:.1e} | {r['torch_float32_vs_float64']:.1e} "
                     f"| {_share(r['other_load'])} |")
    return "\n".join(lines)


def training_table(rows):
    """Markdown table of the training rows."""
    lines = ["| network | batch | torch ms/step (min-max) | cnorm ms/step (min-max) "
             "| ratio cnorm/torch | loss rel diff | conv1.weight grad rel diff "
             "| grad f32 vs f64: torch | grad f32 vs f64: cnorm | other load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['network']} (train) | {r['batch']} | {_timing(r['torch'])} "
                     f"| {_timing(r['cnorm'])} | {r['ratio']:.3f} | {r['loss_rel_diff']:.1e} "
                     f"| {r['grad_rel_diff']:.1e} | {r['torch_grad_float32_vs_float64']:.1e} "
                     f"| {r['cnorm_grad_float32_vs_float64']:.1e} | {_share(r['other_load'])} |")
    return "\n".join(lines)


def header(args):
    """The run's facts: CPU, threads, versions, what is compared."""
    config = cnorm.show_config(mode="dicts")
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(),
            "cnorm_max_threads": config["max_threads"], "isa_level": config["isa_level"],
            "torch": torch.__version__, "cnorm": cnorm.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "layout": "channels_last" if args.channels_last else "NCHW",
            "against": args.against, "date": datetime.date.today().isoformat(),
            "repeat": args.repeat, "warmup": args.warmup}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--repeat", type=int, default=7, help="timed calls per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per model")
    parser.add_argument("--share-calls", type=int, default=3,
                        help="hooked calls per model for the norm share")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-repeat", type=int, default=5)
    parser.add_argument("--train-warmup", type=int, default=3)
    parser.add_argument("--no-training", action="store_true", help="skip the training steps")
    parser.add_argument("--against", choices=("cnorm", "torch"), default="cnorm",
                        help="torch: a deep copy of torch's model (A/A run)")
    parser.add_argument("--channels-last", action="store_true",
                        help="models and inputs in torch.channels_last (default NCHW)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run of about 30 s")
    args = parser.parse_args()
    args.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.quick:
        args.batch, args.repeat, args.warmup, args.share_calls = [1], 3, 1, 1
        args.train_batch, args.train_repeat, args.train_warmup = 2, 1, 1
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    facts = header(args)
    print(f"CPU: {facts['cpu']}; {facts['threads']} threads (cnorm's OpenMP max "
          f"{facts['cnorm_max_threads']}, {facts['isa_level']}); torch {facts['torch']}, "
          f"cnorm {facts['cnorm']}, numpy {facts['numpy']}, Python {facts['python']}; "
          f"float32, {facts['layout']}, eval under inference_mode; {args.repeat} interleaved "
          f"repeats after {args.warmup} warm-up calls; {facts['date']}")
    rows, train_rows = [], []
    for name in args.networks:
        model = build(name).to(memory_format=args.memory_format)
        # Both sides are copies of the built model, made one after the other: an
        # A/A run against the built model itself had its copy 1.027x slower at
        # batch 1 (ResNet-50), where the weights' memory was all that differed.
        ours = copy.deepcopy(model).eval()
        other = converted(model, args.against).eval()
        for batch in args.batch:
            rows.append(inference(name, ours, other, batch, args))
        if name == "resnet50" and not args.no_training:
            train_rows.append(training(name, model, args.against, args.train_batch, args))
    print()
    print(inference_table(rows))
    if train_rows:
        print()
        print(training_table(train_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**facts, "inference": rows, "training": train_rows}, f, indent=1)
    # The outputs must agree within float32 rounding: no further from torch's
    # than a few times torch's own float32 error against float64.
    wrong = [f"{row['network']} batch {row['batch']}: {row['max_rel_diff']:.1e}"
             for row in rows
             if not row["max_rel_diff"] <= 4 * max(row["torch_float32_vs_float64"], 1e-7)]
    if wrong:
        print("outputs differ beyond float32 rounding: " + "; ".join(wrong))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

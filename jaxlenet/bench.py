"""``jaxlenet bench``: steady-state training and inference speed of the LeNets, compile time, peak
memory, and, when PyTorch is installed, the same model and recipe in PyTorch, timed interleaved
with JAX in the same process (epoch for epoch), so both see the same machine state.

Every timed epoch runs over the real Fashion-MNIST when it is installed (random images
otherwise, said in the report) and ends with a host sync (``block_until_ready`` / ``float``)."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import jax
import numpy as np

from jaxlenet import data, devices, models, specs, train

# Plain SGD at the tutorial's rates; a network of your own trains at lr 0.1 with its spec's init.
RECIPES = {"lenet": dict(lr=0.1, init="uniform"), "lenet5": dict(lr=0.9, init="xavier")}


def _recipe(network) -> dict:
    if isinstance(network, str) and network in RECIPES:
        return RECIPES[network]
    return dict(lr=0.1, init=specs.resolve(network)["init"])


def training_flops(model: models.Model) -> int:
    """FLOPs of one training example: forward, weight gradients, and input gradients of every
    layer with weights but the first (whose input needs none); a multiply-add counts 2. Only
    the multiply-adds of layers with weights count: the rest is a few percent."""
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    forward = first = 0
    for row in models.summary(model):
        if row.name not in params:
            continue
        weight = params[row.name]["weight"].shape
        per_output = int(np.prod(weight[1:]))  # inputs feeding one output value
        flops = 2 * per_output * int(np.prod(row.shape[1:]))
        first = first or flops
        forward += flops
    return 3 * forward - first


def _load_dataset(limit):
    try:
        (train_x, train_y), (test_x, test_y) = data.load_fashion_mnist(allow_download=False)
        source = "Fashion-MNIST"
    except data.DataError:
        rng = np.random.default_rng(0)
        train_x = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
        train_y = rng.integers(0, 10, 60000).astype(np.int32)
        test_x, test_y = train_x[:10000], train_y[:10000]
        source = "random images (Fashion-MNIST not installed)"
    if limit:
        train_x, train_y = train_x[:limit], train_y[:limit]
    return (train_x, train_y), (test_x, test_y), source


class _JaxRun:
    """One model's compiled epoch and evaluation, ready to be timed."""

    def __init__(self, name, dataset, batch_size, device, impl):
        (train_x, train_y), (test_x, test_y) = dataset
        self.config = train.Config(model=name, batch_size=batch_size, momentum=0.0,
                                   weight_decay=0.0, schedule="constant", impl=impl,
                                   **_recipe(name))
        self.model, opt, params, opt_state, self.key = train.initial_state(
            self.config, platform=device.platform)
        put = lambda a: jax.device_put(a, device)
        self.train_x, self.train_y = put(train_x), put(train_y)
        self.test_x, self.test_y = put(test_x), put(test_y)
        self.state = (put(params), put(opt_state))
        mesh = devices.make_mesh(device.platform, 1)
        epoch = train.make_train_epoch(self.model, opt, batch_size, mesh=mesh)
        evaluate = train.make_evaluate(self.model, mesh=mesh)
        began = time.perf_counter()
        self.epoch = epoch.lower(*self.state, self.train_x, self.train_y, self.key).compile()
        self.evaluate = evaluate.lower(self.state[0], self.test_x, self.test_y).compile()
        self.compile_seconds = time.perf_counter() - began
        self.count = 0

    def train_epoch(self) -> float:
        self.count += 1
        began = time.perf_counter()
        params, opt_state, loss, _ = self.epoch(*self.state, self.train_x, self.train_y,
                                                jax.random.fold_in(self.key, self.count))
        loss = float(loss)  # the host sync
        self.state = (params, opt_state)
        return time.perf_counter() - began

    def infer(self) -> float:
        began = time.perf_counter()
        jax.block_until_ready(self.evaluate(self.state[0], self.test_x, self.test_y))
        return time.perf_counter() - began


class _TorchRun:
    """The same network (built from its spec), recipe and batches in PyTorch (CPU)."""

    def __init__(self, name, dataset, batch_size):
        import torch

        self.torch = torch
        (train_x, train_y), (test_x, test_y) = dataset
        torch.manual_seed(0)
        self.net = torch_network(specs.resolve(name))
        self.opt = torch.optim.SGD(self.net.parameters(), lr=_recipe(name)["lr"])
        self.loss = torch.nn.CrossEntropyLoss()
        to_float = lambda x: torch.from_numpy(data.to_float_nchw(x))
        self.train_x, self.train_y = to_float(train_x), torch.from_numpy(train_y.astype(np.int64))
        self.test_x = to_float(test_x)
        self.batch_size = batch_size

    def train_epoch(self) -> float:
        torch = self.torch
        began = time.perf_counter()
        self.net.train()
        order = torch.randperm(len(self.train_x))
        total = 0.0
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            self.opt.zero_grad()
            loss = self.loss(self.net(self.train_x[index]), self.train_y[index])
            loss.backward()
            self.opt.step()
            total += loss.item()  # as a tutorial loop does
        return time.perf_counter() - began

    def infer(self) -> float:
        torch = self.torch
        began = time.perf_counter()
        self.net.eval()
        with torch.no_grad():
            for start in range(0, len(self.test_x), 1000):
                self.net(self.test_x[start:start + 1000]).argmax(1)
        return time.perf_counter() - began


def torch_network(spec: dict):
    """The validated ``spec`` as a PyTorch ``nn.Sequential`` (PyTorch's default init): the same
    layers, shapes and arithmetic."""
    from torch import nn

    activations = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                   "softrelu": nn.Softplus, "softsign": nn.Softsign}
    shape, layers = tuple(spec["input"]), []
    for layer in spec["layers"]:
        kind, function = layer["kind"], layer.get("activation")
        if kind == "conv":
            layers.append(nn.Conv2d(shape[0], layer["channels"], layer["kernel"],
                                    stride=layer["stride"], padding=layer["padding"],
                                    dilation=layer["dilation"], groups=layer["groups"]))
        elif kind == "pool":
            options = dict(stride=layer["stride"] or layer["window"], padding=layer["padding"])
            if layer["pool"] == "max":
                layers.append(nn.MaxPool2d(layer["window"], **options))
            elif layer["pool"] == "avg":
                layers.append(nn.AvgPool2d(layer["window"], **options))
            else:  # a sum pool is an average pool over the window times its area
                window = layer["window"]
                area = window[0] * window[1] if isinstance(window, list) else window * window
                layers += [nn.AvgPool2d(window, **options), _Scale(area)]
        elif kind == "dense":
            if len(shape) > 1:
                layers.append(nn.Flatten())
            layers.append(nn.Linear(int(np.prod(shape)), layer["units"]))
        elif kind == "flatten":
            layers.append(nn.Flatten())
        else:
            function = layer["function"]
        if function is not None:
            layers.append(activations[function]())
        shape = specs.output_shape(layer, shape)
    return nn.Sequential(*layers)


def _Scale(factor: float):
    from torch import nn

    class Scale(nn.Module):
        def forward(self, x):
            return x * factor

    return Scale()


def torch_epochs(model="lenet", *, epochs: int = 2, batch_size: int = 256) -> list[float]:
    """Seconds of each of ``epochs`` PyTorch training epochs (after a warm-up) of ``model`` on
    the training set: the yardstick for a whole ``jaxlenet train`` measured on the same machine.
    Raises ImportError without PyTorch."""
    import torch  # noqa: F401

    train_set, test_set, _ = _load_dataset(None)
    run = _TorchRun(model, (train_set, test_set), batch_size)
    run.train_epoch()
    return [run.train_epoch() for _ in range(epochs)]


def _seconds(t: float) -> float:
    """``t`` to 4 significant digits: milliseconds would round away 2% of a 25 ms epoch."""
    return float(f"{t:.4g}")


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run(models: tuple = ("lenet", "lenet5"), *, epochs: int = 2, batch_size: int = 256,
        limit: int | None = None, torch: bool = True, device: str = "auto", impl: str = "auto",
        log=print) -> dict:
    """Times ``epochs`` training epochs per model and framework after one warm-up epoch each,
    interleaved (JAX, PyTorch, JAX, ...), and inference over the 10,000 test images. Returns a
    JSON-able report; ``log`` (if given) gets human-readable lines as results arrive. A model is
    a built-in network's name or a spec (``jaxlenet.specs``)."""
    say = log or (lambda _: None)
    target = devices.select_device(device)
    train_set, test_set, source = _load_dataset(limit)
    report = {"device": f"{target.platform} ({target.device_kind})", "jax": jax.__version__,
              "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "data": source, "train_examples": int(len(train_set[0])),
              "batch_size": batch_size, "epochs_timed": epochs, "models": {}}
    say(f"device {report['device']}, jax {jax.__version__}, {os.cpu_count()} cores; "
        f"{report['train_examples']:,} training images ({source}), batch {batch_size}")

    networks = {specs.resolve(model)["name"]: model for model in models}
    runs = {}
    for name, network in networks.items():
        runs[name] = _JaxRun(network, (train_set, test_set), batch_size, target, impl)
        runs[name].train_epoch()  # warm-up
        runs[name].infer()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["peak_rss_mb_jax"] = round(peak_rss_mb, 1)

    use_torch = torch and target.platform == "cpu" and _torch_available()
    if torch and target.platform == "cpu" and not use_torch:
        say("PyTorch is not installed: no comparison (pip install torch==2.13.0 for the CPU "
            "build this project compares with)")
        report["torch"] = None
    torch_runs = {}
    if use_torch:
        import torch as torch_module
        report["torch"] = torch_module.__version__
        report["torch_threads"] = torch_module.get_num_threads()
        for name, network in networks.items():
            torch_runs[name] = _TorchRun(network, (train_set, test_set), batch_size)
            torch_runs[name].train_epoch()  # warm-up
            torch_runs[name].infer()

    for name in networks:
        jax_run = runs[name]
        jax_times, torch_times = [], []
        for _ in range(epochs):
            jax_times.append(jax_run.train_epoch())
            if name in torch_runs:
                torch_times.append(torch_runs[name].train_epoch())
        jax_infer = min(jax_run.infer() for _ in range(3))
        n_train, n_test = report["train_examples"], len(test_set[0])
        seconds = statistics.median(jax_times)
        flops = training_flops(jax_run.model) * n_train
        entry = {"impl": jax_run.model.impl, "train_s_per_epoch": _seconds(seconds),
                 "train_images_per_s": round(n_train / seconds),
                 "train_gflops_per_s": round(flops / seconds / 1e9, 1),
                 "train_tflop_per_epoch": round(flops / 1e12, 4),
                 "compile_s": round(jax_run.compile_seconds, 2),
                 "infer_images_per_s": round(n_test / jax_infer),
                 "epoch_times_s": [_seconds(t) for t in jax_times]}
        line = (f"{name:7s} jax ({jax_run.model.impl}) train {seconds:6.2f} s/epoch "
                f"({entry['train_images_per_s']:,} img/s, {entry['train_gflops_per_s']} GFLOP/s), "
                f"compile {entry['compile_s']} s, "
                f"inference {entry['infer_images_per_s']:,} img/s")
        say(line)
        if name in torch_runs:
            torch_seconds = statistics.median(torch_times)
            torch_infer = min(torch_runs[name].infer() for _ in range(3))
            entry["torch_train_s_per_epoch"] = _seconds(torch_seconds)
            entry["torch_infer_images_per_s"] = round(n_test / torch_infer)
            entry["torch_epoch_times_s"] = [_seconds(t) for t in torch_times]
            entry["ratio_jax_to_torch"] = round(seconds / torch_seconds, 3)
            say(f"{name:7s} torch train {torch_seconds:6.2f} s/epoch "
                f"({round(n_train / torch_seconds):,} img/s), inference "
                f"{entry['torch_infer_images_per_s']:,} img/s; jax/torch time ratio "
                f"{entry['ratio_jax_to_torch']:.2f}")
        report["models"][name] = entry
    say(f"peak RSS (JAX, before PyTorch was loaded): {report['peak_rss_mb_jax']:.0f} MB")
    return report



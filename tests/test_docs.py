"""Every documented example runs, and prints what the documentation shows: the Python blocks of
README.md and docs/*.md, and the documented LeNet-5 run of docs/from-mxnet.md."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from jaxlenet import data

ROOT = pathlib.Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REAL_DATA = pytest.mark.skipif(data.locate() is None, reason="Fashion-MNIST is not installed "
                               "(apt-get install dataset-fashion-mnist); .ci/run installs it")


def python_blocks():
    return [pytest.param(block, id=f"{path.name}-{number}") for path in DOCS
            for number, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(),
                                                      re.S))]


def run_as_a_user(code: str, cwd, *, images: int | None = None) -> str:
    """Runs ``code`` in a fresh Python as a user's would (one CPU device, no float64), in
    ``cwd``; with ``images``, ``data.load_fashion_mnist`` gives only that many training images.
    Returns what it printed; fails the test if it raises."""
    if images is not None:
        code = ("from jaxlenet import data\n_load = data.load_fashion_mnist\n"
                "def _cut(*args, **kwargs):\n    (x, y), test = _load(*args, **kwargs)\n"
                f"    return (x[:{images}], y[:{images}]), test\n"
                "data.load_fashion_mnist = _cut\n") + code
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "XLA_FLAGS": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@REAL_DATA
@pytest.mark.parametrize("block", python_blocks())
def test_python_blocks_run(block, tmp_path):
    """As written, in an empty directory; MXNet's import replaced by jaxlenet's where the text
    says that is the only change. The dataset is cut to 2,048 training images to keep it short."""
    run_as_a_user(block.replace("from mxnet import nd", "from jaxlenet import nd"), tmp_path,
                  images=2048)


@REAL_DATA
def test_the_documented_lenet5_run(tmp_path):
    """docs/from-mxnet.md shows the first and last lines of the tutorial's LeNet-5 recipe."""
    text = (ROOT / "docs" / "from-mxnet.md").read_text()
    shown = re.findall(r"`(epoch \d+  loss [\d.]+  train acc [\d.]+  test acc [\d.]+)  time", text)
    assert len(shown) == 2
    call = re.search(r"`(train\.fit\(train\.Config\(\*\*train\.RECIPES\[\"tutorial-lenet5\"\]\), "
                     r"data\.load_fashion_mnist\(\)\))`", text).group(1)
    printed = run_as_a_user(f"from jaxlenet import data, train\n{call}\n", tmp_path)
    for line in shown:
        assert line in printed, (line, printed)


def porting_table():
    """(setup code, [(MXNet cell, jaxlenet line), ...]) of docs/from-mxnet.md's porting table."""
    text = (ROOT / "docs" / "from-mxnet.md").read_text()
    section = text.split("## Porting table", 1)[1].split("\n## ", 1)[0]
    setup = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 2 and cells[1].startswith("`") and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], re.match(r"`([^`]*)`", cells[1]).group(1)))
    return setup, rows


def test_every_row_of_the_porting_table_runs():
    setup, rows = porting_table()
    mxnet_apis = " ".join(mxnet for mxnet, _ in rows)
    for api in ("autograd.record", "attach_grad", "backward", ".grad", "__setitem__",
                "asscalar", "asnumpy", "as_in_context", ".context", "mx.cpu()", "mx.gpu()",
                "mx.random.seed", "gluon.nn.Block", "nn.Sequential", "nn.Conv2D",
                "nn.MaxPool2D", "nn.Dense", "gluon.Trainer", "SoftmaxCrossEntropyLoss",
                "mx.init.Xavier", "split_and_load"):
        assert api in mxnet_apis, api
    namespace = {}
    exec(compile(setup, "<porting table setup>", "exec"), namespace)
    for mxnet, line in rows:
        exec(compile(line, f"<porting row: {mxnet}>", "exec"), namespace)
    assert namespace["grads"]["conv0"]["weight"].shape == (20, 1, 5, 5)
    assert namespace["dx"].shape == (4, 1, 28, 28)
    assert float(namespace["X"][:, 4].sum()) == 0 and float(namespace["X"].sum()) == 42
    assert isinstance(namespace["value"], float)
    assert namespace["per_sample"].shape == (4,)
    assert namespace["xs"].shape == (4, 1, 28, 28)

"""Every documented example runs, and prints what the documentation shows: the Python blocks of
README.md and docs/*.md, and the documented LeNet-5 run of docs/from-mxnet.md."""

import contextlib
import io
import pathlib
import re

import pytest

from jaxlenet import data, train

ROOT = pathlib.Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REAL_DATA = pytest.mark.skipif(data.locate() is None, reason="Fashion-MNIST is not installed "
                               "(apt-get install dataset-fashion-mnist); .ci/run installs it")


def python_blocks():
    for path in DOCS:
        for number, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(),
                                                  re.S)):
            yield pytest.param(block, id=f"{path.name}-{number}")


@REAL_DATA
@pytest.mark.parametrize("block", python_blocks())
def test_python_blocks_run(block, tmp_path, monkeypatch):
    """As written, in an empty directory; MXNet's import replaced by jaxlenet's where the text
    says that is the only change. The dataset is cut to 2,048 training images to keep it short."""
    monkeypatch.chdir(tmp_path)
    whole = data.load_fashion_mnist()
    (train_x, train_y), test = whole
    monkeypatch.setattr(data, "load_fashion_mnist",
                        lambda *a, **k: ((train_x[:2048], train_y[:2048]), test))
    code = block.replace("from mxnet import nd", "from jaxlenet import nd")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<documented example>", "exec"), {})


@REAL_DATA
def test_the_documented_lenet5_run(capsys):
    """docs/from-mxnet.md shows the first and last lines of the tutorial's LeNet-5 recipe."""
    text = (ROOT / "docs" / "from-mxnet.md").read_text()
    shown = re.findall(r"`(epoch \d+  loss [\d.]+  train acc [\d.]+  test acc [\d.]+)  time", text)
    assert len(shown) == 2
    call = re.search(r"`(train\.fit\(train\.Config\(\*\*train\.RECIPES\[\"tutorial-lenet5\"\]\), "
                     r"data\.load_fashion_mnist\(\)\))`", text).group(1)
    eval(call, {"train": train, "data": data})
    printed = capsys.readouterr().out
    for line in shown:
        assert line in printed, (line, printed)

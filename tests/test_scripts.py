"""Every tutorial program in scripts/ runs and prints the tutorial's numbers."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from jaxlenet import data

SCRIPTS = pathlib.Path(__file__).parent.parent / "scripts"
REAL_DATA = pytest.mark.skipif(data.locate() is None, reason="Fashion-MNIST is not installed "
                               "(apt-get install dataset-fashion-mnist); .ci/run installs it")


def run(name, *args):
    result = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def numbers(text):
    return [float(v) for v in re.findall(r"-?\d+\.?\d*(?:e[-+]?\d+)?", text)]


def section(out, title):
    """The printout under ``title:``, up to the next title (arrays may hold blank lines)."""
    return re.split(r"\n\n(?=[A-Za-z0-9])", out.split(title + ":\n", 1)[1], maxsplit=1)[0]


def test_conv_basics_prints_the_tutorials_numbers():
    out = run("tutorial_conv_basics.py")
    assert numbers(section(out, "output")) == [20, 26, 38, 44]
    assert numbers(section(out, "output with stride (2, 2) and pad (1, 1)")) == [1, 9, 22, 44]
    assert numbers(section(out, "two input channels: output")) == [269, 297, 353, 381]
    assert numbers(section(out, "two output channels: output")) == [269, 297, 353, 381,
                                                                   686, 778, 962, 1054]
    assert "1x1 kernel over 3 channels equals a matrix product: True" in out
    assert numbers(section(out, "max pool 3x3, stride 3, on arange(16)")) == [10]
    assert numbers(section(out, "max pool 3x3, pad 1, stride 2")) == [5, 7, 13, 15]
    assert numbers(section(out, "max pooling (kernel 2x2; MXNet's stride defaults to 1)")) == [
        4, 5, 7, 8, 13, 14, 16, 17]
    assert numbers(section(out, "avg pooling")) == [2, 3, 5, 6, 11, 12, 14, 15]


def test_corr2d_learns_the_edge_kernel():
    out = run("tutorial_corr2d.py")
    assert numbers(section(out, "corr2d(X, K)")) == [19, 25, 37, 43]
    losses = [float(v) for v in re.findall(r"batch \d+, loss ([\d.]+)", out)]
    assert len(losses) == 5 and losses == sorted(losses, reverse=True) and losses[-1] < 0.05
    kernel = numbers(out.split("learned kernel:")[1].split("\n")[0])
    assert kernel[0] == pytest.approx(1, abs=0.05) and kernel[1] == pytest.approx(-1, abs=0.05)
    # The other tutorial: its X, K and Y exactly; its ten losses (12.500 ... 0.295 from MXNet's
    # random init) and its kernel [[0.863 -0.894]] within what another init changes.
    stripe = out.split("learned kernel:")[1].split("\n", 1)[1]
    assert numbers(stripe.split("NO.1")[0]) == [1, 1, 1, 1, 0, 1, 1, 1] * 6 + [1, -1] + [
        0, 0, 0, 1, -1, 0, 0] * 6
    losses = [float(v) for v in re.findall(r"NO\.\d+, loss:([\d.]+)", out)]
    assert len(losses) == 10 and losses == sorted(losses, reverse=True)
    assert 10 < losses[0] < 14 and 0.15 < losses[-1] < 0.45
    kernel = numbers(stripe.split("NO.10")[1].split("\n", 1)[1])
    assert kernel == pytest.approx([0.863, -0.894], abs=0.06)


def test_padding_strides_and_the_gluon_listing_print_the_tutorials_numbers():
    out = run("tutorial_conv_padding_strides.py")
    outputs = [numbers(part.split("input :")[0].split("data :")[0])
               for part in out.split("output :")[1:]]
    assert outputs == [
        [19, 25, 37, 43],
        [268, 296, 352, 380],
        [45, 48, 51, 54, 57, 60, 63, 66, 69, 126, 138, 150, 162, 174, 186, 198, 210, 222],
        [0, 3, 8, 4, 9, 19, 25, 10, 21, 37, 43, 16, 6, 7, 8, 0],
        [24, 36, 72, 84]]
    assert numbers(out.split("max pool :")[1].split("avg pool :")[0]) == [4, 5, 7, 8]
    assert numbers(out.split("avg pool :")[1].split("Sequential")[0]) == [2, 3, 5, 6]
    fixtures = json.loads((SCRIPTS.parent / "tests/fixtures/mxnet/cases.json").read_text())
    assert fixtures["listings"]["lenet"] in out  # MXNet 1.9.1's print(net), character for character


@REAL_DATA
def test_lenet_from_scratch():
    out = run("tutorial_lenet_scratch.py", "--epochs", "1", "--limit", "2560")
    assert "1st conv block: (256, 20, 12, 12)" in out
    assert "2nd conv block: (256, 1250)" in out
    assert "1st dense: (256, 128)" in out
    assert "2nd dense: (256, 10)" in out
    line = re.search(r"Epoch 0\. Loss: ([\d.]+), Train acc ([\d.]+), Test acc ([\d.]+)", out)
    assert line and 0 < float(line.group(1)) < 2.31  # below ln(10): it learned something


@REAL_DATA
def test_gluon_lenet_and_lenet5():
    out = run("tutorial_lenet_gluon.py", "--epochs", "2", "--limit", "15360")
    assert "pool1 output shape:\t (256, 50, 5, 5)" in out
    accs = [float(v) for v in re.findall(r"test acc ([\d.]+)", out)]
    losses = [float(v) for v in re.findall(r"  loss ([\d.]+)", out)]
    assert len(accs) == 2 and accs[1] > 0.6 and losses[1] < losses[0]
    out = run("tutorial_lenet5.py", "--epochs", "1", "--limit", "512")
    for line in ("conv0 output shape:\t (1, 6, 24, 24)", "pool0 output shape:\t (1, 6, 12, 12)",
                 "conv1 output shape:\t (1, 16, 8, 8)", "pool1 output shape:\t (1, 16, 4, 4)",
                 "dense0 output shape:\t (1, 120)", "dense1 output shape:\t (1, 84)",
                 "dense2 output shape:\t (1, 10)"):
        assert line in out
    assert re.search(r"epoch 1  loss [\d.]+  train acc [\d.]+  test acc [\d.]+  time", out)


@REAL_DATA
def test_the_exercises_script_prints_every_variant(tmp_path):
    out = run("exercises.py", "--limit", "512", "--epochs", "1", "--save-specs", str(tmp_path))
    rows = {row["variant"]: row for row in map(json.loads, re.findall(r"^\{.*\}$", out, re.M))}
    assert set(rows) == {"filters-6-16", "lenet", "filters-40-100", "kernels-3", "kernels-5",
                         "kernels-7", "avg-pool", "mlp"}
    # Parameters by hand: conv (k*k*in + 1) * out, dense (in + 1) * out.
    assert rows["lenet"]["parameters"] == 26 * 20 + (180 + 1) * 50 + 1251 * 128 + 129 * 10
    assert rows["filters-6-16"]["parameters"] == 26 * 6 + (54 + 1) * 16 + 401 * 128 + 129 * 10
    assert rows["kernels-7"]["parameters"] == 50 * 20 + (980 + 1) * 50 + 201 * 128 + 129 * 10
    assert rows["mlp"]["parameters"] == 785 * 256 + 257 * 10
    assert rows["lenet"]["mflops"] > 6 * rows["mlp"]["mflops"]
    for row in rows.values():
        assert 0 <= row["test_acc"] <= 1 and row["seconds"] > 0
    assert "| variant | parameters | MFLOPs/image | s/epoch | test acc after 1 epochs |" in out
    assert "cpu vs gpu: skipped" in out or "(gpu, reference" in out
    assert json.loads((tmp_path / "avg-pool.json").read_text())["layers"][1]["pool"] == "avg"

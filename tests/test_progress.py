"""ProgressBar: verbose 0 silent, 1 a bar with ETA, 2 a line per epoch, "auto" by terminal."""
import re

from callbacks.progress_bar import resolve_verbose
from conftest import make_program


async def test_verbose_levels(toy, capsys):
    x, y = toy
    await make_program().fit(x, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""

    await make_program().fit(x, y, epochs=2, verbose=2, validation_split=0.25)
    out = capsys.readouterr().out
    assert out.count("Epoch ") == 2
    lines = [line for line in out.splitlines() if line.startswith("6/6")]
    assert len(lines) == 2 and all("val_loss" in line and "loss:" in line for line in lines)

    await make_program().fit(x, y, epochs=1, verbose=1)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    last = [line for line in out.split("\r") if line.startswith("8/8")][-1]
    assert re.search(r"/step - ", last) and re.search(r"loss: \d", last) and re.search(r"accuracy: \d", last)


def test_auto_is_2_off_a_terminal(capsys):
    assert resolve_verbose("auto") == 2  # pytest captures stdout: not a terminal
    assert resolve_verbose(1) == 1

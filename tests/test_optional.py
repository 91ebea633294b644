import sys
import types

import pytest

from attnref._optional import INSTALL_COMMANDS, import_optional


def test_an_installed_package_is_imported(monkeypatch):
    stand_in = types.ModuleType("onnx")
    monkeypatch.setitem(sys.modules, "onnx", stand_in)
    assert import_optional("onnx") is stand_in


@pytest.mark.parametrize("name", sorted(INSTALL_COMMANDS))
def test_a_missing_package_names_what_needs_it_and_its_install_command(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    with pytest.raises(ImportError) as raised:
        import_optional(name, "the widget")
    assert str(raised.value) == (f"the widget needs {name}, which is not installed: "
                                 f"{INSTALL_COMMANDS[name]}")


def test_torch_is_installed_from_the_cpu_index():
    assert INSTALL_COMMANDS["torch"].endswith("--index-url https://download.pytorch.org/whl/cpu")


def test_an_unknown_package_is_refused_by_name():
    with pytest.raises(ValueError, match=r"name must be one of \[.*'torch'.*\], got 'tensorflow'"):
        import_optional("tensorflow")

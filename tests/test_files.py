"""attnref._files: untrusted files become ValueErrors that name the file."""
import json
import os

import pytest

from attnref import _files


def test_load_json_reads_an_object(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 8, "act": "gelu"}))
    assert _files.load_json(path) == {"hidden_size": 8, "act": "gelu"}


@pytest.mark.parametrize("text, problem", [
    ("[" * 5000 + "]" * 5000, "nested more than 64"),
    ("[" * 65 + "]" * 65, "nested 65 levels deep"),
    ('{"a": 1, "a": 2}', "'a' appears twice"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": -Infinity}', "-Infinity is not a JSON number"),
    ('{"a": ', "not valid JSON"),
    ('{"eps": 1e999}', "the number 1e999 overflows a float64"),
    ('{"n": ' + "9" * 5000 + "}", "not valid JSON .*digits"),
    ("[]", "expected an object at the top level, got an array"),
    ("null", "expected an object at the top level, got null"),
])
def test_malformed_json_is_one_value_error_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as error:
        _files.load_json(path)
    assert str(path) in str(error.value)


def test_nesting_at_the_limit_is_accepted():
    text = "[" * _files.MAX_JSON_DEPTH + "]" * _files.MAX_JSON_DEPTH
    assert _files.parse_json(text, source="x", expect=list) is not None


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = json.dumps({"a": "[" * 1000})
    assert _files.parse_json(text, source="x") == {"a": "[" * 1000}


def test_invalid_utf8_is_refused():
    with pytest.raises(ValueError, match="header: not valid UTF-8"):
        _files.parse_json(b'{"a": "\xff"}', source="header")


def test_read_limited_refuses_large_missing_and_special_files(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 101)
    with pytest.raises(ValueError, match="101 bytes, more than the 100 accepted"):
        _files.read_limited(path, 100, what="manifest")
    assert _files.read_limited(path, 101) == b" " * 101
    with pytest.raises(ValueError, match="cannot read the manifest"):
        _files.read_limited(tmp_path / "missing.json", 100, what="manifest")
    with pytest.raises(ValueError, match="not a regular file"):
        _files.read_limited(tmp_path, 100)
    if hasattr(os, "mkfifo"):  # opening a FIFO must not wait for a writer
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(ValueError, match="not a regular file"):
            _files.read_limited(tmp_path / "fifo", 100)
    with pytest.raises(ValueError, match="cannot read the file"):
        _files.read_limited("nul\0byte", 100)
    if os.path.exists("/dev/zero"):
        with pytest.raises(ValueError, match="not a regular file"):
            _files.read_limited("/dev/zero", 100)


@pytest.mark.parametrize("value, kinds, message", [
    (["gelu"], str, "must be a string, got \\['gelu'\\]"),
    (True, int, "must be an integer, got True"),
    ("12", (int, float), "must be an integer or a number"),
])
def test_field_names_the_file_the_field_and_what_was_expected(value, kinds, message):
    with pytest.raises(ValueError, match=message) as error:
        _files.field({"x": value}, "x", kinds, source="config.json")
    assert "config.json: the field 'x'" in str(error.value)


def test_field_defaults_checks_and_accepts_ints_as_floats():
    assert _files.field({}, "eps", float, source="c", default=1e-12) == 1e-12
    assert _files.field({"eps": None}, "eps", float, source="c", default=1.0) == 1.0
    assert _files.field({"eps": 2}, "eps", float, source="c") == 2
    with pytest.raises(ValueError, match="the field 'eps' is missing"):
        _files.field({}, "eps", float, source="c")
    with pytest.raises(ValueError, match="must be a positive number, got -1"):
        _files.field({"eps": -1}, "eps", float, source="c", check=lambda x: x > 0,
                     expected="a positive number")


def test_open_regular_returns_the_open_file_and_its_size(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc")
    stream, size = _files.open_regular(path, what="checkpoint")
    with stream:
        assert size == 3 and stream.read() == b"abc"
    with pytest.raises(ValueError, match="the checkpoint is not a regular file"):
        _files.open_regular(tmp_path, what="checkpoint")

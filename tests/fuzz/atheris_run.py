"""Coverage-guided fuzzing of one file reader with atheris (libFuzzer), for
long runs on demand (see docs/fuzzing.md)::

    python -m tests.fuzz.atheris_run READER [libFuzzer options] [directories]

``READER`` is one of :data:`READERS`. Every input libFuzzer makes is written
to a file and checked by that reader's harness (``check`` in
``test_fuzz_<READER>.py``: the same property as the Hypothesis tests, a
valid result or a ValueError naming the file). Give a scratch directory
first (libFuzzer adds the inputs it finds interesting to the first directory)
and ``tests/fuzz/corpus/<READER>`` after it as seeds. A failing input is
saved as ``crash-<sha1>`` (``-artifact_prefix=`` chooses where).
"""
import importlib
import sys

READERS = ("safetensors", "config", "tokenizer_config", "vocab", "gguf")
FILE_NAMES = {"safetensors": "atheris.safetensors", "config": "config.json",
              "tokenizer_config": "tokenizer_config.json", "vocab": "vocab.txt",
              "gguf": "atheris.gguf"}


def main(argv):
    if len(argv) < 2 or argv[1] not in READERS:
        print(f"usage: python -m tests.fuzz.atheris_run {{{','.join(READERS)}}} "
              "[libFuzzer options] [directories]", file=sys.stderr)
        return 2
    try:
        import atheris
    except ModuleNotFoundError:
        print("atheris_run: atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    reader = argv[1]
    with atheris.instrument_imports(include=["attnref"]):
        harness = importlib.import_module(f"tests.fuzz.test_fuzz_{reader}")
    directory = harness.scratch("atheris")
    directory.mkdir(exist_ok=True)
    path = directory / FILE_NAMES[reader]

    def one_input(data):
        path.write_bytes(data)
        harness.check(path)

    atheris.Setup([argv[0]] + argv[2:], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

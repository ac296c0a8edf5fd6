"""Run a script as if TensorFlow were not installed: `python tests/without_tensorflow.py SCRIPT ARGS...`.

A finder first on `sys.meta_path` refuses `tensorflow`, so `import tensorflow`
raises ModuleNotFoundError and `"tensorflow" in sys.modules` stays False, as
on a machine without it (Keras checks the latter).
"""

import importlib.abc
import os
import runpy
import sys


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, Blocker())
script, sys.argv = sys.argv[1], sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` sets it
runpy.run_path(script, run_name="__main__")
assert "tensorflow" not in sys.modules
print("ran without tensorflow", file=sys.stderr)

"""Crafted weights files for imgq/models/torch_weights.py (the worker's model loading, before any job is taken).

A file may use only the allowed globals and still lie about its tensors: a size or stride reaching past
the storage made numpy's as_strided read foreign memory and segfault the worker. Each crafted file must
now fail with a clear UnsafeWeights. Every case runs in a subprocess, so a crash fails the test (with the
signal in the message) instead of killing pytest.
"""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

# Writes a legacy torch file without torch: stand-in modules named torch / torch._utils make pickle
# record the same globals a real torch.save does; the file is then read back by torch_weights itself.
CRAFT_AND_LOAD = textwrap.dedent('''
    import collections, json, pickle, sys, types
    import numpy as np
    from imgq.models import torch_weights

    torch = types.ModuleType("torch"); utils = types.ModuleType("torch._utils")
    torch._utils = utils
    sys.modules.update({"torch": torch, "torch._utils": utils})

    class FloatStorage: pass
    FloatStorage.__module__ = "torch"; torch.FloatStorage = FloatStorage

    def _rebuild_tensor_v2(*args): pass
    _rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class Storage:
        def __init__(self, key, numel): self.key, self.numel = key, numel

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        def __reduce__(self): return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    case = json.loads(sys.argv[1])
    numel, file_numel = case["numel"], case.get("file_numel", case["numel"])
    storage = Storage("0", numel)
    state = collections.OrderedDict(w=Tensor(storage, case["offset"], case["size"], case["stride"]))
    path = sys.argv[2]
    with open(path, "wb") as f:
        for header in (torch_weights.MAGIC_NUMBER, torch_weights.PROTOCOL_VERSION,
                       {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(state)
        pickle.dump(case.get("keys", ["0"]), f, protocol=2)
        f.write(file_numel.to_bytes(8, "little"))
        f.write(np.arange(case.get("stored", file_numel), dtype=np.float32).tobytes())
    try:
        loaded = torch_weights.load_state_dict(path)
    except torch_weights.UnsafeWeights as exc:
        print(json.dumps({"refused": str(exc)}))
    else:
        print(json.dumps({"loaded": loaded["w"].tolist()}))
''')


def load(tmp_path, **case):
    """Craft one file in a subprocess and load it there; returns its JSON verdict."""
    done = subprocess.run([sys.executable, "-c", CRAFT_AND_LOAD, json.dumps(case), str(tmp_path / "w.pth")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (f"loader died with code {done.returncode} "
                                  f"(negative: killed by that signal):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_honest_file_loads(tmp_path):
    # 2x3 over 6 floats, and its transpose by strides: both inside the storage.
    assert load(tmp_path, numel=6, offset=0, size=[2, 3], stride=[3, 1]) == {"loaded": [[0, 1, 2], [3, 4, 5]]}
    assert load(tmp_path, numel=6, offset=0, size=[3, 2], stride=[1, 3]) == {"loaded": [[0, 3], [1, 4], [2, 5]]}
    assert load(tmp_path, numel=6, offset=5, size=[], stride=[]) == {"loaded": 5.0}
    assert load(tmp_path, numel=6, offset=6, size=[0, 4], stride=[4, 1]) == {"loaded": []}


CRAFTED = {
    # name: (case, words the refusal must contain)
    "size past the storage": (dict(numel=4, offset=0, size=[1_000_000, 1_000_000], stride=[1_000_000, 1]),
                              "past the end"),
    "stride past the storage": (dict(numel=4, offset=0, size=[4], stride=[1 << 40]), "past the end"),
    "offset past the storage": (dict(numel=4, offset=1 << 40, size=[1], stride=[1]), "past the end"),
    "scalar past the storage": (dict(numel=4, offset=4, size=[], stride=[]), "past the end"),
    # A stride of 0 keeps every read inside the storage, yet the copy would hold 4e9 floats (16 GB).
    "stride-0 tensor larger than its storage": (dict(numel=4, offset=0, size=[65536, 65536], stride=[0, 0]),
                                                "more than its storage holds"),
    "negative stride": (dict(numel=4, offset=3, size=[4], stride=[-1]), "non-negative"),
    "negative size": (dict(numel=4, offset=0, size=[-4], stride=[1]), "non-negative"),
    "negative offset": (dict(numel=4, offset=-1, size=[], stride=[]), "non-negative"),
    "float stride": (dict(numel=4, offset=0, size=[2], stride=[1.5]), "non-negative integers"),
    "more strides than sizes": (dict(numel=4, offset=0, size=[2], stride=[1, 1]), "strides"),
    "absurd number of dims": (dict(numel=4, offset=0, size=[1] * 5000, stride=[1] * 5000), "5000 sizes"),
    "storage shorter than it says": (dict(numel=1 << 40, offset=0, size=[1], stride=[1], stored=4),
                                     "more than the file has left"),
    "storage bytes cut short": (dict(numel=8, offset=0, size=[8], stride=[1], stored=5), "more than the file"),
    "count disagrees with the pickle": (dict(numel=8, file_numel=4, offset=0, size=[4], stride=[1]), "the pickle said"),
    "storage never written": (dict(numel=4, offset=0, size=[4], stride=[1], keys=[]), "not in the file"),
    "unknown storage key": (dict(numel=4, offset=0, size=[4], stride=[1], keys=["nope"]), "not used by any tensor"),
    "key list is not a list": (dict(numel=4, offset=0, size=[4], stride=[1], keys={"0": 1}), "key list"),
}


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_file_is_refused_clearly(tmp_path, name):
    case, words = CRAFTED[name]
    verdict = load(tmp_path, **case)
    assert "refused" in verdict, verdict
    assert words in verdict["refused"], verdict["refused"]

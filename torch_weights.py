"""Read a PyTorch state dict (legacy, non-zip torch.save format) into numpy arrays, without torch.

Used once per weights file, when a worker first loads efficientnet_lite0 (upload → job → Redis → worker →
*model* → result): efficientnet_lite0.py converts the arrays to Keras and caches them.

A .pth file is a pickle, and unpickling runs whatever callables the file names. So the unpickler here
knows only the handful of globals a plain tensor state dict needs and refuses any other by name: a
tampered weights file fails with UnsafeWeights instead of running code.

Legacy layout (torch.save(..., _use_new_zipfile_serialization=False)), one after the other:
  pickle: magic number · pickle: protocol version · pickle: sys info (endianness, sizes)
  pickle: the state dict, tensors referring to storages by persistent id
  pickle: the list of storage keys, in the order their bytes follow
  per storage: 8-byte little-endian element count, then the raw elements
"""
import collections
import pickle

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# Storage class → element type. The persistent ids name these classes; nothing else of torch is needed.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeWeights(pickle.UnpicklingError):
    """The file asks for something a tensor state dict never needs (or is not a legacy torch file)."""


class _Storage:
    """A storage named in the main pickle; its bytes come later in the file."""

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.array = dtype, numel, None


class _TensorRef:
    """A tensor whose storage bytes have not been read yet (see _rebuild_tensor_v2)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self):
        flat = self.storage.array
        if not self.size:
            return flat[self.offset].copy()
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, [s * itemsize for s in self.stride])
        return np.array(view)  # a copy: tensors may share (and outlive) one storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, STORAGE_DTYPES[name]


# (module, name) → the stand-in the unpickler hands out. Everything else is refused.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for torch state dicts: allowed globals only; storages come back as placeholders."""

    def __init__(self, file):
        super().__init__(file)
        self.storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeWeights(f"refusing to load global {module}.{name}: a torch state dict needs only "
                                f"{', '.join(sorted(m + '.' + n for m, n in _ALLOWED))}") from None

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, element count, view metadata)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeWeights(f"unexpected persistent id {pid!r:.100}")
        _, storage_type, key, _location, numel = pid[:5]
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


def _load_one(file):
    return RestrictedUnpickler(file).load()


def _materialise(value):
    if isinstance(value, _TensorRef):
        return value.materialise()
    if isinstance(value, dict):
        for key in value:
            value[key] = _materialise(value[key])
    elif isinstance(value, list):
        value[:] = [_materialise(v) for v in value]
    elif isinstance(value, tuple):
        return tuple(_materialise(v) for v in value)
    return value


def load_state_dict(path):
    """Return the state dict saved at `path` as an OrderedDict of name → numpy array.

    Raises UnsafeWeights if the file names any global outside the allowed few, or is not a legacy torch file.
    """
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise UnsafeWeights(f"{path} is a zip-format torch file; only the legacy format is supported "
                                f"(re-save with torch.save(..., _use_new_zipfile_serialization=False))")
        f.seek(0)
        if _load_one(f) != MAGIC_NUMBER:
            raise UnsafeWeights(f"{path} is not a legacy torch file (wrong magic number)")
        if _load_one(f) != PROTOCOL_VERSION:
            raise UnsafeWeights(f"{path}: unsupported torch protocol version")
        sys_info = _load_one(f)
        if not sys_info.get("little_endian", True):
            raise UnsafeWeights(f"{path} was saved on a big-endian machine; not supported")
        unpickler = RestrictedUnpickler(f)
        state = unpickler.load()
        keys = _load_one(f)
        for key in keys:
            storage = unpickler.storages[key]
            count = int.from_bytes(f.read(8), "little")
            if count != storage.numel:
                raise UnsafeWeights(f"{path}: storage {key} holds {count} elements, the pickle said {storage.numel}")
            raw = f.read(count * np.dtype(storage.dtype).itemsize)
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=count)
    return _materialise(state)

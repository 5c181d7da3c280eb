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
from __future__ import annotations

import collections
import math
import os
import pickle
from collections.abc import Sequence
from typing import IO, Any, cast

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# Storage class → element type. The persistent ids name these classes; nothing else of torch is needed.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


# More dimensions than any real weight tensor has; a crafted file with thousands would only cost time.
MAX_DIMS = 16


class UnsafeWeights(pickle.UnpicklingError):
    """The file asks for something a tensor state dict never needs, is not a legacy torch file, or is
    inconsistent (a tensor outside its storage, a storage shorter than it says)."""


class _Storage:
    """A storage named in the main pickle; its bytes come later in the file."""

    array: np.ndarray | None  # None until its bytes are read

    def __init__(self, dtype: type[np.generic], numel: int) -> None:
        self.dtype, self.numel, self.array = dtype, numel, None


class _TensorRef:
    """A tensor whose storage bytes have not been read yet (see _rebuild_tensor_v2)."""

    def __init__(self, storage: _Storage, offset: int, size: Sequence[int], stride: Sequence[int]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def check(self) -> None:
        """Refuse a tensor that would reach outside its storage. as_strided trusts its arguments: a size or
        stride past the storage's end reads (and may crash on) memory that is not the file's."""
        if self.storage.array is None:
            raise UnsafeWeights("a tensor refers to a storage whose bytes are not in the file")
        numel = self.storage.array.size
        if not (len(self.size) <= MAX_DIMS and len(self.stride) == len(self.size)):
            raise UnsafeWeights(f"tensor with {len(self.size)} sizes and {len(self.stride)} strides")
        values = (self.offset,) + self.size + self.stride
        if not all(type(v) is int and v >= 0 for v in values):
            raise UnsafeWeights(f"tensor offset, sizes and strides must be non-negative integers: "
                                f"{self.offset!r}, {self.size!r}, {self.stride!r}")
        if 0 in self.size:  # an empty tensor reads nothing
            extent = 0
        else:  # one past the last element it reads
            extent = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset + extent > numel or (extent == 0 and self.offset > numel):
            raise UnsafeWeights(f"tensor of size {self.size}, stride {self.stride} at offset {self.offset} reaches "
                                f"past the end of its storage ({numel} elements)")
        # The copy materialise() makes has prod(size) elements: with a stride of 0 a tiny storage could stand
        # for gigabytes. A weight tensor never has more elements than its storage holds.
        count = math.prod(self.size)
        if count > numel:
            raise UnsafeWeights(f"tensor of size {self.size} has {count} elements, more than its storage holds "
                                f"({numel})")

    def materialise(self) -> np.ndarray:
        self.check()
        flat = cast(np.ndarray, self.storage.array)  # check() refused None
        if not self.size:
            return flat[self.offset].copy()
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, [s * itemsize for s in self.stride])
        return np.array(view)  # a copy: tensors may share (and outlive) one storage


def _rebuild_tensor_v2(storage: _Storage, storage_offset: int, size: Sequence[int], stride: Sequence[int],
                       requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None) -> _TensorRef:
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None) -> Any:
    return data


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


# (module, name) → the stand-in the unpickler hands out. Everything else is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for torch state dicts: allowed globals only; storages come back as placeholders."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[Any, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeWeights(f"refusing to load global {module}.{name}: a torch state dict needs only "
                                f"{', '.join(sorted(m + '.' + n for m, n in _ALLOWED))}") from None

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage type, key, location, element count, view metadata)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeWeights(f"unexpected persistent id {pid!r:.100}")
        _, storage_type, key, _location, numel = pid[:5]
        if type(numel) is not int or numel < 0:
            raise UnsafeWeights(f"storage {key!r:.50} has element count {numel!r:.50}")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


def _load_one(file: IO[bytes]) -> Any:
    return RestrictedUnpickler(file).load()


def _materialise(value: Any) -> Any:
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


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Return the state dict saved at `path` as an OrderedDict of name → numpy array.

    Raises UnsafeWeights if the file names any global outside the allowed few, is not a legacy torch file,
    or is corrupt or inconsistent in any way (whatever the pickle machinery would raise on its own).
    """
    try:
        return _load_state_dict(path)
    except UnsafeWeights:
        raise
    except Exception as exc:  # truncated pickles, wrong types where tuples belong, ...
        raise UnsafeWeights(f"{path} is not a valid torch state dict: {type(exc).__name__}: {exc!s:.200}") from exc


def _load_state_dict(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
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
        if not isinstance(keys, list):
            raise UnsafeWeights(f"{path}: the storage key list is a {type(keys).__name__}")
        for key in keys:
            storage = unpickler.storages.get(key) if isinstance(key, (str, int)) else None
            if storage is None:
                raise UnsafeWeights(f"{path}: storage key {key!r:.50} is not used by any tensor")
            count = int.from_bytes(f.read(8), "little")
            if count != storage.numel:
                raise UnsafeWeights(f"{path}: storage {key} holds {count} elements, the pickle said {storage.numel}")
            size = count * np.dtype(storage.dtype).itemsize
            if size > file_size - f.tell():  # checked first: read() would try to allocate it all
                raise UnsafeWeights(f"{path}: storage {key} claims {size} bytes, more than the file has left")
            raw = f.read(size)
            if len(raw) != size:
                raise UnsafeWeights(f"{path}: storage {key} is cut short ({len(raw)} of {size} bytes)")
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=count)
    return _materialise(state)

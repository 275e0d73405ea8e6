"""PyTorch ``torch.save`` checkpoints, read and written without importing torch.

A ``torch.save`` file is an uncompressed zip archive: ``<archive>/data.pkl`` (a pickle of the
saved object whose tensors refer to storages by key), ``<archive>/data/<key>`` (the raw bytes
of each storage) and a few small records. The pickle is read by an unpickler that knows
only the globals a weights-only load needs (tensor rebuild functions, storage types, dtypes,
``torch.Size``, ``torch.device``, ``OrderedDict``, ``set``, bytes); any other global is
refused, so loading a checkpoint never runs code.

The saved object becomes a tree of JSON nodes in the manifest (``format.root``); tensors in
it are referred to by name. Names are the path of dict keys and list indexes from the root,
joined by ``/`` (``~`` and ``/`` inside a key are written ``~0`` and ``~1``); a state dict's
tensors keep their own keys as names. A tensor that views the same storage as an earlier one
the same way (tied weights) is recorded as an alias and rebuilt sharing that storage. Any
other storage (transposed, sliced, shared by several views) is stored whole and flat, and
its tensor nodes carry their ``view`` (see ``_TreeBuilder``).

``format.archive`` records what a file written by torch.save needs to come back byte for
byte: its archive name, alignment, records in order (small ones with their text) and its
pickle, zlib-compressed. It holds nothing that depends on tensor values (the CRC-32s and
torch's ``serialization_id`` are computed again at checkout), so one tensor changed leaves
it as it was. Checkout writes that layout only while it still describes the manifest's tree
and tensors (the pickle is read again, as at ``git add``, and must give that tree); else,
and for files other tools wrote, git-theta's own layout, which loads to the same object.

Node kinds: ``{"tensor": name}`` (with ``"requires_grad": true`` when set), ``{"parameter":
name, "requires_grad": bool}``, ``{"dict": [[key, value], ...]}``, ``{"odict": [...]}``,
``{"odict": [...], "attrs": [[name, value], ...]}`` (an OrderedDict's attributes, such as a
state dict's ``_metadata``), ``{"list": [...]}`` (a dict key that is a string is written as a plain JSON string), ``{"tuple": [...]}``, ``{"set": [...]}``, ``{"int": n}``, ``{"float":
hex}``, ``{"str": s}``, ``{"bytes": base64}``, ``{"bool": b}``, ``{"none": null}``,
``{"torch.Size": [...]}``, ``{"torch.dtype": name}``, ``{"torch.device": [type, index]}``.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import numpy as np
else:
    from git_theta.lazy import np  # numpy loads at first use (see lazy.py)

from git_theta.errors import (
    ManifestError,
    NotACheckpointError,
    ThetaError,
    UnsafeCheckpointError,
    UnsupportedError,
)
from git_theta.formats.base import DAMAGED_MANIFEST as _DAMAGED
from git_theta.formats.base import Checkpoint, SharedFile, TensorData, read_words
from git_theta.tensors import (
    DTYPES,
    MAX_DIMS,
    DType,
    byte_view,
    from_torch_storage,
    nbytes,
    numel,
)
from git_theta.zipstream import (
    Skeleton,
    Streamed,
    TorchZipStream,
    Writable,
    ZipStream,
    member_data_offset,
)

# torch dtype names that may appear as values (``torch.float16`` in a config dict).
_TORCH_DTYPE_NAMES = frozenset(DTYPES) | {"qint8", "quint8", "qint32", "complex32"}
_ALIGN = 64
_MAX_TORCH_VERSION = 10  # the newest archive version torch.load reads (torch 2.x)
_KNOWN_RECORDS = {
    "data.pkl",
    "byteorder",
    "version",
    ".format_version",
    ".storage_alignment",
    ".data/serialization_id",
    ".data/version",
}


def _record_text_ok(rel: str, text: str) -> bool:
    """Whether a small record's text is one torch.load reads (the serialization id is
    checked apart): the exact layout is recorded, and rebuilt, only with such records."""
    if rel in ("version", ".data/version"):
        number = text.removesuffix("\n")
        return number.isascii() and number.isdigit() and 1 <= int(number) <= _MAX_TORCH_VERSION
    if rel == "byteorder":
        return text == "little"
    if rel in (".format_version", ".storage_alignment"):
        return text.isascii() and text.isdigit() and len(text) <= 6
    return True


def _alignment(records: list[tuple[str, str | None, str | None]]) -> int:
    """The storage alignment a file's records give (its `.storage_alignment`, else torch's
    default of 64)."""
    text = next((t for r, t, _ in records if r == ".storage_alignment"), None)
    return int(text) if text and text.isdigit() else _ALIGN


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: DType | None  # None: an UntypedStorage, typed by the tensor that uses it
    numel: int


@dataclass(eq=False)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool
    dtype: DType
    parameter: bool = False
    param_requires_grad: bool = False


class _Global:
    """A placeholder for an allowed global; calling it builds plain data, never runs code.

    Made afresh for each read and closed to BUILD (pickle's way to set an object's
    attributes): nothing one file's pickle does may change how another file is read.
    """

    __slots__ = ("_build", "name")
    name: str
    _build: Any

    def __init__(self, name: str, build: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_build", build)

    def __call__(self, *args: Any) -> Any:
        return self._build(*args)

    def __setattr__(self, key: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"the pickle changes `{self.name}`, which it may only call")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"the pickle changes `{self.name}`, which it may only call")


class _TorchDtype:
    def __init__(self, name: str) -> None:
        self.name = name


class _TorchSize(tuple):  # type: ignore[type-arg]
    pass


@dataclass(frozen=True)
class _TorchDevice:
    type: str
    index: int | None


def _device(spec: Any, index: Any = None) -> _TorchDevice:
    if not isinstance(spec, str) or not (index is None or isinstance(index, int)):
        raise pickle.UnpicklingError("invalid torch.device arguments")
    if ":" in spec and index is None:
        kind, _, idx = spec.partition(":")
        return _TorchDevice(kind, int(idx))
    return _TorchDevice(spec, index)


def _refuse_view_flags(rest: tuple[Any, ...]) -> None:
    """torch records lazy views (conjugate, negative) as a metadata argument; the stored bytes
    are not the tensor's values, so rebuilding without the flag would silently change it."""
    if rest and rest[0]:
        flags = ", ".join(sorted(map(str, rest[0]))) if isinstance(rest[0], dict) else "metadata"
        raise UnsupportedError(
            f"a tensor is saved as a lazy view ({flags}), which git-theta does not support: "
            "save `t.resolve_conj().resolve_neg()` instead"
        )


def _view(offset: Any, size: Any, stride: Any) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """A tensor's storage offset, shape and strides, checked to be plain non-negative
    integers of one length (they are checked against the storage's bytes later)."""

    def ints(value: Any) -> tuple[int, ...]:
        if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS:
            raise pickle.UnpicklingError(
                f"a tensor's shape or stride is not {MAX_DIMS} or fewer integers"
            )
        if not all(type(v) is int and 0 <= v < 1 << 62 for v in value):
            raise pickle.UnpicklingError(
                "a tensor's shape or stride holds a value that is not a size"
            )
        return tuple(value)

    shape, strides = ints(size), ints(stride)
    if len(shape) != len(strides) or type(offset) is not int or not 0 <= offset < 1 << 62:
        raise pickle.UnpicklingError("a tensor's shape, stride and offset do not fit together")
    return offset, shape, strides


def _rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, *rest: Any
) -> _TensorRef:
    if not isinstance(storage, _Storage) or storage.dtype is None:
        raise pickle.UnpicklingError("tensor without a typed storage")
    _refuse_view_flags(rest)
    return _TensorRef(storage, *_view(offset, size, stride), bool(requires_grad), storage.dtype)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    *rest: Any,
) -> _TensorRef:
    if not isinstance(storage, _Storage) or not isinstance(dtype, _TorchDtype):
        raise pickle.UnpicklingError("invalid _rebuild_tensor_v3 arguments")
    if dtype.name not in DTYPES:
        raise UnsupportedError(f"tensors of dtype torch.{dtype.name} are not supported")
    _refuse_view_flags(rest)
    return _TensorRef(
        storage, *_view(offset, size, stride), bool(requires_grad), DTYPES[dtype.name]
    )


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any = None) -> _TensorRef:
    if not isinstance(data, _TensorRef) or state:
        raise UnsupportedError("a torch.nn.Parameter with extra state is not supported")
    return _TensorRef(
        data.storage,
        data.offset,
        data.shape,
        data.stride,
        data.requires_grad,
        data.dtype,
        True,
        bool(requires_grad),
    )


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError("invalid _codecs.encode arguments")
    return text.encode(encoding)


def _set(items: Any = ()) -> set[Any]:
    return set(items)


def _allowed() -> dict[str, _Global]:
    """The globals a checkpoint's pickle may name, made afresh for one read."""
    return {
        "collections.OrderedDict": _Global("OrderedDict", lambda *args: OrderedDict(*args)),
        "torch._utils._rebuild_tensor_v2": _Global("_rebuild_tensor_v2", _rebuild_tensor),
        "torch._utils._rebuild_tensor_v3": _Global("_rebuild_tensor_v3", _rebuild_tensor_v3),
        "torch._utils._rebuild_parameter": _Global("_rebuild_parameter", _rebuild_parameter),
        "torch._utils._rebuild_parameter_with_state": _Global(
            "_rebuild_parameter", _rebuild_parameter
        ),
        "torch.Size": _Global("Size", lambda dims=(): _TorchSize(dims)),
        "torch.device": _Global("device", _device),
        "_codecs.encode": _Global("encode", _codecs_encode),
        "__builtin__.set": _Global("set", _set),
        "builtins.set": _Global("set", _set),
    }


class _StorageType:
    def __init__(self, dtype: DType | None) -> None:
        self.dtype = dtype


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, display_name: str) -> None:
        super().__init__(io.BytesIO(data))
        self.display_name = display_name
        self.storages: dict[str, _Storage] = {}
        self.allowed = _allowed()  # this read's own: see _Global

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in self.allowed:
            return self.allowed[full]
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            return _TorchDtype(name)
        if module == "torch" and name.endswith("Storage") and from_torch_storage(name):
            return _StorageType(from_torch_storage(name))
        if full == "torch.storage.UntypedStorage":
            return _StorageType(None)
        if module.split(".")[0] == "torch":
            raise UnsupportedError(
                f"{self.display_name}: uses `{full}` (a tensor subclass, quantized, sparse or "
                "scripted object), which git-theta does not support"
            )
        raise UnsafeCheckpointError(self.display_name, full)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, kind, key, _location, count = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str):
            raise pickle.UnpicklingError("invalid storage reference")
        if type(count) is not int or not 0 <= count < 1 << 62:
            raise pickle.UnpicklingError(f"storage {key!r:.40} has an invalid size")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, kind.dtype, count)
        return storage


def _escape(component: str) -> str:
    return component.replace("~", "~0").replace("/", "~1")


# limits on what a checkpoint's pickle may hold (past them: one clear error)
MAX_DEPTH = 100  # containers nested in containers
MAX_VALUES = 1_000_000  # values in all (a container shared N times counts N times)
MAX_INT_BITS = 256  # an integer's size (about 77 decimal digits)
MAX_TEXT = 16 << 20  # bytes of one string or bytes value
MAX_PICKLE = 64 << 20  # bytes of data.pkl (inflated)


@dataclass(frozen=True)
class _Stored:
    """A tensor as the manifest stores it: its storage's key, dtype and stored shape."""

    key: str
    dtype: DType
    shape: tuple[int, ...]


def _standard_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """C-order strides as torch computes them (a size-0 dimension counts as 1)."""
    strides, acc = [], 1
    for dim in reversed(shape):
        strides.append(acc)
        acc *= max(dim, 1)
    return tuple(reversed(strides))


class _TreeBuilder:
    """Turns the unpickled object into JSON nodes and collects its tensors.

    A storage that one plain tensor uses whole (offset 0, C-order strides, every element)
    is stored as that tensor, under the tensor's name; a tensor that views the same storage
    the same way (tied weights) is an alias of it. Any other storage (a transposed or
    sliced tensor, several views of one buffer, a view that repeats elements) is stored
    whole as a 1-D tensor named after its first view, and every tensor node on it carries
    its ``view`` (shape, strides and, when not 0, the offset in elements), so the file's
    storages come back as they were. Storages are classified once every tensor is seen.
    """

    def __init__(self, display_name: str) -> None:
        self.display_name = display_name
        self._values = 0
        self.tensors: dict[str, _Stored] = {}
        self.aliases: dict[str, str] = {}
        self.storage_names: dict[str, str] = {}  # storage key -> stored tensor name
        self._occurrences: list[tuple[dict[str, Any], _TensorRef, list[str]]] = []
        self._seen: dict[int, tuple[dict[str, Any], int, int]] = {}  # id -> node, size, height
        self._deepest = 0

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self.tensors or candidate in self.aliases:
            n += 1
            candidate = f"{name}#{n}"
        return candidate

    def _tensor(self, ref: _TensorRef, path: list[str]) -> dict[str, Any]:
        node: dict[str, Any]
        if ref.parameter:
            node = {"parameter": "", "requires_grad": ref.param_requires_grad}
        else:
            node = {"tensor": ""}
            if ref.requires_grad:
                node["requires_grad"] = True
        self._occurrences.append((node, ref, path))  # named by finish()
        return node

    def finish(self) -> None:
        """Classifies each storage (see the class) and names every tensor node."""
        by_key: dict[str, list[_TensorRef]] = {}
        for _, ref, _ in self._occurrences:
            by_key.setdefault(ref.storage.key, []).append(ref)
        plain: dict[str, bool] = {}
        for key, refs in by_key.items():
            plain[key] = self._classify(key, refs)
        names: dict[int, str] = {}  # id(_TensorRef) -> name, for plain storages
        for node, ref, path in self._occurrences:
            kind = "parameter" if ref.parameter else "tensor"
            key = ref.storage.key
            if plain[key]:
                name = names.get(id(ref))
                if name is None:
                    name = names[id(ref)] = self._unique("/".join(path) if path else "tensor")
                    first = self.storage_names.setdefault(key, name)
                    if first != name:  # the same view of the same storage: tied weights
                        self.aliases[name] = first
                    else:
                        self.tensors[name] = _Stored(key, ref.dtype, ref.shape)
                node[kind] = name
                continue
            name = self.storage_names.get(key)
            if name is None:
                name = self.storage_names[key] = self._unique("/".join(path) if path else "tensor")
                count = _storage_bytes(ref.storage, ref.dtype) // ref.dtype.itemsize
                self.tensors[name] = _Stored(key, ref.dtype, (count,))
            view: dict[str, Any] = {"shape": list(ref.shape), "stride": list(ref.stride)}
            if ref.offset:
                view["offset"] = ref.offset
            node[kind] = name
            node["view"] = view

    def _classify(self, key: str, refs: list[_TensorRef]) -> bool:
        """Whether storage ``key`` is plain (see the class); checks every view fits it."""
        dtypes = sorted({ref.dtype.name for ref in refs})
        if len(dtypes) > 1:
            raise NotACheckpointError(
                self.display_name,
                f"storage {key} is viewed as both {dtypes[0]} and {dtypes[1]}, which "
                "torch.save never writes",
            )
        dtype = refs[0].dtype
        size = _storage_bytes(refs[0].storage, dtype)
        if size % dtype.itemsize:
            raise NotACheckpointError(
                self.display_name,
                f"storage {key} holds {size} bytes, not a whole number of {dtype.name} values",
            )
        for ref in refs:
            if (
                numel(ref.shape)
                and (ref.offset + _span(ref.shape, ref.stride)) * (dtype.itemsize) > size
            ):
                raise NotACheckpointError(
                    self.display_name, f"a tensor on storage {key} points outside it"
                )
        views = {(ref.offset, ref.shape, ref.stride) for ref in refs}
        if len(views) != 1:
            return False
        ((offset, shape, stride),) = views
        count = numel(shape)  # an empty tensor's strides do not matter to its values
        return (
            offset == 0
            and (stride == _standard_strides(shape) or count == 0)
            and count * dtype.itemsize == size
        )

    def _too(self, what: str) -> NotACheckpointError:
        return NotACheckpointError(
            self.display_name,
            f"its pickle {what}: git-theta stores at most {MAX_VALUES} values nested "
            f"{MAX_DEPTH} deep, integers of {MAX_INT_BITS} bits and strings of "
            f"{MAX_TEXT >> 20} MiB",
        )

    def node(self, value: Any, path: list[str], depth: int = 0) -> dict[str, Any]:
        """The JSON node of ``value``. A container the pickle shares (one object referenced
        from several places) is built once: later references reuse its node and count its
        values and depth without walking it again, so a pickle that shares containers to
        claim 2**60 values is refused at once."""
        if not isinstance(value, (dict, list, tuple, set)):
            return self._build(value, path, depth)
        seen = self._seen.get(id(value))
        if seen is not None:
            built, size, height = seen
            self._values += size
            if self._values > MAX_VALUES:
                raise self._too(f"holds more than {MAX_VALUES} values (or shares containers)")
            if depth + height > MAX_DEPTH:
                raise self._too(f"nests containers more than {MAX_DEPTH} deep (or in a cycle)")
            return built
        before, outer = self._values, self._deepest
        self._deepest = depth
        built = self._build(value, path, depth)
        # the unpickled objects stay alive until the tree is built, so ids are not reused
        self._seen[id(value)] = (built, self._values - before, self._deepest - depth)
        self._deepest = max(outer, self._deepest)
        return built

    def _build(self, value: Any, path: list[str], depth: int) -> dict[str, Any]:
        self._deepest = max(self._deepest, depth)
        self._values += 1
        if self._values > MAX_VALUES:
            raise self._too(f"holds more than {MAX_VALUES} values (or shares containers)")
        if depth > MAX_DEPTH:
            raise self._too(f"nests containers more than {MAX_DEPTH} deep (or in a cycle)")
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise self._too(f"holds an integer of {value.bit_length()} bits")
        if isinstance(value, (str, bytes)) and len(value) > MAX_TEXT:
            raise self._too(f"holds a string of {len(value)} characters or bytes")
        deeper = depth + 1
        if isinstance(value, _TensorRef):
            return self._tensor(value, path)
        if value is None:
            return {"none": None}
        if isinstance(value, bool):
            return {"bool": value}
        if isinstance(value, int):
            return {"int": value}
        if isinstance(value, float):
            return {"float": value.hex()}
        if isinstance(value, str):
            return {"str": value}
        if isinstance(value, bytes):
            return {"bytes": base64.b64encode(value).decode("ascii")}
        if isinstance(value, _TorchSize):
            return {"torch.Size": [int(d) for d in value]}
        if isinstance(value, _TorchDtype):
            return {"torch.dtype": value.name}
        if isinstance(value, _TorchDevice):
            return {"torch.device": [value.type, value.index]}
        if isinstance(value, dict):
            kind = "odict" if isinstance(value, OrderedDict) else "dict"
            items = []
            for key, item in value.items():
                if isinstance(key, (str, int)) and not isinstance(key, bool):
                    label = str(key)
                else:
                    label = f"<{json.dumps(self.node(key, [], deeper), sort_keys=True)}>"
                key_node = key if isinstance(key, str) else self.node(key, [], deeper)
                items.append([key_node, self.node(item, [*path, _escape(label)], deeper)])
            attrs = vars(value) if isinstance(value, OrderedDict) else {}
            if attrs:  # e.g. a state dict's `_metadata` (module versions), set by BUILD
                return {
                    kind: items,
                    "attrs": [
                        [k, self.node(v, [*path, _escape("@" + k)], deeper)]
                        for k, v in attrs.items()
                    ],
                }
            return {kind: items}
        if isinstance(value, (list, tuple)):
            kind = "tuple" if isinstance(value, tuple) else "list"
            return {kind: [self.node(v, [*path, str(i)], deeper) for i, v in enumerate(value)]}
        if isinstance(value, set):
            nodes = [self.node(v, [*path, "*"], deeper) for v in value]
            return {"set": sorted(nodes, key=lambda n: json.dumps(n, sort_keys=True))}
        raise UnsupportedError(
            f"{self.display_name}: values of type {type(value).__name__} are not supported"
        )


def _read_small(archive: zipfile.ZipFile, name: str, limit: int, display_name: str) -> bytes:
    """A member that must be small, read only when its recorded size says it is (and never
    inflated past ``limit``)."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise NotACheckpointError(
            display_name,
            f"its `{name}` holds {info.file_size} bytes, more than the {limit} git-theta reads",
        )
    with archive.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise NotACheckpointError(display_name, f"its `{name}` holds more than {limit} bytes")
    return data


def _span(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements of storage from the view's first element to its last (0 for an empty view)."""
    if numel(shape) == 0:
        return 0
    return 1 + sum((d - 1) * s for d, s in zip(shape, stride, strict=True))


def _storage_bytes(storage: _Storage, dtype: DType) -> int:
    """Bytes of a storage as its pickle declares them (a typed storage counts elements)."""
    if storage.dtype is None:
        return storage.numel
    if storage.dtype.name != dtype.name:
        raise pickle.UnpicklingError(
            f"storage {storage.key} of {storage.dtype.name} is viewed as {dtype.name}"
        )
    return storage.numel * dtype.itemsize


class PyTorchFormat:
    """Reads and writes ``torch.save`` zip archives."""

    name = "pytorch"
    writes_buffers = True  # its writer reads each tensor through memoryview
    writes_pieces = True  # and takes a large one in pieces (``TensorData.pieces``)

    def sniff(self, head: bytes, size: int) -> bool:
        """A zip archive that names a ``<archive name>/data.pkl`` among its first members (a
        torch.save file names it first; TorchScript archives, refused later, name it too);
        a plain zip or an ``np.savez`` file is not PyTorch. A zip shorter than a local
        header is claimed, and refused as cut short."""
        if head[:4] != b"PK\x03\x04":
            return False
        return len(head) < 30 or b"/data.pkl" in head

    def read(self, path: Path, display_name: str) -> Checkpoint:
        try:
            return self._read(path, display_name)
        except ThetaError:
            raise
        except zipfile.BadZipFile as exc:
            raise NotACheckpointError(
                display_name, f"truncated or corrupt PyTorch zip archive ({exc})"
            ) from exc
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
            OSError,
            OverflowError,
            NotImplementedError,  # zipfile: a zip version or compression method it lacks
            RuntimeError,  # zipfile: an encrypted member
            zlib.error,
            struct.error,
        ) as exc:
            raise NotACheckpointError(display_name, f"invalid PyTorch checkpoint: {exc}") from exc

    def _read(self, path: Path, display_name: str) -> Checkpoint:
        with open(path, "rb") as f:
            return self._read_open(f, path, display_name)

    def _read_open(self, f: BinaryIO, path: Path, display_name: str) -> Checkpoint:
        archive = zipfile.ZipFile(f)
        infos = {i.filename: i for i in archive.infolist()}
        pkl = next((n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise ValueError("the zip archive has no data.pkl (not a torch.save file)")
        prefix = pkl[: -len("data.pkl")]
        for member in infos:
            rel = member[len(prefix) :] if member.startswith(prefix) else member
            if rel not in _KNOWN_RECORDS and not rel.startswith("data/"):
                raise UnsupportedError(
                    f"{display_name}: torch archive member `{member}` is not supported "
                    "(TorchScript and other archives are not plain torch.save files)"
                )
        byteorder = prefix + "byteorder"
        if byteorder in infos and _read_small(archive, byteorder, 16, display_name) != b"little":
            raise UnsupportedError(f"{display_name}: big-endian torch files are not supported")
        data_pkl = _read_small(archive, pkl, MAX_PICKLE, display_name)
        parsed = _parse(data_pkl, display_name)
        members: dict[str, zipfile.ZipInfo] = {}
        for key in parsed.storages:
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise ValueError(f"storage {key} is missing from the archive")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"storage {key} is compressed")
            members[key] = info
        size = path.stat().st_size
        shared = SharedFile(path)
        tensors: dict[str, TensorData] = {}
        for name, stored in parsed.tensors.items():
            info = members[stored.key]
            declared = _storage_bytes(parsed.storages[stored.key], stored.dtype)
            if info.file_size != declared:
                raise ValueError(
                    f"storage {stored.key} holds {info.file_size} bytes where its pickle "
                    f"declares {declared}"
                )
            start = member_data_offset(f, info)
            if start + info.file_size > size:
                raise ValueError("the file is truncated")
            load = partial(read_words, shared, start, info.file_size, stored.dtype.itemsize)
            # the tensor is the whole member: its CRC-32 is the one the archive records (as
            # torch wrote it; the file is rebuilt with it)
            tensors[name] = TensorData(stored.dtype.name, stored.shape, load, info.CRC)
        fmt: dict[str, Any] = {"name": self.name, "root": parsed.tree}
        layout = _Layout(f, size, archive, prefix, data_pkl, parsed, display_name).record()
        if layout is not None:
            fmt["archive"] = layout
        return Checkpoint(fmt, tensors, parsed.aliases)

    def write_order(
        self, fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
    ) -> list[str]:
        """Names of the stored tensors in the order ``write`` loads them."""
        root = _checked_root(fmt, tensors, aliases)
        plan = _exact_plan(fmt, tensors, aliases)
        if plan is not None:
            return [name for _, _, name in plan.records if name is not None]
        emitter = _PickleEmitter(tensors, aliases)
        emitter.dumps(root)
        return [emitter.storage_order[key] for key in _member_order(emitter, tensors)]

    def write(
        self,
        fmt: Mapping[str, Any],
        tensors: Mapping[str, TensorData],
        aliases: Mapping[str, str],
        out: BinaryIO,
    ) -> None:
        """The file back: byte for byte as it was when the manifest records its layout
        (``archive``) and that record still describes these tensors; else git-theta's own
        layout, which holds the same tree and tensors."""
        root = _checked_root(fmt, tensors, aliases)

        def member(name: str) -> tuple[memoryview | Streamed, int | None]:
            tensor = tensors[name]  # its CRC-32 recorded at `git add`, when the manifest has it
            if tensor.pieces is not None and tensor.crc32 is not None:
                return Streamed(tensor.pieces(), nbytes(tensor.dtype, tensor.shape)), tensor.crc32
            return byte_view(tensor.load()), tensor.crc32

        plan = _exact_plan(fmt, tensors, aliases)
        if plan is not None:
            _write_torch(plan, out, member)
        else:
            _write_canonical(root, tensors, aliases, out, member)


Member = Callable[[str], tuple[memoryview | int | Streamed, int | None]]


def _write_canonical(
    root: Any,
    tensors: Mapping[str, TensorData],
    aliases: Mapping[str, str],
    out: Writable,
    member: Member,
) -> None:
    """git-theta's own layout: archive name ``archive``, a pickle emitted from the tree,
    storages smallest first (so git gets bytes while large tensors are still decoded)."""
    emitter = _PickleEmitter(tensors, aliases)
    data_pkl = emitter.dumps(root)
    archive = ZipStream(out, align=_ALIGN)
    archive.add("archive/data.pkl", data_pkl)
    archive.add("archive/.format_version", b"1")
    archive.add("archive/.storage_alignment", b"64")
    archive.add("archive/byteorder", b"little")
    for key in _member_order(emitter, tensors):
        archive.add(f"archive/data/{key}", *member(emitter.storage_order[key]))
    archive.add("archive/version", b"3\n")
    archive.close()


@dataclass(frozen=True)
class _Plan:
    """How to write a file in torch.save's own layout: its archive name, alignment, pickle,
    and records in file order as (name, recorded text, stored tensor name of a storage)."""

    prefix: str
    align: int
    pickle: bytes
    records: list[tuple[str, str | None, str | None]]


_SERIALIZATION_ID = ".data/serialization_id"


def _write_torch(plan: _Plan, out: Writable, member: Member) -> None:
    archive = TorchZipStream(out, plan.prefix, plan.align)
    for name, text, tensor in plan.records:
        if tensor is not None:
            archive.add(name, *member(tensor))
        elif name == "data.pkl":
            archive.add(name, plan.pickle)
        elif name == _SERIALIZATION_ID:  # torch's own: a hash of the record names (recorded)
            # and the records' CRC-32s folded together, which depends on the data
            archive.add(name, f"{text}{archive.combined_crc:020d}".encode())
        else:
            archive.add(name, (text or "").encode())
    archive.close()


class _Layout:
    """Finds, at ``git add``, what a file's zip layout needs recorded so that checkout
    rebuilds it byte for byte: nothing when git-theta's own layout rebuilds it; its archive
    name, records and pickle when torch.save's layout does; nothing either when neither
    does (a file some other tool wrote: it comes back tensor-exact, in git-theta's layout).
    Each candidate is checked by writing its headers (not the data) and comparing them
    with the file's bytes."""

    def __init__(
        self,
        f: BinaryIO,
        size: int,
        archive: zipfile.ZipFile,
        prefix: str,
        data_pkl: bytes,
        parsed: _Parsed,
        display_name: str,
    ) -> None:
        self.f, self.size, self.archive = f, size, archive
        self.prefix, self.data_pkl, self.parsed = prefix, data_pkl, parsed
        self.display_name = display_name
        self.members = sorted(archive.infolist(), key=lambda info: info.header_offset)
        by_name = {info.filename: info for info in self.members}
        self.crcs = {
            name: by_name[f"{prefix}data/{stored.key}"].CRC
            for name, stored in parsed.tensors.items()
        }

    def _read(self, offset: int, length: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(length)

    def _member(self, name: str) -> tuple[int, int]:
        stored = self.parsed.tensors[name]
        return numel(stored.shape) * stored.dtype.itemsize, self.crcs[name]

    def record(self) -> dict[str, Any] | None:
        if self.prefix == "archive/":
            skeleton = Skeleton()
            shapes = {
                name: TensorData(stored.dtype.name, stored.shape, _no_data)
                for name, stored in self.parsed.tensors.items()
            }
            _write_canonical(self.parsed.tree, shapes, self.parsed.aliases, skeleton, self._member)
            if skeleton.matches(self._read, self.size):
                return None
        return self._torch()

    def _torch(self) -> dict[str, Any] | None:
        names = {stored.key: name for name, stored in self.parsed.tensors.items()}
        records: list[list[Any]] = []
        plan_records: list[tuple[str, str | None, str | None]] = []
        for info in self.members:
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
                return None
            rel = info.filename[len(self.prefix) :]
            text: str | None = None
            tensor = names.pop(rel[len("data/") :], None) if rel.startswith("data/") else None
            if tensor is None and rel != "data.pkl":
                if rel not in _KNOWN_RECORDS or info.file_size > 64:
                    return None
                try:
                    text = _read_small(self.archive, info.filename, 64, self.display_name).decode(
                        "utf-8"
                    )
                except UnicodeDecodeError:
                    return None
                if not _record_text_ok(rel, text):
                    return None
                if rel == _SERIALIZATION_ID:
                    if len(text) != 40 or not text.isascii() or not text.isdigit():
                        return None
                    text = text[:20]  # the CRC part is computed at checkout
            records.append([rel, text])
            plan_records.append((rel, text, tensor))
        if names:  # a storage with no member of its own
            return None
        align = _alignment(plan_records)
        if not 1 <= align <= MAX_ALIGN:
            return None
        plan = _Plan(self.prefix[:-1], align, self.data_pkl, plan_records)
        skeleton = Skeleton()
        _write_torch(plan, skeleton, self._member)
        if not skeleton.matches(self._read, self.size):
            return None
        return {
            "layout": "torch",
            "name": plan.prefix,
            "align": align,
            "pickle": base64.b64encode(zlib.compress(self.data_pkl, 9)).decode("ascii"),
            "records": records,
        }


@dataclass(frozen=True)
class _Parsed:
    """A checkpoint's pickle taken apart: the tree, the stored tensors, aliases, storages."""

    tree: Any
    tensors: dict[str, _Stored]
    aliases: dict[str, str]
    storages: dict[str, _Storage]


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_memo(data: bytes, display_name: str) -> None:
    """Refuse a pickle that stores a value at a memo index past the values it may hold:
    the unpickler makes its memo as long as the largest index, so a 40-byte pickle naming
    index 2**31 would have it allocate 16 GiB. (Opcodes only, no values: a few ms for a
    pickle of thousands of tensors.)"""
    ops = pickletools.genops(data)
    while True:
        try:
            opcode, arg, _ = next(ops)
        except StopIteration:
            return
        except (ValueError, TypeError) as exc:  # not opcodes (the unpickler would stop there
            # too, but may first allocate what a length claims: 2**62 bytes for a BINBYTES8)
            raise pickle.UnpicklingError(f"invalid pickle: {exc}") from None
        if opcode.name in _MEMO_PUTS and not 0 <= int(arg) < MAX_VALUES:  # type: ignore[arg-type]
            raise NotACheckpointError(
                display_name,
                f"its pickle stores a value at memo index {arg}, past the {MAX_VALUES} "
                "values git-theta reads",
            )


@lru_cache(maxsize=4)
def _recorded_parse(data_pkl: bytes) -> _Parsed:
    """A manifest's recorded pickle read as at ``git add``. Kept for the next call: checkout
    reads it twice (the write order, then the write), and it costs about 10 ms per
    hundred tensors."""
    return _parse(data_pkl, "the manifest's recorded pickle")


def _parse(data: bytes, display_name: str) -> _Parsed:
    _check_memo(data, display_name)
    unpickler = _Unpickler(data, display_name)
    root = unpickler.load()
    builder = _TreeBuilder(display_name)
    tree = builder.node(root, [])
    builder.finish()
    return _Parsed(tree, builder.tensors, builder.aliases, unpickler.storages)


def layout_fits(
    fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
) -> bool:
    """Whether the manifest's recorded layout (``archive``) is sound and still describes
    this tree and these tensors, so ``write`` rebuilds the file in torch.save's layout."""
    try:
        return _exact_plan(fmt, tensors, aliases) is not None
    except ManifestError:
        return False


def _exact_plan(
    fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
) -> _Plan | None:
    """The recorded torch.save layout, when the manifest has one and it still describes
    this tree and these tensors (a merge or an edit may have changed them: the file is
    then written in git-theta's layout). Its pickle is read again as at ``git add`` (only
    allowed globals) and must give the manifest's tree: the file never holds a pickle
    other than the one the tree stands for."""
    record = fmt.get("archive")
    if record is None:
        return None

    def fail(what: str) -> ManifestError:
        return ManifestError(f"pytorch manifest's `archive` {what}: {_DAMAGED}")

    if not isinstance(record, dict) or set(record) != {
        "layout",
        "name",
        "align",
        "pickle",
        "records",
    }:
        raise fail("does not have the keys layout, name, align, pickle and records")
    name, align, packed, records = (record[k] for k in ("name", "align", "pickle", "records"))
    if record["layout"] != "torch":
        raise fail(f"has an unknown layout `{record['layout']!s:.40}`")
    if not (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and _encodable(name)
        and not set(name) & {"/", "\\", "\0"}
    ):
        raise fail("has an invalid archive name")
    if type(align) is not int or not 1 <= align <= MAX_ALIGN:
        raise fail("has an invalid alignment")
    if not isinstance(packed, str) or not isinstance(records, list):
        raise fail("has an invalid pickle or record list")
    try:
        inflater = zlib.decompressobj()
        data_pkl = inflater.decompress(base64.b64decode(packed, validate=True), MAX_PICKLE + 1)
    except (ValueError, zlib.error):
        raise fail("holds a pickle that is not zlib data in base64") from None
    if len(data_pkl) > MAX_PICKLE or not inflater.eof:
        raise fail(f"holds a pickle longer than {MAX_PICKLE} bytes or cut short")
    try:
        parsed = _recorded_parse(data_pkl)
    except (ThetaError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise fail(f"holds a pickle git-theta cannot read ({exc})") from None
    except (AttributeError, IndexError, KeyError, OverflowError, struct.error) as exc:
        raise fail(f"holds a pickle git-theta cannot read ({exc})") from None
    if parsed.tree != fmt.get("root") or parsed.aliases != dict(aliases):
        return None
    stored = {n: (t.dtype.name, t.shape) for n, t in parsed.tensors.items()}
    if stored != {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}:
        return None
    names = {t.key: n for n, t in parsed.tensors.items()}
    plan: list[tuple[str, str | None, str | None]] = []
    seen: set[str] = set()
    for entry in records:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise fail("has a record that is not a [name, text] pair")
        rel, text = entry
        if rel in seen:
            raise fail(f"lists record `{rel:.60}` twice")
        seen.add(rel)
        tensor = names.pop(rel[len("data/") :], None) if rel.startswith("data/") else None
        if tensor is not None or rel == "data.pkl":
            if text is not None:
                raise fail(f"gives a text for record `{rel}`")
        elif (
            rel not in _KNOWN_RECORDS
            or not isinstance(text, str)
            or len(text) > 64
            or not _record_text_ok(rel, text)
        ):
            raise fail(f"has an unknown or invalid record `{rel:.60}`")
        elif rel == _SERIALIZATION_ID and not (len(text) == 20 and text.isdigit()):
            raise fail("has an invalid serialization id")
        plan.append((rel, text, tensor))
    if names or "data.pkl" not in seen:
        raise fail("does not list the pickle and every storage once")
    # the alignment `git add` records is the one the file's own record gives: any other
    # would write a file that, added again, is stored otherwise
    if align != _alignment(plan):
        raise fail("has an alignment its `.storage_alignment` record does not give")
    return _Plan(name, align, data_pkl, plan)


def _no_data() -> np.ndarray:
    raise AssertionError("a skeleton is written without tensor data")


MAX_ALIGN = 1 << 16


_KEY_KINDS = frozenset(
    {
        "none",
        "bool",
        "int",
        "float",
        "str",
        "bytes",
        "tuple",
        "torch.Size",
        "torch.dtype",
        "torch.device",
        "tensor",
        "parameter",
    }
)  # nodes that are hashable in Python, so may be dict keys and set members


def _checked_root(
    fmt: Mapping[str, Any], tensors: Mapping[str, TensorData], aliases: Mapping[str, str]
) -> Any:
    """The manifest's tree, checked so that the pickle written from it is one that
    ``torch.load`` accepts and that reads back as the same tree."""
    if "root" not in fmt:
        raise ManifestError(f"pytorch manifest has no `root`: {_DAMAGED}")
    _TreeChecker(tensors, aliases).check(fmt["root"], 0)
    return fmt["root"]


class _TreeChecker:
    def __init__(self, tensors: Mapping[str, TensorData], aliases: Mapping[str, str]) -> None:
        self.tensors = tensors
        self.aliases = aliases
        self.values = 0

    def fail(self, what: str) -> ManifestError:
        return ManifestError(f"pytorch manifest {what}: {_DAMAGED}")

    def check(self, node: Any, depth: int, key: bool = False) -> str:
        """Checks ``node`` (a dict key or set member when ``key``); returns its kind."""
        self.values += 1
        if self.values > 2 * MAX_VALUES or depth > MAX_DEPTH + 2:
            raise self.fail(f"holds more than {MAX_VALUES} values or nests them too deeply")
        if not isinstance(node, dict) or not node:
            raise self.fail(f"has a value that is not a node: {json.dumps(node)[:60]}")
        kind = next(iter(node)) if len(node) == 1 else None
        if "tensor" in node or "parameter" in node:
            kind = "tensor" if "tensor" in node else "parameter"
            self._tensor(node, kind)
        elif kind is None and set(node) in ({"odict", "attrs"}, {"dict", "attrs"}):
            kind = "odict" if "odict" in node else "dict"
        elif kind is None:
            raise self.fail(f"has a node with the keys {sorted(node)!r:.60}")
        if key and kind not in _KEY_KINDS:
            raise self.fail(f"uses a `{kind}` as a dict key or set member, which Python refuses")
        value = node[kind]
        deeper = depth + 1
        if kind in ("tensor", "parameter"):
            pass
        elif kind == "none":
            self._expect(value is None, kind)
        elif kind == "bool":
            self._expect(isinstance(value, bool), kind)
        elif kind == "int":
            self._expect(type(value) is int and value.bit_length() <= MAX_INT_BITS, kind)
        elif kind == "float":
            self._expect(isinstance(value, str) and _is_hex_float(value), kind)
        elif kind in ("str", "bytes"):
            self._expect(isinstance(value, str) and len(value) <= MAX_TEXT * 2, kind)
            if kind == "bytes":
                try:
                    base64.b64decode(value, validate=True)
                except ValueError:
                    raise self.fail("has a `bytes` value that is not base64") from None
            else:
                self._expect(_encodable(value), kind)
        elif kind in ("dict", "odict"):
            self._expect(isinstance(value, list), kind)
            keys = set()
            for pair in value:
                self._expect(isinstance(pair, list) and len(pair) == 2, kind)
                if not isinstance(pair[0], str):
                    self.check(pair[0], deeper, key=True)
                else:
                    self._expect(_encodable(pair[0]), kind)
                keys.add(_as_key(pair[0]))
                self.check(pair[1], deeper)
            if len(keys) != len(value):  # Python keeps one of them: the file reads back short
                raise self.fail(f"has a `{kind}` with the same key twice")
            attrs = node.get("attrs")
            if attrs is not None:
                self._expect(kind == "odict" and isinstance(attrs, list), "attrs")
                for pair in attrs:
                    self._expect(
                        isinstance(pair, list)
                        and len(pair) == 2
                        and isinstance(pair[0], str)
                        and _encodable(pair[0]),
                        "attrs",
                    )
                    self.check(pair[1], deeper)
        elif kind in ("list", "tuple", "set"):
            self._expect(isinstance(value, list), kind)
            for item in value:
                self.check(item, deeper, key=key or kind == "set")
            if kind == "set":  # distinct members in the reader's order, or it reads back other
                order = [json.dumps(item, sort_keys=True) for item in value]
                if order != sorted(order) or len({_as_key(item) for item in value}) != len(value):
                    raise self.fail("has a `set` whose members repeat or are out of order")
        elif kind == "torch.Size":
            self._expect(
                isinstance(value, list) and all(type(v) is int and 0 <= v < 1 << 62 for v in value),
                kind,
            )
        elif kind == "torch.dtype":
            self._expect(value in _TORCH_DTYPE_NAMES, kind)
        elif kind == "torch.device":
            self._expect(
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], str)
                and value[0].isidentifier()
                and (value[1] is None or (type(value[1]) is int and 0 <= value[1] < 1 << 31)),
                kind,
            )
        else:
            raise self.fail(f"has an unknown node kind `{kind!s:.40}`")
        return kind

    def _expect(self, ok: bool, kind: str) -> None:
        if not ok:
            raise self.fail(f"has an invalid `{kind}` value")

    def _tensor(self, node: dict[str, Any], kind: str) -> None:
        allowed = {kind, "requires_grad", "view"}
        name = node[kind]
        if set(node) - allowed or not isinstance(name, str):
            raise self.fail(f"has an invalid tensor node {json.dumps(node)[:80]}")
        if kind == "parameter" and "requires_grad" not in node:
            raise self.fail(f"has a parameter node without `requires_grad`: `{name}`")
        if not isinstance(node.get("requires_grad", False), bool):
            raise self.fail(f"has an invalid `requires_grad` for tensor `{name}`")
        target = self.aliases.get(name, name)
        if target not in self.tensors:
            raise self.fail(f"refers to unknown tensor `{name}`")
        view = node.get("view")
        if view is not None:
            self._view(name, view, self.tensors[target])

    def _view(self, name: str, view: Any, record: TensorData) -> None:
        """A view is over a stored 1-D tensor (a storage) and must fit inside it."""
        try:
            if not isinstance(view, dict) or not {"shape", "stride"} <= set(view) <= {
                "shape",
                "stride",
                "offset",
            }:
                raise pickle.UnpicklingError("keys")
            offset, shape, stride = _view(view.get("offset", 0), view["shape"], view["stride"])
        except pickle.UnpicklingError:
            raise self.fail(f"has an invalid view of tensor `{name}`") from None
        if len(record.shape) != 1 or (
            numel(shape) and offset + _span(shape, stride) > record.shape[0]
        ):
            raise self.fail(
                f"has a view of tensor `{name}` that does not fit the {list(record.shape)} "
                "elements it stores"
            )


def _as_key(node: Any) -> Any:
    """The Python value a checked key node stands for, for comparing keys as a dict does
    (``1``, ``1.0`` and ``True`` are one key)."""
    if isinstance(node, str):
        return node
    ((kind, value),) = [(k, v) for k, v in node.items() if k in _KEY_KINDS]
    if kind == "float":
        return float.fromhex(value)
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "tuple":
        return tuple(_as_key(item) for item in value)
    if kind in ("none", "bool", "int", "str"):
        return value
    return (kind, json.dumps(node, sort_keys=True))


def views(fmt: Mapping[str, Any]) -> dict[str, list[int]]:
    """The shape each tensor stored as a view's span is seen as (for people: ``show``);
    walks the tree without recursion, ignoring what is not a well-formed view node."""
    found: dict[str, list[int]] = {}
    stack = [fmt.get("root")]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            view, name = node.get("view"), node.get("tensor", node.get("parameter"))
            if isinstance(name, str) and isinstance(view, dict) and "shape" in view:
                found.setdefault(name, view["shape"])
            stack.extend(v for v in node.values() if isinstance(v, (list, dict)))
    return found


def _is_hex_float(text: str) -> bool:
    try:
        float.fromhex(text)
    except (ValueError, OverflowError):
        return False
    return True


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogatepass")
    except UnicodeError:
        return False
    return True


def _member_order(emitter: _PickleEmitter, tensors: Mapping[str, TensorData]) -> list[int]:
    """Storage keys in the order their members are written: smallest first, so the reader
    (git, over a pipe) gets bytes while the large tensors are still being decoded. The
    pickle names storages by key, so member order does not matter to ``torch.load``."""
    sizes = [nbytes(tensors[name].dtype, tensors[name].shape) for name in emitter.storage_order]
    return sorted(range(len(sizes)), key=lambda key: (sizes[key], key))


_STORAGE_CLASS = {d.name: d.torch_storage for d in DTYPES.values()}


class _PickleEmitter:
    """Writes the JSON node tree as a protocol-2 pickle that ``torch.load`` accepts with
    ``weights_only=True``: the same globals ``torch.save`` itself emits."""

    def __init__(self, tensors: Mapping[str, TensorData], aliases: Mapping[str, str]) -> None:
        self.tensors = tensors
        self.aliases = aliases
        self.storage_order: list[str] = []  # stored tensor name per storage key
        self._storage_keys: dict[str, int] = {}
        self._memo: dict[str, int] = {}  # tensor node name -> memo slot
        self._out = io.BytesIO()

    def dumps(self, root: Any) -> bytes:
        self._out.write(b"\x80\x02")
        self._node(root)
        self._out.write(b".")
        return self._out.getvalue()

    def _w(self, data: bytes) -> None:
        self._out.write(data)

    def _global(self, module: str, name: str) -> None:
        self._w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self._w(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            self._w(b"M" + struct.pack("<H", v))
        elif -(2**31) <= v < 2**31:
            self._w(b"J" + struct.pack("<i", v))
        else:
            enc = pickle.encode_long(v)  # type: ignore[attr-defined]
            self._w(
                b"\x8a" + bytes([len(enc)]) + enc
                if len(enc) < 256
                else b"\x8b" + struct.pack("<i", len(enc)) + enc
            )

    def _str(self, v: str) -> None:
        enc = v.encode("utf-8", "surrogatepass")
        self._w(b"X" + struct.pack("<I", len(enc)) + enc)

    def _tuple(self, items: list[Any], emit: Any) -> None:
        self._w(b"(")
        for item in items:
            emit(item)
        self._w(b"t")

    def _tensor(self, name: str, requires_grad: bool, view: Mapping[str, Any] | None) -> None:
        target = self.aliases.get(name, name)
        if target not in self.tensors:
            raise ManifestError(f"pytorch manifest refers to unknown tensor `{name}`")
        record = self.tensors[target]
        if target not in self._storage_keys:
            self._storage_keys[target] = len(self.storage_order)
            self.storage_order.append(target)
        key = self._storage_keys[target]
        dtype = DTYPES[record.dtype]
        storage_class = _STORAGE_CLASS[record.dtype]
        v3 = storage_class is None
        self._global("torch._utils", "_rebuild_tensor_v3" if v3 else "_rebuild_tensor_v2")
        self._w(b"(")
        # persistent id: ("storage", storage type, key, location, numel)
        self._w(b"(")
        self._str("storage")
        if v3:
            self._global("torch.storage", "UntypedStorage")
        else:
            self._global("torch", storage_class)  # type: ignore[arg-type]
        self._str(str(key))
        self._str("cpu")
        count = numel(record.shape)
        self._int(count * dtype.itemsize if v3 else count)
        self._w(b"tQ")
        self._int(view.get("offset", 0) if view is not None else 0)
        if view is not None:  # a view of a stored storage (checked to fit)
            self._tuple(list(view["shape"]), self._int)
            self._tuple(list(view["stride"]), self._int)
        else:
            self._tuple(list(record.shape), self._int)
            self._tuple(list(_standard_strides(tuple(record.shape))), self._int)
        self._w(b"\x88" if requires_grad else b"\x89")
        self._global("collections", "OrderedDict")
        self._w(b")R")
        if v3:
            self._global("torch", record.dtype)
        self._w(b"tR")

    def _node(self, node: Any) -> None:
        if "tensor" in node or "parameter" in node:  # the tree was checked: _TreeChecker
            name = node.get("tensor", node.get("parameter"))
            view = node.get("view")
            slot = self._memo.get(json.dumps(node, sort_keys=True))
            if slot is not None:
                self._w(b"j" + struct.pack("<I", slot))
                return
            if "parameter" in node:
                self._global("torch._utils", "_rebuild_parameter")
                self._w(b"(")
                self._tensor(name, False, view)
                self._w(b"\x88" if node["requires_grad"] else b"\x89")
                self._global("collections", "OrderedDict")
                self._w(b")Rt" + b"R")
            else:
                self._tensor(name, bool(node.get("requires_grad", False)), view)
            slot = len(self._memo)
            self._memo[json.dumps(node, sort_keys=True)] = slot
            self._w(b"r" + struct.pack("<I", slot))
            return
        attrs = node.get("attrs")
        ((kind, value),) = [(k, v) for k, v in node.items() if k != "attrs"]
        if attrs is not None and kind != "odict":
            raise ManifestError(f"pytorch manifest has attributes on a `{kind}` node")
        if kind == "none":
            self._w(b"N")
        elif kind == "bool":
            self._w(b"\x88" if value else b"\x89")
        elif kind == "int":
            self._int(int(value))
        elif kind == "float":
            self._w(b"G" + struct.pack(">d", float.fromhex(value)))
        elif kind == "str":
            self._str(value)
        elif kind == "bytes":
            self._global("_codecs", "encode")
            self._str(base64.b64decode(value).decode("latin1"))
            self._str("latin1")
            self._w(b"\x86R")
        elif kind in ("dict", "odict"):
            if kind == "odict":
                self._global("collections", "OrderedDict")
                self._w(b")R")
            else:
                self._w(b"}")
            if value:
                self._w(b"(")
                for key, item in value:
                    if isinstance(key, str):
                        self._str(key)
                    else:
                        self._node(key)
                    self._node(item)
                self._w(b"u")
            if attrs:  # BUILD with a state dict sets the OrderedDict's attributes
                self._w(b"}(")
                for key, item in attrs:
                    self._str(key)
                    self._node(item)
                self._w(b"ub")
        elif kind == "list":
            self._w(b"]")
            if value:
                self._w(b"(")
                for item in value:
                    self._node(item)
                self._w(b"e")
        elif kind == "tuple":
            self._tuple(value, self._node)
        elif kind == "set":
            self._global("__builtin__", "set")
            self._w(b"]")
            if value:
                self._w(b"(")
                for item in value:
                    self._node(item)
                self._w(b"e")
            self._w(b"\x85R")
        elif kind == "torch.Size":
            self._global("torch", "Size")
            self._tuple(value, self._int)
            self._w(b"\x85R")
        elif kind == "torch.dtype":
            if value not in _TORCH_DTYPE_NAMES:
                raise ManifestError(f"pytorch manifest has unknown torch dtype `{value}`")
            self._global("torch", value)
        elif kind == "torch.device":
            self._global("torch", "device")
            self._str(value[0])
            if value[1] is None:
                self._w(b"\x85R")
            else:
                self._int(value[1])
                self._w(b"\x86R")
        else:
            raise ManifestError(f"pytorch manifest has an unknown node kind `{kind}`")

"""The manifest: what git stores in place of a checkpoint.

A manifest has exactly one serialization (canonical JSON: sorted keys, a value on one line
when it fits in 100 columns, else one member per line with two-space indent; UTF-8; one
trailing newline), so the same checkpoint gives the same bytes everywhere::

    {
      "aliases": {"lm_head.weight": "wte.weight"},     # tensors stored once, rebuilt shared
      "format": {"name": "pytorch", ...},              # what the format's writer needs
      "git_theta": 3,                                  # schema version
      "tensors": {
        "wte.weight": {
          "dtype": "float32", "shape": [50257, 768],
          "hash": "<sha256 identity of dtype, shape and bytes>",
          "blake3": "<BLAKE3 of the same, which checkout verifies>", "crc32": 123,
          "storage": {"encoding": "dense", "objects": [{"oid": "<sha256>", "size": 123}]}
        }
      }
    }

A tensor stored as a change against an earlier version (``xor``, ``sparse``) has a *chain*:
its own step, then its base's steps, down to a dense root. The record lists every object of
the chain (this step's first), so push, fetch, gc and fsck need no chain walking, and the
steps, each naming by identity hash the tensor it applies to::

    "storage": {
      "encoding": "xor",
      "objects": [{"oid": "<xor words>", ...}, {"oid": "<dense root>", ...}],
      "chain": [{"base": "<identity hash>", "encoding": "xor", "objects": 1},
                {"encoding": "dense", "objects": 1}]
    }
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from git_theta.errors import ManifestError
from git_theta.store import ObjectRef, valid_oid
from git_theta.tensors import DTYPES, MAX_DIMS, nbytes

# 2: records may carry `crc32`, pytorch tree nodes may carry `view`, objects may use the byte
# planes layout; git-theta before it would misread those, so it must refuse version 2
# 3: records may carry `blake3`, which checkout verifies in place of the identity hash; a
# git-theta before it would write the tensor without verifying it, so it must refuse version 3
SCHEMA_VERSION = 3
READS = (1, 2, 3)  # versions this git-theta reads (and writes back as they are)
WIDTH = 100
# a manifest is never this big: a larger file is a checkpoint, and is not read whole
MAX_MANIFEST_BYTES = 64 << 20
_DAMAGED = "the file is damaged (check it out again from a good commit)"


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _malformed(name: str) -> ManifestError:
    return ManifestError(f"manifest entry for tensor `{name}` is malformed: {_DAMAGED}")


def _invalid_id(name: str) -> ManifestError:
    return ManifestError(f"tensor `{name}` has an invalid hash or object id: {_DAMAGED}")


def _object_refs(name: str, value: Any) -> tuple[ObjectRef, ...]:
    """The ``objects`` list of a storage record, validated (the oids become paths)."""
    if not isinstance(value, list) or not all(isinstance(o, dict) for o in value):
        raise _malformed(name)
    if not all("oid" in o and "size" in o for o in value):
        raise _malformed(name)
    if not all(isinstance(o["oid"], str) and valid_oid(o["oid"]) for o in value):
        raise _invalid_id(name)
    if not all(_natural(o["size"]) for o in value):
        raise _invalid_id(name)
    return tuple(ObjectRef(o["oid"], o["size"]) for o in value)


class Storage:
    """How one tensor is stored: a tagged value, one subclass per encoding (``encoding``
    names it in the manifest), parsed by ``parse_storage``."""

    encoding: ClassVar[str]

    @property
    def objects(self) -> tuple[ObjectRef, ...]:
        """Every object needed to rebuild the tensor (push, fetch, gc and fsck read these,
        whatever the encoding)."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, name: str, value: dict[str, Any]) -> Storage:
        """Parse the record of tensor ``name``; raises ManifestError."""
        raise NotImplementedError


@dataclass(frozen=True)
class Dense(Storage):
    """The whole tensor in one object."""

    object: ObjectRef
    encoding: ClassVar[str] = "dense"

    @property
    def objects(self) -> tuple[ObjectRef, ...]:
        return (self.object,)

    def to_json(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "objects": [{"oid": self.object.oid, "size": self.object.size}],
        }

    @classmethod
    def from_json(cls, name: str, value: dict[str, Any]) -> Dense:
        objects = _object_refs(name, value.get("objects"))
        if len(objects) != 1:
            raise ManifestError(
                f"tensor `{name}` is dense but lists {len(objects)} objects: {_DAMAGED}"
            )
        return cls(objects[0])


@dataclass(frozen=True)
class Delta(Storage):
    """A change against a base tensor of the same dtype and shape, named by its identity
    hash (``base``), whose storage (``rest``) comes next in the chain. Subclasses say how
    many objects a step has (``own``) and what else it records."""

    own: tuple[ObjectRef, ...]
    base: str
    rest: Storage
    own_count: ClassVar[int]

    @classmethod
    def objects_in(cls, step: dict[str, Any]) -> int:
        """How many objects a step of this encoding has (``step``: its ``chain`` entry)."""
        return cls.own_count

    @property
    def objects(self) -> tuple[ObjectRef, ...]:
        return self.own + self.rest.objects

    def step(self) -> dict[str, Any]:
        """This step's entry in the record's ``chain``."""
        return {"encoding": self.encoding, "base": self.base, "objects": len(self.own)}

    @classmethod
    def from_step(
        cls, name: str, step: dict[str, Any], own: tuple[ObjectRef, ...], rest: Storage
    ) -> Delta:
        """The step parsed from its ``chain`` entry (checked to hold ``base`` and the right
        number of objects); raises ManifestError."""
        return cls(own, step["base"], rest)

    def to_json(self) -> dict[str, Any]:
        updates, root = chain(self)
        steps = [step.step() for step in updates]
        steps.append({"encoding": root.encoding, "objects": len(root.objects)})
        return {
            "encoding": self.encoding,
            "objects": [{"oid": o.oid, "size": o.size} for o in self.objects],
            "chain": steps,
        }

    @classmethod
    def from_json(cls, name: str, value: dict[str, Any]) -> Storage:
        return _parse_chain(name, value)


def chain(storage: Storage) -> tuple[list[Delta], Storage]:
    """The updates of ``storage``'s chain, newest first, and the dense storage at its root."""
    updates = []
    while isinstance(storage, Delta):
        updates.append(storage)
        storage = storage.rest
    return updates, storage


def depth(storage: Storage) -> int:
    """How many delta steps lie between ``storage`` and its dense root."""
    return len(chain(storage)[0])


@dataclass(frozen=True)
class Xor(Delta):
    """The tensor's words XOR its base's words, in one object."""

    encoding: ClassVar[str] = "xor"
    own_count: ClassVar[int] = 1


@dataclass(frozen=True)
class Sparse(Delta):
    """The words that differ from the base's: two objects, the gaps between their positions
    (the first position, then each one's distance from the one before; unsigned words of
    ``sparse_index_dtype``) and their new words; ``changed`` of each."""

    changed: int = 0
    encoding: ClassVar[str] = "sparse"
    own_count: ClassVar[int] = 2

    def step(self) -> dict[str, Any]:
        return {**super().step(), "changed": self.changed}

    @classmethod
    def from_step(
        cls, name: str, step: dict[str, Any], own: tuple[ObjectRef, ...], rest: Storage
    ) -> Delta:
        changed: Any = step.get("changed")
        if not _natural(changed) or changed < 1:
            raise _malformed(name)
        return cls(own, step["base"], rest, int(changed))


@dataclass(frozen=True)
class _Factored(Delta):
    """An update given as factors of dtype ``factors`` (``factor_objects`` objects), rebuilt
    deterministically (``updates.rebuild``); where that rebuild differs from what numpy
    computed at `git add`, ``corrected`` words are replaced: their position gaps and words
    in two more objects (as in ``Sparse``)."""

    factors: str = "float32"
    corrected: int = 0
    factor_objects: ClassVar[int]

    @classmethod
    def objects_in(cls, step: dict[str, Any]) -> int:
        return cls.factor_objects + (2 if step.get("corrected") else 0)

    def step(self) -> dict[str, Any]:
        return {**super().step(), "factors": self.factors, "corrected": self.corrected}

    @staticmethod
    def common(name: str, step: dict[str, Any]) -> dict[str, Any]:
        """The fields every factored step has, checked."""
        factors, corrected = step.get("factors"), step.get("corrected", 0)
        if not isinstance(factors, str) or factors not in DTYPES or not _natural(corrected):
            raise _malformed(name)
        return {"factors": factors, "corrected": int(corrected)}


@dataclass(frozen=True)
class LowRank(_Factored):
    """new = base + (R @ C) * ``scale``, the tensor read as a matrix [first dimension, the
    rest]: R [rows, ``rank``] and C [``rank``, columns] in the first two objects."""

    rank: int = 1
    scale: float = 1.0
    encoding: ClassVar[str] = "low-rank"
    factor_objects: ClassVar[int] = 2

    def step(self) -> dict[str, Any]:
        return {**super().step(), "rank": self.rank, "scale": self.scale}

    @classmethod
    def from_step(
        cls, name: str, step: dict[str, Any], own: tuple[ObjectRef, ...], rest: Storage
    ) -> Delta:
        rank: Any = step.get("rank")
        scale: Any = step.get("scale")
        if not _natural(rank) or rank < 1 or rank > 1 << 20:
            raise _malformed(name)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise _malformed(name)
        if not math.isfinite(scale) if isinstance(scale, float) else abs(scale) > 1 << 53:
            raise _malformed(name)
        return cls(
            own, step["base"], rest, rank=int(rank), scale=float(scale), **cls.common(name, step)
        )


@dataclass(frozen=True)
class Ia3(_Factored):
    """new = base * s, s of shape ``scale_shape`` broadcast against the tensor, in the first
    object."""

    scale_shape: tuple[int, ...] = ()
    encoding: ClassVar[str] = "ia3"
    factor_objects: ClassVar[int] = 1

    def step(self) -> dict[str, Any]:
        return {**super().step(), "scale_shape": list(self.scale_shape)}

    @classmethod
    def from_step(
        cls, name: str, step: dict[str, Any], own: tuple[ObjectRef, ...], rest: Storage
    ) -> Delta:
        shape: Any = step.get("scale_shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(_natural(d) and d < 1 << 62 for d in shape)
        ):
            raise _malformed(name)
        return cls(own, step["base"], rest, scale_shape=tuple(shape), **cls.common(name, step))


# updates in a chain past this are damaged or hostile (theta.maxChainDepth is at most this)
MAX_CHAIN = 64
# encoding name -> its record type
ENCODINGS: dict[str, type[Storage]] = {e.encoding: e for e in (Dense, Xor, Sparse, LowRank, Ia3)}


def parse_storage(name: str, value: Any) -> Storage:
    """The storage record of tensor ``name``, parsed by its encoding; raises ManifestError
    (an encoding this git-theta does not know says to upgrade)."""
    if not isinstance(value, dict) or not isinstance(value.get("encoding"), str):
        raise _malformed(name)
    return _kind(name, value["encoding"]).from_json(name, value)


def _kind(name: str, encoding: Any) -> type[Storage]:
    if not isinstance(encoding, str):
        raise _malformed(name)
    kind = ENCODINGS.get(encoding)
    if kind is None:
        raise ManifestError(
            f"tensor `{name}` uses encoding `{encoding:.40}`, which this git-theta does not "
            "know: upgrade git-theta"
        )
    return kind


def _parse_chain(name: str, value: dict[str, Any]) -> Storage:
    """A delta record: its ``chain`` of steps, from this one down to a dense root, each
    taking its objects in turn from ``objects``."""
    objects = _object_refs(name, value.get("objects"))
    chain = value.get("chain")
    if not isinstance(chain, list) or not 2 <= len(chain) <= MAX_CHAIN + 1:
        raise ManifestError(
            f"tensor `{name}` has a chain of updates that is malformed or longer than "
            f"{MAX_CHAIN} updates: {_DAMAGED}"
        )
    if not all(isinstance(step, dict) and _natural(step.get("objects")) for step in chain):
        raise _malformed(name)
    kinds = [_kind(name, step.get("encoding")) for step in chain]
    if kinds[0].encoding != value["encoding"] or kinds[-1] is not Dense:
        raise _malformed(name)
    if sum(step["objects"] for step in chain) != len(objects):
        raise _malformed(name)
    end = len(objects) - chain[-1]["objects"]
    storage: Storage = Dense.from_json(name, {"objects": value["objects"][end:]})
    for step, kind in zip(reversed(chain[:-1]), reversed(kinds[:-1]), strict=True):
        if not issubclass(kind, Delta) or step["objects"] != kind.objects_in(step):
            raise _malformed(name)
        base = step.get("base")
        if not isinstance(base, str) or not valid_oid(base):
            raise _invalid_id(name)
        own, end = objects[end - step["objects"] : end], end - step["objects"]
        storage = kind.from_step(name, step, own, storage)
    return storage


@dataclass(frozen=True)
class TensorRecord:
    """One tensor: its identity and where its data lives."""

    dtype: str
    shape: tuple[int, ...]
    hash: str
    storage: Storage
    # CRC-32 of the canonical bytes, computed at `git add` so that writers of zip-based
    # formats need not compute it at checkout (None in records of schema 1)
    crc32: int | None = None
    # BLAKE3 over what ``hash`` covers (``tensors.content_hash``), computed at `git add`:
    # checkout verifies the tensor by it, and the next `git add` finds the tensor unchanged
    # by it (None in records of schemas 1 and 2, which are verified by ``hash``)
    blake3: str | None = None

    @property
    def encoding(self) -> str:
        return self.storage.encoding

    @property
    def objects(self) -> tuple[ObjectRef, ...]:
        """Every object needed to rebuild the tensor."""
        return self.storage.objects

    @property
    def nbytes(self) -> int:
        """Logical size of the tensor in bytes."""
        return nbytes(self.dtype, self.shape)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "hash": self.hash,
            "storage": self.storage.to_json(),
        }
        if self.crc32 is not None:
            value["crc32"] = self.crc32
        if self.blake3 is not None:
            value["blake3"] = self.blake3
        return value

    def same_tensor(self, other: TensorRecord) -> bool:
        """Whether both records describe the same tensor: the same dtype, shape and identity
        hash, and the same BLAKE3 where both have one (so a record whose BLAKE3, which
        checkout verifies, disagrees with its identity hash never passes for another)."""
        return (self.dtype, tuple(self.shape), self.hash) == (
            other.dtype,
            tuple(other.shape),
            other.hash,
        ) and (self.blake3 is None or other.blake3 is None or self.blake3 == other.blake3)

    @classmethod
    def from_json(cls, name: str, value: Any) -> TensorRecord:
        if not isinstance(value, dict) or not {"dtype", "shape", "hash", "storage"} <= set(value):
            raise _malformed(name)
        dtype, shape, digest = value["dtype"], value["shape"], value["hash"]
        if not isinstance(shape, list):
            raise _malformed(name)
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ManifestError(f"tensor `{name}` has unknown dtype `{dtype!s:.40}`")
        if len(shape) > MAX_DIMS or not all(_natural(d) and d < 1 << 62 for d in shape):
            raise ManifestError(f"tensor `{name}` has an invalid shape: {_DAMAGED}")
        storage = parse_storage(name, value["storage"])
        if not isinstance(digest, str) or not valid_oid(digest):
            raise _invalid_id(name)
        crc = value.get("crc32")
        if crc is not None and not (_natural(crc) and crc < 1 << 32):
            raise _invalid_id(name)
        check = value.get("blake3")
        if check is not None and not (isinstance(check, str) and valid_oid(check)):
            raise _invalid_id(name)
        return cls(dtype, tuple(shape), digest, storage, crc, check)


@dataclass
class Manifest:
    """A checkpoint as git stores it."""

    format: dict[str, Any]
    tensors: dict[str, TensorRecord] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    version: int = SCHEMA_VERSION  # a manifest read is written back in its own version

    def to_bytes(self) -> bytes:
        """The canonical serialization."""
        value = {
            "git_theta": self.version,
            "format": self.format,
            "tensors": {name: rec.to_json() for name, rec in self.tensors.items()},
            "aliases": self.aliases,
        }
        return (_canonical(value, 0) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and validate a manifest; raises ManifestError."""
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"not a git-theta manifest: {exc}") from exc
        except RecursionError:
            raise ManifestError("not a git-theta manifest: its JSON is nested too deeply") from None
        if not isinstance(value, dict) or "git_theta" not in value:
            raise ManifestError("not a git-theta manifest: no `git_theta` schema version")
        version = value["git_theta"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ManifestError(
                f"manifest schema version {json.dumps(version)[:40]} is not a number: the file "
                "is damaged (check it out again from a good commit)"
            )
        if version not in READS:
            raise ManifestError(
                f"manifest schema version {version!r} is not one this git-theta knows "
                f"(it reads versions {READS[0]} to {READS[-1]}): upgrade git-theta"
            )
        fmt, records, aliases = (value.get(k) for k in ("format", "tensors", "aliases"))
        aliases = {} if aliases is None else aliases
        if not isinstance(records, dict) or not isinstance(aliases, dict):
            raise ManifestError(f"manifest has no `tensors` or `aliases` table: {_DAMAGED}")
        if not all(isinstance(t, str) for t in aliases.values()):
            raise ManifestError(f"manifest has an alias that is not a tensor name: {_DAMAGED}")
        tensors = {n: TensorRecord.from_json(n, v) for n, v in records.items()}
        if not isinstance(fmt, dict) or not isinstance(fmt.get("name"), str):
            raise ManifestError(f"manifest has no format name: {_DAMAGED}")
        for alias, target in aliases.items():
            if target not in tensors or alias in tensors:
                raise ManifestError(
                    f"manifest alias `{alias}` -> `{target}` is invalid: {_DAMAGED}"
                )
        return cls(format=fmt, tensors=tensors, aliases=aliases, version=version)

    def objects(self) -> dict[str, list[str]]:
        """Every object this manifest needs, mapped to the tensor names that need it."""
        needed: dict[str, list[str]] = {}
        for name, record in self.tensors.items():
            for obj in record.objects:
                needed.setdefault(obj.oid, []).append(name)
        return needed

    def stored_size(self) -> int:
        """Bytes of the distinct objects this manifest needs."""
        sizes = {o.oid: o.size for r in self.tensors.values() for o in r.objects}
        return sum(sizes.values())

    def logical_size(self) -> int:
        """Bytes of all tensors' data, as the checkpoint holds it."""
        return sum(r.nbytes for r in self.tensors.values())


def _canonical(value: Any, indent: int, lead: int = 0, trail: int = 0) -> str:
    """Canonical JSON: sorted keys; a value stays on one line when that whole line (indent,
    ``lead`` columns of key before it, ``trail`` columns of comma after it) fits in ``WIDTH``
    columns; a longer object or array gets one member per line, two-space indent."""
    flat = json.dumps(
        value, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(", ", ": ")
    )
    fits = indent + lead + len(flat) + trail <= WIDTH
    if fits or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = " " * (indent + 2)
    members = []
    if isinstance(value, dict):
        keys = sorted(value)
        for i, k in enumerate(keys):
            key = json.dumps(k, ensure_ascii=False) + ": "
            comma = 1 if i < len(keys) - 1 else 0
            members.append(pad + key + _canonical(value[k], indent + 2, len(key), comma))
        return "{\n" + ",\n".join(members) + "\n" + " " * indent + "}"
    for i, v in enumerate(value):
        members.append(pad + _canonical(v, indent + 2, 0, 1 if i < len(value) - 1 else 0))
    return "[\n" + ",\n".join(members) + "\n" + " " * indent + "]"


def looks_like_manifest(data: bytes) -> bool:
    """Cheap test whether ``data`` is (meant to be) a manifest rather than a checkpoint."""
    # a safetensors file whose header is 123 bytes long also starts with "{", but its
    # 8-byte length prefix has NUL bytes, which a manifest (UTF-8 JSON text) never has
    return data[:1] == b"{" and b"\0" not in data[:8] and b'"git_theta"' in data


def parse_if_manifest(data: bytes) -> Manifest | None:
    """The manifest ``data`` holds, or None when it is not a manifest at all."""
    if not looks_like_manifest(data):
        return None
    return Manifest.from_bytes(data)

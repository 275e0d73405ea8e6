"""The manifest value type: canonical bytes, parsing, validation and sizes."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from git_theta.errors import ManifestError
from git_theta.manifest import Dense, Manifest, TensorRecord, parse_if_manifest
from git_theta.store import ObjectRef

A, B, C, D, E = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64)
DAMAGED = "the file is damaged (check it out again from a good commit)"


def example() -> Manifest:
    """Two tensors (one with a non-ASCII name), one alias, a pytorch container tree."""
    return Manifest(
        format={
            "name": "pytorch",
            "root": {
                "dict": [
                    ["wte.weight", {"tensor": "wte.weight"}],
                    ["lm_head.weight", {"tensor": "lm_head.weight"}],
                    ["ln_é.bias", {"tensor": "ln_é.bias"}],
                ]
            },
        },
        tensors={
            "wte.weight": TensorRecord(
                "float32", (2, 3), C, Dense(ObjectRef(A, 120)), crc32=7, blake3=E
            ),
            "ln_é.bias": TensorRecord("bfloat16", (3,), D, Dense(ObjectRef(B, 41))),
        },
        aliases={"lm_head.weight": "wte.weight"},
    )


# Every line fits in 100 columns: the `objects` arrays do not fit on their member's line
# (8 columns of indent + `"objects": ` + 89 columns of value = 108), so they are split.
EXPECTED = """\
{
  "aliases": {"lm_head.weight": "wte.weight"},
  "format": {
    "name": "pytorch",
    "root": {
      "dict": [
        ["wte.weight", {"tensor": "wte.weight"}],
        ["lm_head.weight", {"tensor": "lm_head.weight"}],
        ["ln_é.bias", {"tensor": "ln_é.bias"}]
      ]
    }
  },
  "git_theta": 3,
  "tensors": {
    "ln_é.bias": {
      "dtype": "bfloat16",
      "hash": "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd",
      "shape": [3],
      "storage": {
        "encoding": "dense",
        "objects": [
          {"oid": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "size": 41}
        ]
      }
    },
    "wte.weight": {
      "blake3": "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
      "crc32": 7,
      "dtype": "float32",
      "hash": "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
      "shape": [2, 3],
      "storage": {
        "encoding": "dense",
        "objects": [
          {"oid": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "size": 120}
        ]
      }
    }
  }
}
""".encode()


def test_to_bytes_is_the_exact_canonical_text() -> None:
    assert example().to_bytes() == EXPECTED


def test_no_line_is_wider_than_100_columns() -> None:
    lines = example().to_bytes().decode("utf-8").splitlines()
    assert [line for line in lines if len(line) > 100] == []


def test_small_manifest_is_one_line_with_sorted_keys() -> None:
    m = Manifest(format={"name": "safetensors", "header": "{}"})
    assert m.to_bytes() == (
        b'{"aliases": {}, "format": {"header": "{}", "name": "safetensors"}, '
        b'"git_theta": 3, "tensors": {}}\n'
    )


def _one_line_manifest(name: str) -> Manifest:
    return Manifest(format={"name": name})


# `{"aliases": {}, "format": {"name": ""}, "git_theta": 3, "tensors": {}}` is 70 columns.
@pytest.mark.parametrize("fill", ["x", "é"])
def test_whole_manifest_of_exactly_100_columns_stays_on_one_line(fill: str) -> None:
    name = fill * 30
    data = _one_line_manifest(name).to_bytes()
    text = '{"aliases": {}, "format": {"name": "' + name + '"}, "git_theta": 3, "tensors": {}}\n'
    assert len(text) == 101  # 100 columns plus the newline; columns are characters
    assert data == text.encode("utf-8")


def test_whole_manifest_of_101_columns_is_split() -> None:
    name = "x" * 31
    assert (
        _one_line_manifest(name).to_bytes()
        == (
            "{\n"
            '  "aliases": {},\n'
            '  "format": {"name": "' + name + '"},\n'
            '  "git_theta": 3,\n'
            '  "tensors": {}\n'
            "}\n"
        ).encode()
    )


@pytest.mark.parametrize(("width", "one_line"), [(87, True), (88, False)])
def test_member_line_width_counts_its_key(width: int, one_line: bool) -> None:
    """`    "z": ["xx…"]` is 4 + 5 + width + 4 columns: 100 stays, 101 is split."""
    value = "x" * width
    m = Manifest(format={"name": "n", "z": [value]})
    member = f'    "z": ["{value}"]\n' if one_line else f'    "z": [\n      "{value}"\n    ]\n'
    expected = (
        "{\n"
        '  "aliases": {},\n'
        '  "format": {\n'
        '    "name": "n",\n' + member + "  },\n"
        '  "git_theta": 3,\n'
        '  "tensors": {}\n'
        "}\n"
    )
    assert m.to_bytes() == expected.encode()


def test_canonical_bytes_sort_keys_keep_utf8_and_end_with_one_newline() -> None:
    data = example().to_bytes()
    assert data.endswith(b"}\n") and not data.endswith(b"\n\n")
    assert "ln_é.bias".encode() in data
    assert b"\\u" not in data

    def check_sorted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert keys == sorted(keys)
        return dict(pairs)

    json.loads(data, object_pairs_hook=check_sorted)
    # the format's own list order is data, not sorted
    root = json.loads(data)["format"]["root"]["dict"]
    assert [k for k, _ in root] == ["wte.weight", "lm_head.weight", "ln_é.bias"]


def test_round_trip_gives_equal_manifest_and_identical_bytes() -> None:
    m = example()
    data = m.to_bytes()
    parsed = Manifest.from_bytes(data)
    assert parsed == m
    assert parsed.to_bytes() == data


def test_parsing_non_canonical_json_reserializes_canonically() -> None:
    m = example()
    value = json.loads(m.to_bytes())
    compact = json.dumps(value, separators=(",", ":")).encode()  # unsorted, ASCII-escaped
    assert Manifest.from_bytes(compact).to_bytes() == m.to_bytes()


def test_to_bytes_does_not_depend_on_insertion_order() -> None:
    m = example()
    reordered = Manifest(
        format=dict(reversed(list(m.format.items()))),
        tensors=dict(reversed(list(m.tensors.items()))),
        aliases=m.aliases,
    )
    assert reordered.to_bytes() == m.to_bytes()


def test_unknown_schema_version_says_to_upgrade() -> None:
    value = json.loads(example().to_bytes())
    value["git_theta"] = 4
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(json.dumps(value).encode())
    assert str(info.value) == (
        "manifest schema version 4 is not one this git-theta knows (it reads versions 1 to "
        "3): upgrade git-theta"
    )


def test_a_schema_1_manifest_is_read_and_written_back_as_version_1() -> None:
    value = json.loads(example().to_bytes())
    value["git_theta"] = 1
    old = Manifest.from_bytes(json.dumps(value).encode())
    assert old.version == 1 and old.tensors == example().tensors
    assert json.loads(old.to_bytes()) == value


def test_a_record_carries_its_crc32_when_known() -> None:
    record = TensorRecord("float32", (2,), C, Dense(ObjectRef(A, 10)), 0xDEADBEEF)
    assert record.to_json()["crc32"] == 0xDEADBEEF
    assert TensorRecord.from_json("t", record.to_json()) == record
    for bad in (-1, 1 << 32, "12", True):
        with pytest.raises(ManifestError, match="invalid hash or object id"):
            TensorRecord.from_json("t", {**record.to_json(), "crc32": bad})


def test_a_record_carries_its_blake3_when_known() -> None:
    record = TensorRecord("float32", (2,), C, Dense(ObjectRef(A, 10)), blake3=E)
    assert record.to_json()["blake3"] == E
    assert TensorRecord.from_json("t", record.to_json()) == record
    assert "blake3" not in TensorRecord("float32", (2,), C, Dense(ObjectRef(A, 10))).to_json()
    for bad in ("E" * 64, "e" * 63, 12, True):
        with pytest.raises(ManifestError, match="invalid hash or object id"):
            TensorRecord.from_json("t", {**record.to_json(), "blake3": bad})


def test_same_tensor_compares_blake3_only_where_both_records_have_one() -> None:
    plain = TensorRecord("float32", (2,), C, Dense(ObjectRef(A, 10)))
    checked = TensorRecord("float32", (2,), C, Dense(ObjectRef(B, 11)), blake3=E)
    other = TensorRecord("float32", (2,), C, Dense(ObjectRef(B, 11)), blake3=D)
    assert plain.same_tensor(checked) and checked.same_tensor(plain)
    assert not checked.same_tensor(other)  # one identity, two contents: not the same
    assert not plain.same_tensor(TensorRecord("float32", (1, 2), C, plain.storage))
    assert not plain.same_tensor(TensorRecord("float32", (2,), D, plain.storage))


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "dtype": "float32",
        "shape": [2],
        "hash": C,
        "storage": {"encoding": "dense", "objects": [{"oid": A, "size": 10}]},
    }
    for key, value in changes.items():
        if key in ("encoding", "objects"):
            entry["storage"][key] = value
        else:
            entry[key] = value
    return entry


def _manifest_bytes(tensors: dict[str, Any], aliases: dict[str, Any] | None = None) -> bytes:
    value = {"git_theta": 1, "format": {"name": "safetensors"}, "tensors": tensors}
    if aliases is not None:
        value["aliases"] = aliases
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_entry(dtype="float31"), "tensor `w` has unknown dtype `float31`"),
        (_entry(dtype="F32"), "tensor `w` has unknown dtype `F32`"),
        (_entry(shape=[2, -1]), "tensor `w` has an invalid shape: " + DAMAGED),
        (_entry(shape=[1.5]), "tensor `w` has an invalid shape: " + DAMAGED),
        (_entry(shape=[True]), "tensor `w` has an invalid shape: " + DAMAGED),
        (_entry(hash="C" * 64), "tensor `w` has an invalid hash or object id: " + DAMAGED),
        (_entry(hash=C[:63]), "tensor `w` has an invalid hash or object id: " + DAMAGED),
        (
            _entry(objects=[{"oid": "../../etc/passwd", "size": 1}]),
            "tensor `w` has an invalid hash or object id: " + DAMAGED,
        ),
        (
            _entry(objects=[{"oid": A.upper(), "size": 1}]),
            "tensor `w` has an invalid hash or object id: " + DAMAGED,
        ),
        (
            _entry(objects=[{"oid": A, "size": "10"}]),
            "tensor `w` has an invalid hash or object id: " + DAMAGED,
        ),
        (
            _entry(objects=[{"oid": A, "size": -1}]),
            "tensor `w` has an invalid hash or object id: " + DAMAGED,
        ),
        (
            _entry(encoding="zfp"),
            "tensor `w` uses encoding `zfp`, which this git-theta does not know: upgrade git-theta",
        ),
        (
            {"dtype": "float32", "shape": [2], "hash": C},
            "manifest entry for tensor `w` is malformed: " + DAMAGED,
        ),
        (_entry(objects=[{"oid": A}]), "manifest entry for tensor `w` is malformed: " + DAMAGED),
        (_entry(shape=3), "manifest entry for tensor `w` is malformed: " + DAMAGED),
    ],
)
def test_malformed_tensor_entry(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(_manifest_bytes({"w": entry}))
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"tied": "missing"}, "manifest alias `tied` -> `missing` is invalid: " + DAMAGED),
        (
            {"w": "w"},
            "manifest alias `w` -> `w` is invalid: " + DAMAGED,
        ),  # an alias may not shadow a tensor
        (
            {"a": "b", "b": "w"},
            "manifest alias `a` -> `b` is invalid: " + DAMAGED,
        ),  # no alias chains
    ],
)
def test_invalid_alias(aliases: dict[str, str], message: str) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(_manifest_bytes({"w": _entry()}, aliases))
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"git_theta": 1, "tensors": {}}', "manifest has no format name: " + DAMAGED),
        (
            b'{"git_theta": 1, "format": {}, "tensors": {}}',
            "manifest has no format name: " + DAMAGED,
        ),
        (
            b'{"git_theta": 1, "format": {"name": 3}, "tensors": {}}',
            "manifest has no format name: " + DAMAGED,
        ),
        (
            b'{"git_theta": 1, "format": {"name": "x"}, "tensors": []}',
            "manifest has no `tensors` or `aliases` table: " + DAMAGED,
        ),
        (
            b'{"git_theta": 1, "format": {"name": "x"}, "tensors": {}, "aliases": [["a"]]}',
            "manifest has no `tensors` or `aliases` table: " + DAMAGED,
        ),
        (
            b'{"git_theta": 1, "format": {"name": "x"}, "tensors": {}, "aliases": {"a": 1}}',
            "manifest has an alias that is not a tensor name: " + DAMAGED,
        ),
        (
            b'{"format": {"name": "x"}, "tensors": {}}',
            "not a git-theta manifest: no `git_theta` schema version",
        ),
        (b"[1, 2]", "not a git-theta manifest: no `git_theta` schema version"),
    ],
)
def test_malformed_manifest(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(data)
    assert str(info.value) == message


def test_invalid_json_and_utf8_are_manifest_errors() -> None:
    with pytest.raises(ManifestError, match=r"^not a git-theta manifest: Expecting"):
        Manifest.from_bytes(b'{"git_theta": 1,')
    with pytest.raises(ManifestError, match=r"^not a git-theta manifest: 'utf-8' codec"):
        Manifest.from_bytes(b'{"git_theta": 1, "x": "\xff"}')


def _sized() -> Manifest:
    return Manifest(
        format={"name": "pytorch"},
        tensors={
            "a": TensorRecord("float32", (2, 3), C, Dense(ObjectRef(A, 100))),
            "b": TensorRecord("bfloat16", (3,), D, Dense(ObjectRef(B, 7))),
            "c": TensorRecord("complex128", (), C, Dense(ObjectRef(A, 100))),  # same object
            "d": TensorRecord("int8", (0, 5), D, Dense(ObjectRef(D, 33))),
        },
        aliases={"e": "a"},
    )


def test_objects_maps_each_oid_to_the_tensors_needing_it() -> None:
    assert _sized().objects() == {A: ["a", "c"], B: ["b"], D: ["d"]}


def test_stored_size_counts_each_object_once() -> None:
    assert _sized().stored_size() == 100 + 7 + 33


def test_logical_size_counts_every_tensor_but_not_aliases() -> None:
    # float32[2,3] = 24, bfloat16[3] = 6, complex128[] = 16, int8[0,5] = 0
    assert _sized().logical_size() == 46
    assert _sized().tensors["c"].nbytes == 16


def test_sizes_of_empty_manifest() -> None:
    m = Manifest(format={"name": "pytorch"})
    assert (m.objects(), m.stored_size(), m.logical_size()) == ({}, 0, 0)


def _safetensors_with_header(header: str) -> bytes:
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PK\x03\x04\x14\x00\x00\x00",  # a torch zip
        _safetensors_with_header('{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'),
        b'{"name": "config", "layers": 12}\n',
        b"[1, 2, 3]\n",
    ],
    ids=["empty", "zip", "safetensors", "json", "json-list"],
)
def test_parse_if_manifest_returns_none_for_non_manifests(data: bytes) -> None:
    assert parse_if_manifest(data) is None


def test_parse_if_manifest_returns_none_for_safetensors_starting_with_brace() -> None:
    """A safetensors header of 123 bytes makes the file start with `{`; if its metadata
    mentions "git_theta" it is still a checkpoint, not a manifest."""
    header = '{"__metadata__":{"git_theta":"made by git_theta.save"},"w":{"dtype":"U8","shape":[1],'
    header += '"data_offsets":[0,1]}}'
    header += " " * (123 - len(header))
    data = _safetensors_with_header(header) + b"\x01"
    assert data[:1] == b"{"
    assert parse_if_manifest(data) is None


def test_parse_if_manifest_parses_manifests_and_reports_bad_ones() -> None:
    assert parse_if_manifest(EXPECTED) == example()
    with pytest.raises(ManifestError, match="upgrade git-theta"):
        parse_if_manifest(b'{"git_theta": 4}')


def test_dense_record_names_exactly_one_object() -> None:
    entry = {
        "dtype": "float32",
        "shape": [1],
        "hash": "a" * 64,
        "storage": {"encoding": "dense", "objects": [{"oid": "b" * 64, "size": 1}] * 2},
    }
    with pytest.raises(
        ManifestError, match="^tensor `t` is dense but lists 2 objects: the file is damaged"
    ):
        TensorRecord.from_json("t", entry)


def test_storage_is_a_tagged_value_parsed_by_its_encoding() -> None:
    from git_theta.manifest import parse_storage

    storage = parse_storage("w", {"encoding": "dense", "objects": [{"oid": A, "size": 10}]})
    assert storage == Dense(ObjectRef(A, 10))
    assert storage.objects == (ObjectRef(A, 10),)
    record = Manifest.from_bytes(_manifest_bytes({"w": _entry()})).tensors["w"]
    assert (record.encoding, record.storage) == ("dense", Dense(ObjectRef(A, 10)))


def test_a_registered_encoding_slots_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later encoding is one record type in the registry: parsed, listed for transfers and
    written back in canonical form with nothing else changed."""
    from dataclasses import dataclass
    from typing import ClassVar

    from git_theta import manifest as manifest_module

    @dataclass(frozen=True)
    class Pair(manifest_module.Storage):
        first: ObjectRef
        second: ObjectRef
        encoding: ClassVar[str] = "pair"

        @property
        def objects(self) -> tuple[ObjectRef, ...]:
            return (self.first, self.second)

        def to_json(self) -> dict[str, Any]:
            return {
                "encoding": "pair",
                "objects": [{"oid": o.oid, "size": o.size} for o in self.objects],
            }

        @classmethod
        def from_json(cls, name: str, value: dict[str, Any]) -> Pair:
            first, second = manifest_module._object_refs(name, value["objects"])
            return cls(first, second)

    monkeypatch.setitem(manifest_module.ENCODINGS, "pair", Pair)
    entry = _entry(encoding="pair", objects=[{"oid": A, "size": 3}, {"oid": B, "size": 4}])
    parsed = Manifest.from_bytes(_manifest_bytes({"w": entry}))
    assert parsed.tensors["w"].storage == Pair(ObjectRef(A, 3), ObjectRef(B, 4))
    assert parsed.objects() == {A: ["w"], B: ["w"]}
    assert Manifest.from_bytes(parsed.to_bytes()) == parsed

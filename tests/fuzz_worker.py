"""The product side of the mutation tests (tests/test_fuzz.py), run as a separate process
under an address-space limit: ``python -m tests.fuzz_worker DIR``.

Reads one JSON request per line on stdin and answers one JSON line on stdout:

- ``{"kind": "file", "name": N, "data": b64}``: store the checkpoint (clean), rebuild it from
  its manifest (smudge), check that its own library loads the rebuilt file and that storing
  that gives the same manifest. Answers ``{"manifest": text, "identical": bool}``.
- ``{"kind": "manifest", "data": b64}``: rebuild a file from the manifest bytes, then the
  same checks. Answers ``{"manifest": text, "identical": bool}``.
- ``{"kind": "object", "data": b64}``: put the bytes in the store as an object (its oid is
  their sha256) and answer ``{"oid": oid, "size": n}``.

A failure the user would see as a message answers ``{"error": message}``; anything else
(raw exception text, a rebuilt file its library refuses, a round trip that changes the
manifest) answers ``{"raw": description}``. A crash or hang is seen by the test as a dead or
silent worker.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import traceback
from pathlib import Path

from git_theta import config as theta_config
from git_theta import filter as theta_filter
from git_theta.errors import ThetaError
from git_theta.manifest import Manifest
from git_theta.store import ObjectStore


class Mismatch(Exception):
    """The product accepted the input but did not round-trip it exactly."""


def _library_loads(name: str, data: bytes) -> None:
    """The rebuilt file must be one its format's own library accepts."""
    if name == "pytorch":
        import torch

        torch.load(io.BytesIO(data), weights_only=True)
    elif name == "safetensors":
        from safetensors.numpy import load

        load(data)
    elif name == "numpy":
        import numpy as np

        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.ndarray):
            [loaded[key] for key in loaded.files]
    elif name == "gguf":
        import tempfile

        import gguf

        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(data)
            f.flush()
            [t.data for t in gguf.GGUFReader(f.name).tensors]
    elif name == "flax":
        import msgpack

        msgpack.unpackb(data, strict_map_key=False)


class Worker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = ObjectStore(root / "lfs")
        self.config = theta_config.load({})
        self.work = root / "work"
        self.work.mkdir(parents=True, exist_ok=True)

    def _clean(self, data: bytes, name: str) -> bytes:
        path = self.work / "input"
        path.write_bytes(data)
        return theta_filter.clean(path, None, self.store, self.config, name=name)

    def _smudge(self, manifest: Manifest) -> bytes:
        out = io.BytesIO()
        theta_filter.smudge(manifest, self.store, out, self.config)
        return out.getvalue()

    def _round_trip(self, manifest: Manifest, name: str, exact: bool) -> dict[str, object]:
        """Rebuilds the file; storing it and rebuilding again must give the same bytes, and
        (``exact``) the same manifest. A manifest edited by hand may name tensors otherwise
        than the reader would (the names are paths in the tree), so for those the file is
        what must come back."""
        rebuilt = self._smudge(manifest)
        try:
            _library_loads(manifest.format["name"], rebuilt)
        except Exception as exc:
            raise Mismatch(f"the rebuilt file is refused by its library: {exc!r:.300}") from exc
        again = self._clean(rebuilt, name)
        if exact and again != manifest.to_bytes():
            raise Mismatch(
                "storing the rebuilt file gives another manifest:\n"
                f"{manifest.to_bytes().decode()[:2000]}\n---\n{again.decode()[:2000]}"
            )
        stored = Manifest.from_bytes(again)
        # CRC-32s in a manifest are trusted (torch.load does not check them): a manifest with
        # a wrong one rebuilds with it, and the file stored again has the right one
        right = {record.hash: record.crc32 for record in stored.tensors.values()}
        wrong_crc = any(
            record.crc32 not in (None, right.get(record.hash))
            for record in manifest.tensors.values()
        )
        if not wrong_crc and self._smudge(stored) != rebuilt:
            raise Mismatch("the rebuilt file, stored and rebuilt again, is not the same file")
        return {"manifest": again.decode(), "rebuilt": base64.b64encode(rebuilt).decode()}

    def handle(self, request: dict[str, str]) -> dict[str, object]:
        data = base64.b64decode(request["data"])
        if request["kind"] == "object":
            oid = hashlib.sha256(data).hexdigest()
            path = self.store.objects_dir / oid[:2] / oid[2:4] / oid
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return {"oid": oid, "size": len(data)}
        name = request.get("name", "model")
        if request["kind"] == "file":
            manifest = Manifest.from_bytes(self._clean(data, name))
        else:
            manifest = Manifest.from_bytes(data)
        result = self._round_trip(manifest, name, exact=request["kind"] == "file")
        result["identical"] = base64.b64decode(str(result.pop("rebuilt"))) == data
        return result


def main() -> None:
    worker = Worker(Path(sys.argv[1]))
    for line in sys.stdin:
        try:
            answer = worker.handle(json.loads(line))
        except ThetaError as exc:
            answer = {"error": str(exc)}
        except Mismatch as exc:
            answer = {"raw": str(exc)}
        except Exception as exc:  # what a user would see as raw exception text
            answer = {"raw": "".join(traceback.format_exception(exc))[-3000:]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Hostile packed files: checksums are recomputed by the attacker, so only the reader's checks
stand between a file and a memory bomb or silently wrong weights.

The fuzz test mutates one header field at a time (off by one, zero, negative, huge, wrong
type, swapped with another field, removed, an unknown field added, another valid choice),
recomputes every CRC32 and the SHA-256, and requires that decoding gives either a
``ValueError`` or exactly the original model (same tensors, same layer types, same outputs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sparseprior.compress import QuantSpec, freeze_quantized_, pack, quantize_, unpack
from sparseprior.compress.pack import decode_positions, encode_positions, load_packed
from sparseprior.compress.packschema import ReadLimits, inflate_bounded
from sparseprior.models import build_model
from sparseprior.sparsity import SparsityConfig, sparsify_

SMALL = {"in_channels": 1, "num_classes": 4, "input_size": 12}
PREFIX = struct.Struct("<4sHHI")


def sparse_quant_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp", hidden=[32, 16], **SMALL)
    sparsify_(model, SparsityConfig(sparsity=0.8, distribution="uniform"))
    with torch.no_grad():
        for layer in (model.features[0], model.features[2], model.classifier):
            layer.bias.normal_()
    quantize_(model, QuantSpec(4, scale_dtype="float16", bias_dtype="float16"),
              names=["features.0"])
    quantize_(model, QuantSpec(3, "uniform", "tensor", symmetric=False), names=["features.2"])
    freeze_quantized_(model)
    return model.eval()


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet", depth=8, width=0.25, **SMALL)
    model.train()
    model(torch.randn(8, 1, 12, 12))  # non-trivial BatchNorm statistics and counters
    sparsify_(model, SparsityConfig(sparsity=0.7, distribution="uniform"))
    quantize_(model, QuantSpec(5, "pow2"), names=["stages.1.0.conv1"])
    freeze_quantized_(model)
    return model.eval()


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, tuple[Path, nn.Module]]:
    folder = tmp_path_factory.mktemp("packed")
    out = {}
    mlp = sparse_quant_mlp()
    build = {"hidden": [32, 16], **SMALL}
    pack(mlp, folder / "delta.sppk", model_name="mlp", build=build, positions="delta",
         version=1)
    pack(mlp, folder / "bitmap.sppk", model_name="mlp", build=build, positions="bitmap",
         version=1)
    pack(mlp, folder / "v2.sppk", model_name="mlp", build=build)
    out["delta"] = (folder / "delta.sppk", mlp)
    out["bitmap"] = (folder / "bitmap.sppk", mlp)
    out["v2"] = (folder / "v2.sppk", mlp)
    net = small_resnet()
    pack(net, folder / "resnet.sppk", model_name="resnet", build={"depth": 8, "width": 0.25,
                                                                  **SMALL})
    out["resnet"] = (folder / "resnet.sppk", net)
    return out


# --------------------------------------------------------------------------- file surgery


def split(path: Path) -> tuple[int, int, dict[str, Any], bytes]:
    data = path.read_bytes()
    _, version, flags, head_len = PREFIX.unpack_from(data)
    header = json.loads(zlib.decompress(data[12:12 + head_len]))
    return version, flags, header, data[12 + head_len:-32]


def forge(path: Path, header: Any, payload: bytes, *, version: int | None = None,
          flags: int = 1, head: bytes | None = None, fix_crc: bool = True) -> Path:
    """Write a file with valid checksums around ``header``/``payload``, as an attacker can
    (``version``: the prefix's, by default the header's)."""
    if version is None:
        version = header.get("version", 1) if isinstance(header, dict) else 1
        version = version if isinstance(version, int) and 0 <= version < 2**16 else 1
    if fix_crc and isinstance(header, dict) and isinstance(header.get("tensors"), list):
        for rec in header["tensors"]:
            try:
                start = rec["offset"]
                length = sum(p[1] for p in rec["parts"])
                rec["crc32"] = zlib.crc32(payload[start:start + length])
            except Exception:  # a mutated record: leave its CRC as it is
                pass
    if head is None:
        text = json.dumps(header, separators=(",", ":")).encode()
        head = zlib.compress(text, 9) if flags & 1 else text
    body = PREFIX.pack(b"SPPK", version, flags, len(head)) + head + payload
    path.write_bytes(body + hashlib.sha256(body).digest())
    return path


def same_model(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb) or any(sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])
                                   for k in sa):
        return False
    if [type(m).__name__ for m in a.modules()] != [type(m).__name__ for m in b.modules()]:
        return False
    x = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def assert_error_or_original(path: Path, original: nn.Module, case: str) -> str:
    """Decode ``path``: a ValueError (returned as 'error') or exactly ``original`` ('same')."""
    try:
        model = unpack(path)
    except ValueError as err:
        assert str(err), case
        return "error"
    except Exception as err:  # noqa: BLE001 - any other type is the failure we look for
        pytest.fail(f"{case}: {type(err).__name__} instead of ValueError: {err}")
    assert same_model(model, original), f"{case}: decoded to a different model"
    return "same"


# --------------------------------------------------------------------------- mutations


def leaves(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every value in a JSON tree (containers included, the root excluded)."""
    out = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += leaves(v, path + (i,))
    return out


def get(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


CHOICES = ["codes", "float", "raw", "bitmap", "delta", "float32", "int64", "float16", "uint8",
           "uniform", "pow2", "tensor", "channel", "Linear", "Conv2d", "BatchNorm2d", "mlp",
           "resnet", "lenet5", "features.0.weight", "values", "positions", "scale",
           "none", "zlib", "lzma", "zstd", "brotli", "ans"]


def mutations(value: Any, other: Any, rng: random.Random) -> list[tuple[str, Any]]:
    """Candidate replacements for one field (``other``: a value from elsewhere to swap in)."""
    out: list[tuple[str, Any]] = [("swap", other), ("none", None), ("wrong-type", [value]),
                                  ("dict", {"x": 1})]
    if isinstance(value, bool):
        out += [("flip", not value), ("int", int(value))]
    elif isinstance(value, int):
        out += [("+1", value + 1), ("-1", value - 1), ("zero", 0), ("negative", -value - 1),
                ("huge", 2**40 + value), ("huger", 10**30), ("float", value + 0.5),
                ("string", str(value)), ("double", 2 * value), ("half", value // 2)]
    elif isinstance(value, float):
        out += [("+1", value + 1), ("zero", 0.0), ("negative", -value), ("huge", 1e300),
                ("string", str(value)), ("int", int(value))]
    elif isinstance(value, str):
        out += [("empty", ""), ("suffix", value + "x"), ("choice", rng.choice(CHOICES)),
                ("long", value * 1000)]
    elif isinstance(value, list):
        out += [("empty", []), ("shorter", value[:-1]), ("longer", value + value[-1:]),
                ("reversed", value[::-1]), ("huge-list", [2**31] * max(len(value), 1))]
    elif isinstance(value, dict):
        out += [("empty", {}), ("drop-key", {k: v for k, v in list(value.items())[1:]}),
                ("extra-key", {**value, "unexpected": 1})]
    return out


def mutate(header: dict[str, Any], rng: random.Random) -> tuple[str, dict[str, Any]]:
    paths = [p for p in leaves(header) if p[-1] != "crc32"]
    path = rng.choice(paths)
    other = get(header, rng.choice(paths))
    name, value = rng.choice(mutations(get(header, path), other, rng))
    if rng.random() < 0.05 and isinstance(get(header, path[:-1]), dict):
        name, value = "delete", None
    new = copy.deepcopy(header)
    parent = get(new, path[:-1])
    if name == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return f"{'/'.join(map(str, path))} {name}", new


@pytest.mark.parametrize("kind,cases", [("delta", 90), ("bitmap", 30), ("v2", 110),
                                        ("resnet", 60)])
def test_fuzz_header_fields_error_or_original(packed, tmp_path, kind, cases):
    path, original = packed[kind]
    version, flags, header, payload = split(path)
    rng = random.Random(f"sppk-fuzz-{kind}")
    outcomes = {"error": 0, "same": 0}
    for i in range(cases):
        case, bad = mutate(header, rng)
        target = forge(tmp_path / f"{i}.sppk", bad, payload, version=version, flags=flags)
        outcomes[assert_error_or_original(target, original, case)] += 1
    assert outcomes["error"] > cases // 2  # the mutations do reach the checks


@pytest.mark.parametrize("field,values", [("version", [0, 2, 3, 65535]),  # the file is v1
                                          ("flags", [0, 2, 3, 0x8001])])
def test_fuzz_prefix_fields(packed, tmp_path, field, values):
    path, original = packed["delta"]
    version, flags, header, payload = split(path)
    for value in values:
        kwargs = {"version": version, "flags": flags, field: value}
        if field == "flags" and value & 1:
            head = None
        else:
            head = zlib.compress(json.dumps(header).encode())  # compressed, flag says not
        target = forge(tmp_path / "p.sppk", header, payload, head=head, **kwargs)
        with pytest.raises(ValueError):
            unpack(target)


def test_unmodified_forgery_round_trips(packed, tmp_path):
    for kind, (path, original) in packed.items():
        version, flags, header, payload = split(path)
        target = forge(tmp_path / f"{kind}.sppk", header, payload, version=version, flags=flags)
        assert assert_error_or_original(target, original, kind) == "same"


# --------------------------------------------------------------------------- named attacks


def test_delta_bits_changes_never_decode_silently(packed, tmp_path):
    """The issue's case: delta_bits 2 -> 1 decoded 13,104 of 30,000 weights wrong."""
    path, original = packed["delta"]
    _, _, header, payload = split(path)
    deltas = [i for i, r in enumerate(header["tensors"]) if r.get("positions") == "delta"]
    assert [header["tensors"][i]["name"] for i in deltas][::5] == ["features.0.weight",
                                                                   "classifier.bias"]
    deltas = deltas[::5]  # a 922-entry stream and a 4-entry one
    for i in deltas:
        rec = header["tensors"][i]
        for bits in range(1, 17):
            if bits == rec["delta_bits"]:
                continue
            bad = copy.deepcopy(header)
            bad["tensors"][i]["delta_bits"] = bits
            target = forge(tmp_path / "d.sppk", bad, payload)
            if rec["nnz"] > 100:  # a real stream: every other width is caught
                with pytest.raises(ValueError, match=rec["name"]):
                    unpack(target)
            else:  # e.g. 4 zero gaps read the same at 1 or 2 bits: then the same weights
                assert_error_or_original(target, original, f"{rec['name']} bits={bits}")


def refusal_peak_bytes(path: Path, match: str) -> int:
    """Peak Python allocation while ``unpack(path)`` refuses the file with ``match``."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            unpack(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zlib_header_bomb_is_refused_without_inflating(packed, tmp_path):
    path, _ = packed["delta"]
    _, _, header, payload = split(path)
    text = json.dumps(header).encode()
    bomb = zlib.compress(text[:-1] + b" " * (64 * 2**20) + b"}", 1)  # 64 MiB of whitespace
    assert len(bomb) < 400_000
    target = forge(tmp_path / "bomb.sppk", header, payload, head=bomb)
    assert refusal_peak_bytes(target, "inflates to more than") < 40 * 2**20
    with pytest.raises(ValueError, match="inflates to more than 1000 bytes"):
        inflate_bounded(zlib.compress(b"x" * 5000), 1000, "test stream")
    with pytest.raises(ValueError, match="trailing bytes"):
        inflate_bounded(zlib.compress(b"x") + b"junk", 1000, "test stream")


def _resize_mlp(header: dict[str, Any], hidden: list[int]) -> dict[str, Any]:
    """The MLP header re-declared with other hidden sizes, consistently everywhere."""
    bad = copy.deepcopy(header)
    bad["architecture"]["build"]["hidden"] = hidden
    layers = bad["architecture"]["layers"]
    sizes = [144, *hidden, 4]
    for j, name in enumerate(["features.0", "features.2", "classifier"]):
        layers[name]["in"], layers[name]["out"] = sizes[j], sizes[j + 1]
    for rec in bad["tensors"]:
        j = {"features.0": 0, "features.2": 1, "classifier": 2}[rec["name"].rsplit(".", 1)[0]]
        rec["shape"] = [sizes[j + 1], sizes[j]] if rec["name"].endswith("weight") \
            else [sizes[j + 1]]
        if rec.get("scale_len", 1) > 1:
            rec["scale_len"] = sizes[j + 1]
    return bad


def test_huge_hidden_sizes_are_refused_before_allocation(packed, tmp_path):
    """The issue's case: a 33 KB header declaring hidden 60000, 60000 allocated 14 GB."""
    path, _ = packed["delta"]
    _, _, header, payload = split(path)
    target = forge(tmp_path / "huge.sppk", _resize_mlp(header, [60000, 60000]), payload)
    assert refusal_peak_bytes(target, "max_params") < 20 * 2**20
    # under a raised cap the sizes are consistent, so the payload lengths are what fails
    with pytest.raises(ValueError, match="part|positions|delta"):
        load_and_decode(target, max_params=2**32)


def load_and_decode(path: Path, **limits: Any) -> None:
    from sparseprior.compress.pack import _decode_all

    packed = load_packed(path, **limits)
    _decode_all(packed)


def test_delta_tensor_with_huge_numel_is_refused(packed, tmp_path):
    """The issue's case: a 32 KB delta-coded tensor declaring ~11 G entries was allocated."""
    path, _ = packed["delta"]
    _, _, header, payload = split(path)
    bad = _resize_mlp(header, [100_000, 100_000])
    target = forge(tmp_path / "numel.sppk", bad, payload)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="max_params"):
            unpack(target)
        with pytest.raises(ValueError, match="max_params=1,000"):
            unpack(path, max_params=1000)  # the cap applies to honest files too
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_limits_from_env_and_file_size_cap(packed, monkeypatch):
    path, original = packed["delta"]
    monkeypatch.setenv("SPARSEPRIOR_MAX_PARAMS", "100")
    with pytest.raises(ValueError, match="SPARSEPRIOR_MAX_PARAMS"):
        unpack(path)
    assert same_model(unpack(path, max_params=10**6), original)  # the argument wins
    monkeypatch.setenv("SPARSEPRIOR_MAX_PARAMS", "many")
    with pytest.raises(ValueError, match="SPARSEPRIOR_MAX_PARAMS='many'"):
        unpack(path)
    monkeypatch.delenv("SPARSEPRIOR_MAX_PARAMS")
    with pytest.raises(ValueError, match="max_bytes=100 "):
        unpack(path, max_bytes=100)
    with pytest.raises(ValueError, match="max_params must be a positive integer"):
        ReadLimits(max_params=0)


def test_dtype_comes_from_an_allow_list(packed, tmp_path):
    path, _ = packed["resnet"]
    _, _, header, payload = split(path)
    raw = [i for i, r in enumerate(header["tensors"]) if r["encoding"] == "raw"][0]
    for dtype in ("Tensor", "__class__", "float32", "complex64", "qint8", "int32"):
        bad = copy.deepcopy(header)
        bad["tensors"][raw]["dtype"] = dtype
        with pytest.raises(ValueError, match="dtype"):
            unpack(forge(tmp_path / "t.sppk", bad, payload))


def test_errors_name_the_tensor_and_field(packed, tmp_path):
    path, _ = packed["delta"]
    _, _, header, payload = split(path)
    bad = copy.deepcopy(header)
    rec = bad["tensors"][0]
    rec["nnz"] = rec["nnz"] + 1
    with pytest.raises(ValueError, match=r"features\.0\.weight"):
        unpack(forge(tmp_path / "n.sppk", bad, payload))
    bad = copy.deepcopy(header)
    bad["tensors"][2]["shape"] = [16, 33]
    with pytest.raises(ValueError, match=r"features\.2\.weight.*shape"):
        unpack(forge(tmp_path / "s.sppk", bad, payload))
    bad = copy.deepcopy(header)
    bad["architecture"]["layers"]["features.0"]["quant"]["bits"] = 5
    with pytest.raises(ValueError, match="quantizes it with"):
        unpack(forge(tmp_path / "q.sppk", bad, payload))


def test_geometry_and_constants_must_match_the_registry_model(packed, tmp_path):
    path, _ = packed["resnet"]
    _, _, header, payload = split(path)
    for layer, key, value in [("conv1", "stride", [2, 2]), ("conv1", "padding", [0, 0]),
                              ("bn1", "eps", 0.1), ("stages.0.0.conv1", "dilation", [2, 2])]:
        bad = copy.deepcopy(header)
        bad["architecture"]["layers"][layer][key] = value
        with pytest.raises(ValueError, match=f"{layer}.*{key}"):
            unpack(forge(tmp_path / "g.sppk", bad, payload))


def test_strict_position_streams():
    rng = np.random.default_rng(0)
    mask = rng.random(500) < 0.1
    nnz = int(mask.sum())
    kind, bits, data = encode_positions(mask, "delta")
    assert np.array_equal(decode_positions(data, kind, bits, 500, nnz), mask)
    with pytest.raises(ValueError, match="non-zeros end after|holds"):
        decode_positions(data + b"\x00", kind, bits, 500, nnz)  # an extra byte
    with pytest.raises(ValueError):
        decode_positions(data, kind, bits, 500, nnz - 1)  # a non-zero left unread
    with pytest.raises(ValueError, match="beyond"):
        decode_positions(data, kind, bits, 40, nnz)
    kind, bits, bitmap = encode_positions(mask, "bitmap")
    padded = bitmap[:-1] + bytes([bitmap[-1] | 0x80])  # 500 bits: the last 4 are padding
    with pytest.raises(ValueError, match="padding"):
        decode_positions(padded, "bitmap", 0, 500, nnz)


# --------------------------------------------------------------------------- version 2


def test_v1_files_stay_readable_and_v2_is_smaller(packed):
    v1, original = packed["delta"]
    v2, _ = packed["v2"]
    assert split(v1)[0] == 1 and split(v2)[0] == 2
    assert same_model(unpack(v1), original) and same_model(unpack(v2), original)
    assert v2.stat().st_size < v1.stat().st_size


def test_v2_coded_payload_corruption_with_fixed_checksums(packed, tmp_path):
    """Flip bits inside entropy-coded parts (CRC32 and SHA-256 recomputed): each decoder must
    answer ValueError or a well-formed model (a rewritten payload is just other weights), never
    another exception. Swapping a part's coder (a header field) gives an error or the original.
    """
    path, original = packed["v2"]
    _, _, header, payload = split(path)
    rng = random.Random("sppk-v2-payload")
    coded = []
    for i, rec in enumerate(header["tensors"]):
        start = rec["offset"]
        for (name, length), coder in zip(rec["parts"], rec["coders"], strict=True):
            if coder != "none" and length:
                coded.append((i, name, start, length, coder))
            start += length
    assert {c[4] for c in coded} - {"none"}  # the file does use coders
    outcomes = {"error": 0, "same": 0}
    for i, name, start, length, coder in coded:
        for _ in range(6):
            pos = start + rng.randrange(length)
            bad = bytearray(payload)
            bad[pos] ^= 1 << rng.randrange(8)
            target = forge(tmp_path / "c.sppk", copy.deepcopy(header), bytes(bad))
            try:
                unpack(target)
            except ValueError:
                outcomes["error"] += 1
            except Exception as err:  # noqa: BLE001 - the failure we look for
                pytest.fail(f"{name} {coder} @{pos}: {type(err).__name__}: {err}")
        for other in ("none", "zlib", "lzma", "zstd", "brotli", "ans", "rle"):
            if other == coder:
                continue
            bad_header = copy.deepcopy(header)
            rec = bad_header["tensors"][i]
            rec["coders"][[p[0] for p in rec["parts"]].index(name)] = other
            target = forge(tmp_path / "s.sppk", bad_header, payload)
            outcomes[assert_error_or_original(target, original, f"{name} as {other}")] += 1
    assert outcomes["error"] > 0


def test_v2_coders_are_bounded():
    from sparseprior.compress.entropy import CODERS, decode_part

    data = bytes(range(256)) * 40
    for name in CODERS.names():
        if not CODERS.get(name).available():  # optional packages (zstandard, brotli, ...)
            continue
        stored = CODERS.get(name).encode(data)
        assert decode_part(name, stored, len(data), "p") == data
        with pytest.raises(ValueError, match="more than the 10239 bytes"):
            decode_part(name, stored, len(data) - 1, "p")
        if name != "none":
            with pytest.raises(ValueError):
                decode_part(name, stored + b"\x00", len(data), "p")
    with pytest.raises(ValueError, match="unknown coder 'rle'"):
        decode_part("rle", b"", 10, "p")

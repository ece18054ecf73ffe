"""How the codec library was chosen: µs per decode/encode of a small request, and
strictness on ../shared/vectors/ziproto.json, for msgspec, orjson, msgpack,
ormsgpack and the stdlib.

    pip install orjson msgpack ormsgpack   # besides the project
    python bench/codec_choice.py

Not part of the test suite; the figures are in the note of issue 2.
"""
# ruff: noqa

import ast, json, timeit, msgspec, orjson, msgpack, ormsgpack

V = json.load(
    open(
        __import__("pathlib").Path(__file__).resolve().parents[2]
        / "shared"
        / "vectors"
        / "ziproto.json"
    )
)
req = {"id": 123, "method": "echo", "params": {"text": "hello", "n": [1, 2, 3]}}
jb = json.dumps(req).encode()
mb = msgpack.packb(req)
print("json bytes", len(jb), "msgpack bytes", len(mb))
mj_dec = msgspec.json.Decoder()
mj_enc = msgspec.json.Encoder()
mm_dec = msgspec.msgpack.Decoder()
mm_enc = msgspec.msgpack.Encoder()
N = 200000


def t(name, f):
    s = min(timeit.repeat(f, number=N, repeat=5)) / N * 1e6
    print(f"{name:32s} {s:.3f} us")


t("stdlib json.loads", lambda: json.loads(jb))
t("stdlib json.dumps", lambda: json.dumps(req).encode())
t("msgspec.json decode", lambda: mj_dec.decode(jb))
t("msgspec.json encode", lambda: mj_enc.encode(req))
t("orjson loads", lambda: orjson.loads(jb))
t("orjson dumps", lambda: orjson.dumps(req))
t("msgspec.msgpack decode", lambda: mm_dec.decode(mb))
t("msgspec.msgpack encode", lambda: mm_enc.encode(req))
t("msgpack.unpackb", lambda: msgpack.unpackb(mb, strict_map_key=False))
t("msgpack.packb", lambda: msgpack.packb(req))
t("ormsgpack unpackb", lambda: ormsgpack.unpackb(mb))
t("ormsgpack packb", lambda: ormsgpack.packb(req))


# strictness
def chk(name, dec, enc):
    bad = []
    for v in V["roundtrip"]:
        val = ast.literal_eval(v["value"])
        h = bytes.fromhex(v["hex"])
        try:
            if enc(val) != h:
                bad.append(("enc", v["name"], enc(val).hex()))
            if dec(h) != val:
                bad.append(("dec", v["name"]))
        except Exception as e:
            bad.append(("exc", v["name"], repr(e)))
    for v in V["decode_only"]:
        try:
            if dec(bytes.fromhex(v["hex"])) != ast.literal_eval(v["value"]):
                bad.append(("dec", v["name"]))
        except Exception as e:
            bad.append(("exc", v["name"], repr(e)))
    for v in V["invalid"]:
        try:
            r = dec(bytes.fromhex(v["hex"]))
            bad.append(("accepted", v["name"], r))
        except Exception:
            pass
    print(name, bad)


chk("msgspec", mm_dec.decode, mm_enc.encode)
chk(
    "msgpack",
    lambda b: msgpack.unpackb(b, strict_map_key=False, raw=False),
    lambda v: msgpack.packb(v, use_bin_type=True),
)
chk("ormsgpack", ormsgpack.unpackb, ormsgpack.packb)
for b in [
    b'{"a": "\xff\xfe"}',
    b'{"a":1} x',
    b'{"a":1}',
    b'{"a": 1e400}',
    b'{"a": 123456789012345678901234567890}',
    b'{"a":NaN}',
]:
    for n, d in [("msgspec", mj_dec.decode), ("orjson", orjson.loads)]:
        try:
            print(n, b, d(b))
        except Exception as e:
            print(n, b, "ERR", type(e).__name__, e)

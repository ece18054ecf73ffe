"""Every reason why a value does not convert to a type, with paths; no I/O.

Theory of operation
-------------------
``msgspec.convert(value, T, strict=True)`` stops at the first error and says
it in one string. :func:`collect` is called after it failed (it is the slow
path) and lists every error, each as ``{"path": [...], "code": ..., "msg": ...}``.

- **Compiled once per type.** :func:`_walker` turns ``msgspec.inspect.type_info(T)``
  into a tree of nodes (cached, ``functools.lru_cache``; a recursive Struct
  gives a cycle). Containers (objects, arrays, tuples, dicts, unions) walk
  the value; leaves (scalars, constrained scalars, enums, literals,
  datetimes...) ask ``msgspec.convert`` itself, so a leaf accepts exactly what
  msgspec accepts, and common plain scalars (``int``, ``str``...) are accepted
  by their exact Python type without a call. A value whose shape a container
  does not walk (a set for a list, a Struct instance for a Struct) is treated
  as a leaf too: one error, msgspec's own message.
- **Never a false "all good".** When the walk finds nothing, the whole value
  is converted once more; if msgspec still refuses it (a ``__post_init__``, a
  case the walker does not model), that is the one error, at the root. A
  type msgspec does not support is one error, never an exception.
- **Bounded.** The path is one shared stack (each error copies at most
  :data:`MAX_PATH` elements; keys the peer chose are cut at 64 characters);
  the walk stops once it holds ``max_errors + 1`` errors (:class:`_FullError`);
  past :data:`_MAX_DEPTH` nested containers a subtree is one leaf (no
  recursion limit can be reached). A tagged union whose tag is missing or
  unknown is walked once per member to name the closest, but not inside
  another such trial, so the work stays linear in the value's size.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import re
import uuid
from typing import Annotated, Any, Final, Literal, Union

import msgspec
from msgspec import inspect as mi

MAX_ERRORS: Final = 20  # errors reported at most
MAX_MESSAGE: Final = 200  # characters of a msg at most
MAX_PATH: Final = 32  # path elements at most (deeper paths are cut, with "..." last)
_MAX_DEPTH: Final = 64  # nested containers walked; deeper, a subtree is one leaf
_MAX_KEY: Final = 64  # characters of a key from the value, in a path or a msg

_KINDS: Final[dict[type, str]] = {
    type(None): "null", bool: "bool", int: "int", float: "float", str: "str",
    bytes: "bytes", list: "array", tuple: "array", dict: "object",
}  # fmt: skip
_ARRAYS: Final[tuple[type, ...]] = (list, tuple)
_AT: Final = re.compile(r" - at `[^`]*`(?: in `[^`]*`)?\Z")  # msgspec's path suffix
_ACCEPT: Final[dict[type, tuple[type, ...]]] = {
    mi.IntType: (int,), mi.FloatType: (float, int), mi.StrType: (str,),
    mi.BoolType: (bool,), mi.NoneType: (type(None),),
}  # fmt: skip
_SCALARS: Final[dict[type, Any]] = {
    mi.NoneType: None, mi.BoolType: bool, mi.DateType: datetime.date,
    mi.TimeDeltaType: datetime.timedelta, mi.UUIDType: uuid.UUID,
    mi.DecimalType: decimal.Decimal, mi.ExtType: msgspec.msgpack.Ext, mi.RawType: msgspec.Raw,
}  # fmt: skip
_NUMBER: Final = ("gt", "ge", "lt", "le", "multiple_of")
_LENGTH: Final = ("min_length", "max_length")
_CONSTRAINED: Final[dict[type, tuple[Any, tuple[str, ...]]]] = {
    mi.IntType: (int, _NUMBER), mi.FloatType: (float, _NUMBER),
    mi.StrType: (str, (*_LENGTH, "pattern")), mi.BytesType: (bytes, _LENGTH),
    mi.ByteArrayType: (bytearray, _LENGTH), mi.MemoryViewType: (memoryview, _LENGTH),
    mi.DateTimeType: (datetime.datetime, ("tz",)), mi.TimeType: (datetime.time, ("tz",)),
}  # fmt: skip
_COLLECTIONS: Final[dict[type, Any]] = {
    mi.ListType: list,
    mi.SetType: set,
    mi.FrozenSetType: frozenset,
    mi.VarTupleType: tuple,
}


class _FullError(Exception):
    """The error list holds one more than its limit: stop walking."""


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _cut(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."


def _key(key: object) -> str | int:
    """A key of the value as a path element: str or int, bounded."""
    if type(key) is int and -(1 << 63) <= key < 1 << 64:
        return key
    return _cut(key if type(key) is str else repr(key)[: _MAX_KEY + 2], _MAX_KEY)


def _fails(value: object, type_: Any) -> str | None:
    """msgspec's message when ``value`` does not convert to ``type_``, else None."""
    try:
        msgspec.convert(value, type_, strict=True)
    except msgspec.ValidationError as exc:
        return str(exc)
    except Exception as exc:  # an unsupported type, a hook's error: msgspec's word
        return f"{type(exc).__name__}: {exc}"
    return None


class _Ctx:
    """One walk's state: the shared path stack, the errors, the limit, the depth."""

    __slots__ = ("depth", "errors", "limit", "path", "trial")

    def __init__(self, limit: int, path: list[Any], trial: bool = False) -> None:
        self.limit, self.path, self.trial = limit, path, trial
        self.errors: list[dict[str, Any]] = []
        self.depth = 0

    def add(self, code: str, msg: str, *last: Any) -> None:
        path = self.path + list(last) if last else self.path
        path = [*path[: MAX_PATH - 1], "..."] if len(path) > MAX_PATH else list(path)
        self.append({"path": path, "code": code, "msg": _cut(msg, MAX_MESSAGE)})

    def append(self, error: dict[str, Any]) -> None:
        self.errors.append(error)
        if len(self.errors) > self.limit:
            raise _FullError

    def attempt(self, node: _Container, value: Any, limit: int) -> list[dict[str, Any]]:
        """The errors ``node`` finds in ``value`` ignoring its tag (at most ``limit + 1``)."""
        sub, size = _Ctx(limit, self.path, trial=True), len(self.path)
        sub.depth = self.depth
        try:
            node.walk(value, sub, check_tag=False)
        except _FullError:
            del self.path[size:]
        return sub.errors


class _Node:
    """A type the walker does not look into: msgspec's one message, code ``type``."""

    fast: tuple[type, ...] = ()  # exact Python types accepted without a look

    def __init__(self, pytype: Any) -> None:
        self.pytype = pytype

    def walk(self, value: Any, ctx: _Ctx) -> None:
        msg = _fails(value, self.pytype)
        if msg is not None:
            ctx.add("type", msg)

    def skip(self, value: Any) -> bool:
        """Whether an item of an array or a dict need not be walked: never, for a leaf."""
        return False


class _Any(_Node):
    def walk(self, value: Any, ctx: _Ctx) -> None:
        pass


class _Leaf(_Node):
    """A scalar type; ``bases`` name the code when a looser type would accept the value."""

    def __init__(self, pytype: Any, fast: tuple[type, ...], bases: list[tuple[Any, str]]) -> None:
        super().__init__(pytype)
        self.fast, self.bases = fast, bases

    def walk(self, value: Any, ctx: _Ctx) -> None:
        if type(value) in self.fast:
            return
        msg = _fails(value, self.pytype)
        if msg is not None:
            code = next((c for base, c in self.bases if _fails(value, base) is None), "type")
            ctx.add(code, msg)


class _KeyLeaf(_Leaf):
    """A dict's key type: checked as msgspec checks keys (``{key: None}`` to ``dict[K, Any]``)."""

    def walk(self, value: Any, ctx: _Ctx) -> None:
        if type(value) in self.fast:
            return
        msg = _fails({value: None}, self.pytype)
        if msg is not None:
            found = (c for base, c in self.bases if _fails({value: None}, base) is None)
            ctx.add(next(found, "type"), "Invalid key: " + _AT.sub("", msg))


class _Container(_Node):
    """A type whose values are walked when they are of ``shape`` (dict, or list/tuple)."""

    shape: tuple[type, ...] = (dict,)

    def walk(self, value: Any, ctx: _Ctx, check_tag: bool = True) -> None:
        if type(value) not in self.shape or ctx.depth >= _MAX_DEPTH:
            super().walk(value, ctx)
            return
        ctx.depth += 1
        self.inner(value, ctx, check_tag)
        ctx.depth -= 1

    def inner(self, value: Any, ctx: _Ctx, check_tag: bool) -> None:
        raise NotImplementedError

    def skip(self, value: Any) -> bool:
        """Whether msgspec converts ``value``: most items of a large value are valid,
        and msgspec converts them faster than the walk looks at them."""
        try:
            msgspec.convert(value, self.pytype, strict=True)
        except Exception:  # the walk says what is wrong
            return False
        return True

    def check_tag(self, tag: Any, ctx: _Ctx, *last: Any) -> None:
        expected = self.tag
        if type(tag) is not type(expected):
            ctx.add("type", f"Expected `{_kind(expected)}`, got `{_kind(tag)}`", *last)
        elif tag != expected:
            ctx.add("value", f"Invalid value {_key(tag)!r}", *last)

    tag: Any = None


class _Object(_Container):
    """A Struct, TypedDict or dataclass from a dict: fields by their encoded names."""

    fields: dict[str, _Node]
    required: tuple[str, ...]
    forbid = False
    tag_field: str | None = None

    def inner(self, value: dict[Any, Any], ctx: _Ctx, check_tag: bool) -> None:
        path, fields = ctx.path, self.fields
        path.append("")
        for key, item in value.items():
            node = fields.get(key) if type(key) is str else None
            if node is not None:
                if type(item) not in node.fast:
                    path[-1] = key
                    node.walk(item, ctx)
            elif type(key) is not str:
                path[-1] = _key(key)
                ctx.add("type", f"Invalid key: Expected `str`, got `{_kind(key)}`")
            elif key == self.tag_field:
                if check_tag:
                    path[-1] = key
                    self.check_tag(item, ctx)
            elif self.forbid:
                path[-1] = _key(key)
                ctx.add("unknown", f"Object contains unknown field `{path[-1]}`")
        path.pop()
        for name in self.required:
            if name not in value:
                ctx.add("missing", f"Object missing required field `{name}`", name)


class _Row(_Container):
    """An ``array_like`` Struct or a NamedTuple: fields by position, the tag first."""

    shape = _ARRAYS
    fields: list[tuple[str, _Node]]
    required = 0  # fields that must be present (after the tag)
    forbid = False
    tagged = False

    def inner(self, value: list[Any], ctx: _Ctx, check_tag: bool) -> None:
        path, size, skip = ctx.path, len(value), int(self.tagged)
        if skip and size and check_tag:
            self.check_tag(value[0], ctx, 0)
        path.append(0)
        for i in range(skip, min(size, skip + len(self.fields))):
            node, item = self.fields[i - skip][1], value[i]
            if type(item) not in node.fast:
                path[-1] = i
                node.walk(item, ctx)
        path.pop()
        most = skip + len(self.fields)
        if self.forbid and size > most:
            ctx.add("unknown", f"Expected `array` of at most length {most}, got {size}", most)
        for i in range(size, skip + self.required):
            name = self.fields[i - skip][0] if i >= skip else "tag"
            if i >= skip or check_tag:
                ctx.add("missing", f"Array missing required field `{name}` (index {i})", i)


def _lengths(ctx: _Ctx, size: int, low: int | None, high: int | None, kind: str) -> None:
    if low is not None and size < low:
        ctx.add("constraint", f"Expected `{kind}` of length >= {low}")
    if high is not None and size > high:
        ctx.add("constraint", f"Expected `{kind}` of length <= {high}")


class _Array(_Container):
    """list, set, frozenset and ``tuple[T, ...]``, with their length constraints."""

    shape = _ARRAYS
    item: _Node

    def __init__(self, pytype: Any, low: int | None, high: int | None) -> None:
        super().__init__(pytype)
        self.low, self.high = low, high

    def inner(self, value: list[Any], ctx: _Ctx, check_tag: bool) -> None:
        _lengths(ctx, len(value), self.low, self.high, "array")
        path, fast, walk, skip = ctx.path, self.item.fast, self.item.walk, self.item.skip
        path.append(0)
        for i, item in enumerate(value):
            if type(item) not in fast and not skip(item):
                path[-1] = i
                walk(item, ctx)
        path.pop()


class _Dict(_Array):
    """``dict[K, V]``: each key checked as a key, each value at its key."""

    shape = (dict,)
    key: _Node

    def inner(self, value: dict[Any, Any], ctx: _Ctx, check_tag: bool) -> None:  # type: ignore[override]
        _lengths(ctx, len(value), self.low, self.high, "object")
        path, key, item = ctx.path, self.key, self.item
        path.append("")
        for k, v in value.items():
            if type(k) not in key.fast:
                path[-1] = _key(k)
                key.walk(k, ctx)
            if type(v) not in item.fast and not item.skip(v):
                path[-1] = _key(k)
                item.walk(v, ctx)
        path.pop()


class _Tuple(_Container):
    """``tuple[A, B]``: a fixed length, each item its type."""

    shape = _ARRAYS
    items: list[_Node]

    def inner(self, value: list[Any], ctx: _Ctx, check_tag: bool) -> None:
        if len(value) != len(self.items):
            ctx.add("type", f"Expected `array` of length {len(self.items)}, got {len(value)}")
        ctx.path.append(0)
        for i, (node, item) in enumerate(zip(self.items, value, strict=False)):
            ctx.path[-1] = i
            node.walk(item, ctx)
        ctx.path.pop()


class _Union(_Node):
    """A dict goes to the object member, a list to the array member, the tag choosing
    among tagged Structs; anything else is a leaf of the whole union."""

    def __init__(self, pytype: Any, objects: list[Any], rows: list[Any], leaf: _Leaf) -> None:
        super().__init__(pytype)
        self.objects, self.rows, self.leaf, self.fast = objects, rows, leaf, leaf.fast
        if objects or rows:
            self.skip = _Container.skip.__get__(self)  # type: ignore[method-assign]

    def walk(self, value: Any, ctx: _Ctx) -> None:
        kind = type(value)
        members = self.objects if kind is dict else self.rows if kind in _ARRAYS else []
        if not members:
            self.leaf.walk(value, ctx)
        elif len(members) == 1:
            members[0].walk(value, ctx)
        else:
            self.tagged(value, members, ctx)

    def tagged(self, value: Any, members: list[Any], ctx: _Ctx) -> None:
        if type(value) is dict:
            where: str | int = members[0].tag_field
            present, tag = where in value, value.get(where)
        else:
            where, present, tag = 0, bool(value), value[0] if value else None
        for member in members:
            if present and type(tag) is type(member.tag) and tag == member.tag:
                member.walk(value, ctx)
                return
        code = (
            "missing" if not present else "value" if type(tag) is type(members[0].tag) else "type"
        )
        msg = _AT.sub("", _fails(value, self.pytype) or f"Invalid value {_key(tag)!r}")
        if ctx.trial or ctx.depth >= _MAX_DEPTH:
            ctx.add(code, msg, where)
            return
        room = max(ctx.limit - len(ctx.errors) - 1, 0)
        name, best = "", None
        for member in members:  # the closest: the fewest errors, the first on a tie
            errors = ctx.attempt(member, value, room)
            if best is None or len(errors) < len(best):
                name, best = getattr(member.pytype, "__name__", repr(member.pytype)), errors
        ctx.add(code, f"{msg}; closest member: `{name}`", where)
        for error in best or ():
            ctx.append(error)


_MSGSPEC_ANY: Final[Any] = (Annotated, Literal, Union, dict, tuple)  # subscripted at run time
_ANNOTATED, _LITERAL, _UNION, _DICT, _TUPLE = _MSGSPEC_ANY


def _meta(base: Any, info: Any, names: tuple[str, ...]) -> Any:
    meta = {name: getattr(info, name) for name in names if getattr(info, name) is not None}
    return _ANNOTATED[base, msgspec.Meta(**meta)] if meta else base


def _py(info: Any) -> Any:
    """The Python type msgspec would give ``info`` (to ask msgspec.convert about it)."""
    kind = type(info)
    if kind is mi.Metadata:
        return _py(info.type)
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind is mi.AnyType:
        return Any
    if kind in _CONSTRAINED:
        return _meta(*_CONSTRAINED[kind][:1], info, _CONSTRAINED[kind][1])
    if kind in _COLLECTIONS:
        item = _py(info.item_type)
        base = _TUPLE[item, ...] if kind is mi.VarTupleType else _COLLECTIONS[kind][item]
        return _meta(base, info, _LENGTH)
    if kind is mi.DictType:
        return _meta(_DICT[_py(info.key_type), _py(info.value_type)], info, _LENGTH)
    if kind is mi.TupleType:
        return _TUPLE[tuple(_py(t) for t in info.item_types) or ()]
    if kind is mi.UnionType:
        return _UNION[tuple(_py(t) for t in info.types)]
    if kind is mi.LiteralType:
        return _LITERAL[info.values]
    cls = getattr(info, "cls", None)  # Struct, TypedDict, dataclass, NamedTuple, Enum, custom
    if cls is None:
        raise TypeError(f"{info!r} is not supported")
    return cls


def _unwrap(info: Any) -> Any:
    while type(info) is mi.Metadata:
        info = info.type
    return info


def _bases(info: Any) -> list[tuple[Any, str]]:
    """(looser type, code): a value the looser type accepts breaks a constraint or a value set."""
    kind = type(info)
    if kind in _CONSTRAINED:
        base, names = _CONSTRAINED[kind]
        return [(base, "constraint")] if any(getattr(info, n) is not None for n in names) else []
    if kind is mi.EnumType:
        values = [member.value for member in info.cls]
    elif kind is mi.LiteralType:
        values = list(info.values)
    else:
        return []
    return [(_UNION[tuple(dict.fromkeys(type(v) for v in values))], "value")]


def _leaf(info: Any, key: bool = False) -> _Leaf:
    info = _unwrap(info)
    bases = _bases(info)
    fast = () if bases else _ACCEPT.get(type(info), ())
    if key:
        return _KeyLeaf(_DICT[_py(info), Any], fast, [(_DICT[b, Any], c) for b, c in bases])
    return _Leaf(_py(info), fast, bases)


def _compile(info: Any, memo: dict[int, _Node]) -> _Node:
    """The walker of ``info``; ``memo`` (by id) closes the cycles of recursive types."""
    info = _unwrap(info)
    if id(info) in memo:
        return memo[id(info)]
    kind = type(info)
    if kind is mi.AnyType:
        return _Any(Any)
    if kind is mi.UnionType:
        members = [_compile(t, memo) for t in info.types]
        if any(isinstance(m, _Any) for m in members):
            return _Any(Any)
        pairs = zip(info.types, members, strict=True)
        scalar = [(t, m) for t, m in pairs if not isinstance(m, _Container)]
        fast = (
            ()
            if not all(m.fast for _, m in scalar)
            else tuple(x for _, m in scalar for x in m.fast)
        )
        leaf = _Leaf(_py(info), fast, [b for t, _ in scalar for b in _bases(_unwrap(t))])
        objects = [m for m in members if isinstance(m, _Container) and m.shape == (dict,)]
        rows = [m for m in members if isinstance(m, _Container) and m.shape is _ARRAYS]
        return _Union(_py(info), objects, rows, leaf)
    node: Any
    if kind in _COLLECTIONS or kind is mi.DictType:
        node = (_Dict if kind is mi.DictType else _Array)(
            _py(info), info.min_length, info.max_length
        )
        memo[id(info)] = node
        if kind is mi.DictType:
            node.key = _leaf(info.key_type, key=True)
        node.item = _compile(info.value_type if kind is mi.DictType else info.item_type, memo)
    elif kind is mi.TupleType:
        node = memo[id(info)] = _Tuple(_py(info))
        node.items = [_compile(t, memo) for t in info.item_types]
    elif kind in (mi.StructType, mi.TypedDictType, mi.DataclassType, mi.NamedTupleType):
        row = kind is mi.NamedTupleType or (kind is mi.StructType and info.array_like)
        node = memo[id(info)] = (_Row if row else _Object)(info.cls)
        node.forbid = kind is mi.NamedTupleType or getattr(info, "forbid_unknown_fields", False)
        node.tag_field, node.tag = getattr(info, "tag_field", None), getattr(info, "tag", None)
        node.tagged = node.tag_field is not None
        fields = [(f.encode_name, _compile(f.type, memo), f.required) for f in info.fields]
        if row:
            node.fields = [(name, field) for name, field, _ in fields]
            node.required = max((i + 1 for i, f in enumerate(fields) if f[2]), default=0)
        else:
            node.fields = {name: field for name, field, _ in fields}
            node.required = tuple(name for name, _, required in fields if required)
    else:
        node = memo[id(info)] = _leaf(info)
    return node  # type: ignore[no-any-return]


def _build(type_: Any) -> _Node:
    try:
        return _compile(mi.type_info(type_), {})
    except (TypeError, ValueError):  # not a type msgspec supports: its one message
        return _Node(type_)


_cached = functools.lru_cache(maxsize=256)(_build)


def _walker(type_: Any) -> _Node:
    """The walker of ``type_``, built once per (hashable) type."""
    try:
        return _cached(type_)
    except TypeError:  # an unhashable type: built each time
        return _build(type_)


def collect(value: object, type_: Any, *, max_errors: int = MAX_ERRORS) -> list[dict[str, Any]]:
    """Every reason why ``msgspec.convert(value, type_, strict=True)`` fails.

    Args:
        value: what the JSON or MessagePack decoder produced.
        type_: a Struct, TypedDict, dataclass or any type msgspec.convert supports.
        max_errors: errors listed at most; past it, one more item of code
            ``too_many`` ends the list (so it holds at most ``max_errors + 1``).

    Returns:
        ``{"path": [...], "code": ..., "msg": ...}`` dicts in document order
        (an object's missing fields after its present ones); ``[]`` exactly
        when the conversion would succeed. Codes: ``type``, ``missing``,
        ``unknown``, ``constraint``, ``value``, ``too_many``.

    Raises:
        ValueError: ``max_errors`` is below 1. Nothing else: a type msgspec
            does not support is one error with msgspec's message.
    """
    if max_errors < 1:
        raise ValueError(f"max_errors must be at least 1, not {max_errors}")
    errors = _walk(value, type_, max_errors)
    if not errors:  # what the walk does not model (a __post_init__): msgspec's word
        msg = _fails(value, type_)
        if msg is not None:
            errors.append({"path": [], "code": "value", "msg": _cut(msg, MAX_MESSAGE)})
    return errors


def _walk(value: object, type_: Any, max_errors: int) -> list[dict[str, Any]]:
    """The errors the walk finds, ``too_many`` last when there were more than ``max_errors``."""
    ctx = _Ctx(max_errors, [])
    try:
        _walker(type_).walk(value, ctx)
    except _FullError:
        del ctx.errors[max_errors:]
        more = f"more than {max_errors} errors: the first {max_errors} are listed"
        ctx.errors.append({"path": [], "code": "too_many", "msg": more})
    return ctx.errors

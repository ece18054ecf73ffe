"""Filters: composition, Fields, Ip, APIFactory, create() and all_of()."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncapy.core import Client, Handler, Packet
from asyncapy.filters import (
    AndFilter,
    Filter,
    Filters,
    FunctionFilter,
    NotFilter,
    OrFilter,
    all_of,
)
from asyncapy.util import APIKeyFactory


def client(address: Any = "127.0.0.1") -> Client:
    """A stand-in client: filters only read ``address``."""
    fake: Any = SimpleNamespace(address=address)
    return fake  # type: ignore[no-any-return]


def packet(fields: dict[str, Any] | None = None) -> Packet:
    return Packet({} if fields is None else fields)


class Const(Filter):
    """A filter with a fixed answer that counts its calls."""

    def __init__(self, answer: bool, name: str = "") -> None:
        self.answer = answer
        self.name = name or str(answer)
        self.calls = 0

    def check(self, client: Client, packet: Packet) -> bool:
        self.calls += 1
        return self.answer

    def __repr__(self) -> str:
        return f"Const({self.name})"


class Boom(Filter):
    """A filter that must never be checked."""

    def check(self, client: Client, packet: Packet) -> bool:
        raise AssertionError("this filter should have been short-circuited")

    def __repr__(self) -> str:
        return "Boom()"


C = client()
P = packet({"foo": "123"})


# --- base class and composition ---------------------------------------------------------


def test_filter_is_abstract() -> None:
    with pytest.raises(TypeError):
        Filter()  # type: ignore[abstract]


def test_filters_namespace_is_an_always_passing_filter() -> None:
    assert isinstance(Filters(), Filter)
    assert Filters().check(C, P) is True
    assert repr(Filters()) == "Filters()"
    for nested in (Filters.Fields, Filters.Ip, Filters.APIFactory):
        assert issubclass(nested, Filter)


@pytest.mark.parametrize(("a", "b"), [(True, True), (True, False), (False, True), (False, False)])
def test_and_or_truth_tables(a: bool, b: bool) -> None:
    assert (Const(a) & Const(b)).check(C, P) is (a and b)
    assert (Const(a) | Const(b)).check(C, P) is (a or b)
    assert (~Const(a)).check(C, P) is (not a)


def test_and_short_circuits_after_a_failure() -> None:
    first = Const(False)
    combined = first & Boom()
    assert combined.check(C, P) is False
    assert first.calls == 1


def test_or_short_circuits_after_a_success() -> None:
    assert (Const(True) | Boom()).check(C, P) is True


def test_and_checks_in_order_until_the_first_failure() -> None:
    a, b, c = Const(True), Const(False), Const(True)
    assert (a & b & c).check(C, P) is False
    assert (a.calls, b.calls, c.calls) == (1, 1, 0)


def test_or_checks_in_order_until_the_first_success() -> None:
    a, b, c = Const(False), Const(True), Const(False)
    assert (a | b | c).check(C, P) is True
    assert (a.calls, b.calls, c.calls) == (1, 1, 0)


def test_and_flattens() -> None:
    a, b, c, d = Const(True, "a"), Const(True, "b"), Const(True, "c"), Const(True, "d")
    combined = a & b & c
    assert isinstance(combined, AndFilter)
    assert combined.filters == (a, b, c)
    right = a & (b & c)
    assert isinstance(right, AndFilter)
    assert right.filters == (a, b, c)
    both = (a & b) & (c & d)
    assert isinstance(both, AndFilter)
    assert both.filters == (a, b, c, d)


def test_or_flattens() -> None:
    a, b, c = Const(True, "a"), Const(True, "b"), Const(True, "c")
    combined = a | b | c
    assert isinstance(combined, OrFilter)
    assert combined.filters == (a, b, c)
    assert repr(combined) == "(Const(a) | Const(b) | Const(c))"


def test_mixed_operators_do_not_flatten_across_kinds() -> None:
    a, b, c = Const(True, "a"), Const(False, "b"), Const(False, "c")
    combined = a & (b | c)
    assert isinstance(combined, AndFilter)
    assert len(combined.filters) == 2
    assert isinstance(combined.filters[1], OrFilter)
    assert combined.check(C, P) is False
    assert ((a & b) | c).check(C, P) is False
    assert (a | (b & c)).check(C, P) is True
    assert repr(a & (b | c)) == "(Const(a) & (Const(b) | Const(c)))"


def test_double_negation_gives_back_the_filter() -> None:
    a = Const(True)
    negated = ~a
    assert isinstance(negated, NotFilter)
    assert negated.filter is a
    assert ~negated is a
    assert ~~a is a
    assert repr(negated) == "~Const(True)"


def test_negation_of_a_combination() -> None:
    a, b = Const(True), Const(False)
    assert (~(a & b)).check(C, P) is True
    assert (~(a | b)).check(C, P) is False
    assert (~a & ~b).check(C, P) is False
    assert (~a | ~b).check(C, P) is True


def test_operators_refuse_non_filters() -> None:
    a = Const(True)
    with pytest.raises(TypeError):
        a & True  # type: ignore[operator]
    with pytest.raises(TypeError):
        a | (lambda c, p: True)  # type: ignore[operator]
    with pytest.raises(TypeError, match="Filter objects"):
        AndFilter(a, "nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Filter objects"):
        OrFilter(a, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="negate"):
        NotFilter(None)  # type: ignore[arg-type]


def test_empty_and_passes_and_empty_or_fails() -> None:
    assert AndFilter().check(C, P) is True
    assert OrFilter().check(C, P) is False


def test_combinations_see_dynamic_changes() -> None:
    ip = Filters.Ip("10.0.0.1")
    combined = ip & Filters.Fields(foo=None)
    assert combined.check(C, P) is False
    ip.add("127.0.0.1")
    assert combined.check(C, P) is True


# Random expression trees: every combination agrees with Python's own and/or/not.

Expr = tuple[Filter, Callable[[], bool]]


def _leaf(answer: bool) -> Expr:
    return Const(answer), lambda: answer


def _node(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    def combine(op: str, left: Expr, right: Expr) -> Expr:
        lf, lv = left
        rf, rv = right
        if op == "and":
            return lf & rf, lambda: lv() and rv()
        if op == "or":
            return lf | rf, lambda: lv() or rv()
        return ~lf, lambda: not lv()

    return st.builds(combine, st.sampled_from(["and", "or", "not"]), children, children)


expressions = st.recursive(st.booleans().map(_leaf), _node, max_leaves=12)


@settings(deadline=None, derandomize=True)
@given(expressions)
def test_combinations_agree_with_python_logic(expr: Expr) -> None:
    flt, expected = expr
    assert flt.check(C, P) is expected()
    assert (~flt).check(C, P) is (not expected())
    assert (~~flt).check(C, P) is expected()


@settings(deadline=None, derandomize=True)
@given(expressions, expressions)
def test_de_morgan(left: Expr, right: Expr) -> None:
    a, b = left[0], right[0]
    assert (~(a & b)).check(C, P) is (~a | ~b).check(C, P)
    assert (~(a | b)).check(C, P) is (~a & ~b).check(C, P)


# --- all_of -------------------------------------------------------------------------------


def test_all_of_empty_is_none() -> None:
    assert all_of([]) is None
    assert all_of(()) is None


def test_all_of_one_is_the_filter_itself() -> None:
    a = Const(True)
    assert all_of([a]) is a


def test_all_of_several_is_one_flat_and() -> None:
    a, b, c = Const(True), Const(False), Const(True)
    combined = all_of([a & b, c])
    assert isinstance(combined, AndFilter)
    assert combined.filters == (a, b, c)
    assert combined.check(C, P) is False
    assert c.calls == 0


def test_all_of_refuses_non_filters() -> None:
    with pytest.raises(TypeError):
        all_of(["nope"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        all_of([Const(True), "nope"])  # type: ignore[list-item]


def test_handler_combines_its_filters() -> None:
    async def handler(client: Client, packet: Packet) -> None:
        return None

    allowed = Handler(handler, [Filters.Ip("127.0.0.1"), Filters.Fields(foo=r"\d+")])
    assert allowed.check(C, P) is True
    assert allowed.check(client("10.0.0.1"), P) is False
    assert Handler(handler).check(C, P) is True


# --- create() -----------------------------------------------------------------------------


def test_create_from_a_function() -> None:
    def has_foo(client: Client, packet: Packet) -> bool:
        return "foo" in packet

    flt = Filters.create(has_foo)
    assert isinstance(flt, FunctionFilter)
    assert isinstance(flt, Filter)
    assert flt.check(C, P) is True
    assert flt.check(C, packet({"bar": 1})) is False
    assert repr(flt) == "Filters.create(test_create_from_a_function.<locals>.has_foo)"


def test_create_with_a_name_and_a_lambda() -> None:
    flt = Filters.create(lambda c, p: c.address.startswith("127."), name="loopback")
    assert repr(flt) == "Filters.create(loopback)"
    assert flt.check(C, P) is True
    assert flt.check(client("10.1.2.3"), P) is False


def test_create_gets_client_and_packet() -> None:
    seen: list[tuple[Any, Any]] = []

    def spy(c: Client, p: Packet) -> bool:
        seen.append((c, p))
        return True

    Filters.create(spy).check(C, P)
    assert seen == [(C, P)]


def test_create_coerces_truthy_results_to_bool() -> None:
    assert Filters.create(lambda c, p: p.get("foo")).check(C, P) is True
    assert Filters.create(lambda c, p: p.get("nope")).check(C, P) is False
    assert Filters.create(lambda c, p: 0).check(C, P) is False  # type: ignore[arg-type]


def test_create_with_a_callable_object() -> None:
    class Even:
        def __call__(self, client: Client, packet: Packet) -> bool:
            return int(packet["foo"]) % 2 == 0

    flt = Filters.create(Even(), name="even")
    assert flt.check(C, packet({"foo": "4"})) is True
    assert flt.check(C, packet({"foo": "5"})) is False


def test_create_takes_async_functions_and_callables() -> None:
    async def is_admin(client: Client, packet: Packet) -> bool:
        return bool(packet.get("admin") == "yes")

    class AsyncCheck:
        async def __call__(self, client: Client, packet: Packet) -> bool:
            return False

    flt = Filters.create(is_admin)
    assert flt.is_async
    assert isinstance(flt, FunctionFilter)
    assert asyncio.run(flt.check(C, packet({"admin": "yes"}))) is True  # type: ignore[arg-type]
    assert asyncio.run(flt.check(C, packet({}))) is False  # type: ignore[arg-type]
    other = Filters.create(AsyncCheck())
    assert other.is_async
    assert asyncio.run(other.check(C, P)) is False  # type: ignore[arg-type]
    assert not Filters.create(lambda c, p: True).is_async


def test_create_refuses_async_generators() -> None:
    async def agen(client: Client, packet: Packet) -> Any:
        yield True

    with pytest.raises(TypeError, match="async generator"):
        Filters.create(agen)


def test_create_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="callable"):
        Filters.create("not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="two positional arguments"):
        Filters.create(lambda c: True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="two positional arguments"):
        Filters.create(lambda c, p, extra: True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        Filters.create(lambda c, p: True, name=3)  # type: ignore[arg-type]


def test_create_refuses_an_awaitable_result_at_check_time() -> None:
    async def later() -> bool:
        return True

    flt = Filters.create(lambda c, p: later())
    with pytest.raises(TypeError, match="awaitable"):
        flt.check(C, P)


def test_create_propagates_exceptions() -> None:
    def broken(client: Client, packet: Packet) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Filters.create(broken).check(C, P)


# --- Fields -------------------------------------------------------------------------------


def test_fields_seed_example() -> None:
    flt = Filters.Fields(foo=r"\d+", bar=None)
    assert flt.check(C, packet({"foo": 12355, "bar": "anything"})) is True
    assert flt.check(C, packet({"foo": "12355", "bar": None})) is True
    assert flt.check(C, packet({"foo": "abc", "bar": "anything"})) is False
    assert flt.check(C, packet({"foo": 12355})) is False
    assert flt.check(C, packet({"bar": "anything"})) is False
    assert flt.check(C, packet()) is False


def test_fields_none_means_present_with_any_value() -> None:
    flt = Filters.Fields(token=None)
    values: tuple[Any, ...] = (None, "", 0, False, [], {}, "x")
    for value in values:
        assert flt.check(C, packet({"token": value})) is True
    assert flt.check(C, packet({"other": 1})) is False


def test_fields_presence_is_one_key_test_whatever_else_the_packet_has() -> None:
    flt = Filters.Fields(a=None, b=None, c=r"x")
    mixed: dict[Any, Any] = {"a": 1, "b": 2, "c": "x", 7: "int key", "z": None}
    assert flt.check(C, packet(mixed)) is True
    for missing in ("a", "b", "c"):
        fields = {"a": 1, "b": 2, "c": "x"}
        del fields[missing]
        assert flt.check(C, packet(fields)) is False, missing
    assert flt.check(C, packet({"a": 1, "b": 2, "c": "y"})) is False
    # A test's own mapping (no Packet) is checked the same way.
    assert flt.check(C, {"a": 1, "b": 2, "c": "x"}) is True  # type: ignore[arg-type]
    assert flt.check(C, {"a": 1, "c": "x"}) is False  # type: ignore[arg-type]


def test_fields_pattern_is_anchored_at_the_start_only() -> None:
    loose = Filters.Fields(foo=r"\d+")
    assert loose.check(C, packet({"foo": "12ab"})) is True
    assert loose.check(C, packet({"foo": "ab12"})) is False
    strict = Filters.Fields(foo=r"\d+\Z")
    assert strict.check(C, packet({"foo": "12ab"})) is False
    assert strict.check(C, packet({"foo": "12"})) is True


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        (r"\d+", 42, True),
        (r"-\d+", -7, True),
        (r"\d+\.\d+", 1.5, True),
        ("True", True, True),
        ("False", True, False),
        ("None", None, True),
        (r"\[1, 2\]", [1, 2], True),
        (r"\{'a': 1\}", {"a": 1}, True),
        (r"\d", [], False),
    ],
)
def test_fields_match_non_str_values_through_str(pattern: str, value: Any, expected: bool) -> None:
    assert Filters.Fields(v=pattern).check(C, packet({"v": value})) is expected


def test_fields_accept_compiled_patterns_with_their_flags() -> None:
    flt = Filters.Fields(cmd=re.compile(r"hello\Z", re.IGNORECASE))
    assert flt.check(C, packet({"cmd": "HeLLo"})) is True
    assert flt.check(C, packet({"cmd": "hello!"})) is False


def test_fields_with_several_patterns_need_all() -> None:
    flt = Filters.Fields(a=r"x", b=r"y", c=None)
    assert flt.check(C, packet({"a": "x", "b": "y", "c": 0})) is True
    assert flt.check(C, packet({"a": "x", "b": "n", "c": 0})) is False


def test_fields_with_no_fields_always_pass() -> None:
    assert Filters.Fields().check(C, packet()) is True


def test_fields_names_that_are_not_identifiers() -> None:
    flt = Filters.Fields(**{"api-key": None, "class": r"a"})
    assert flt.check(C, packet({"api-key": 1, "class": "abc"})) is True
    assert flt.check(C, packet({"api_key": 1, "class": "abc"})) is False


def test_fields_compile_once(monkeypatch: pytest.MonkeyPatch) -> None:
    flt = Filters.Fields(foo=r"\d+")
    calls: list[Any] = []
    monkeypatch.setattr(re, "compile", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(re, "match", lambda *a, **k: calls.append(a))
    for _ in range(3):
        assert flt.check(C, P) is True
    assert calls == []
    assert isinstance(flt.fields["foo"], re.Pattern)
    assert flt.fields == {"foo": flt.fields["foo"]}


def test_fields_invalid_regex_names_the_field() -> None:
    with pytest.raises(re.error, match="'broken'"):
        Filters.Fields(ok=r"\d", broken=r"(unclosed")


def test_fields_refuse_other_pattern_types() -> None:
    with pytest.raises(TypeError, match="'foo'"):
        Filters.Fields(foo=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        Filters.Fields(foo=re.compile(rb"\d"))  # type: ignore[arg-type]


def test_fields_repr() -> None:
    flt = Filters.Fields(foo=r"\d+", bar=None)
    assert repr(flt) == "Filters.Fields(foo='\\\\d+', bar=None)"


# --- Ip -----------------------------------------------------------------------------------


def test_ip_single_address() -> None:
    flt = Filters.Ip("127.0.0.1")
    assert flt.check(client("127.0.0.1"), P) is True
    assert flt.check(client("127.0.0.2"), P) is False
    assert flt.ips == ("127.0.0.1",)


def test_ip_list_of_addresses() -> None:
    flt = Filters.Ip(["127.0.0.1", "192.0.2.7"])
    assert flt.check(client("127.0.0.1"), P) is True
    assert flt.check(client("192.0.2.7"), P) is True
    assert flt.check(client("192.0.2.8"), P) is False


def test_ip_two_filters_never_both_pass_but_one_list_does() -> None:
    # The FAQ "Why don't my filter pass?": one Ip filter per address ANDs them.
    two = all_of([Filters.Ip("127.0.0.1"), Filters.Ip("192.0.2.7")])
    assert two is not None
    assert two.check(client("127.0.0.1"), P) is False
    one = Filters.Ip(["127.0.0.1", "192.0.2.7"])
    assert one.check(client("127.0.0.1"), P) is True


def test_ip_ipv6_addresses_in_any_spelling() -> None:
    flt = Filters.Ip(["::1", "2001:DB8:0:0::1"])
    assert flt.check(client("::1"), P) is True
    assert flt.check(client("0:0:0:0:0:0:0:1"), P) is True
    assert flt.check(client("2001:db8::1"), P) is True
    assert flt.check(client("2001:db8::2"), P) is False
    assert flt.ips == ("::1", "2001:db8::1")


def test_ip_cidr_networks() -> None:
    flt = Filters.Ip(["10.0.0.0/8", "fd00::/8"])
    assert flt.check(client("10.0.0.0"), P) is True
    assert flt.check(client("10.255.255.255"), P) is True
    assert flt.check(client("11.0.0.0"), P) is False
    assert flt.check(client("9.255.255.255"), P) is False
    assert flt.check(client("fd12:3456::1"), P) is True
    assert flt.check(client("fe80::1"), P) is False


def test_ip_single_address_networks_are_addresses() -> None:
    flt = Filters.Ip(["::1/128", "192.0.2.1/32"])
    assert flt.ips == ("::1", "192.0.2.1")
    assert flt.check(client("::1"), P) is True
    assert flt.check(client("192.0.2.1"), P) is True


def test_ip_networks_do_not_cross_versions() -> None:
    flt = Filters.Ip(["0.0.0.0/0"])
    assert flt.check(client("203.0.113.9"), P) is True
    assert flt.check(client("2001:db8::1"), P) is False
    flt6 = Filters.Ip(["::/1"])
    assert flt6.check(client("::2"), P) is True
    assert flt6.check(client("127.0.0.1"), P) is False


def test_ip_ipv4_mapped_peer_matches_the_ipv4_entry() -> None:
    flt = Filters.Ip("127.0.0.1")
    assert flt.check(client("::ffff:127.0.0.1"), P) is True
    assert flt.check(client("::ffff:7f00:1"), P) is True
    assert flt.check(client("::ffff:127.0.0.2"), P) is False
    nets = Filters.Ip("10.0.0.0/8")
    assert nets.check(client("::ffff:10.1.2.3"), P) is True


def test_ip_ipv4_mapped_entries_are_ipv4() -> None:
    flt = Filters.Ip(["::ffff:192.0.2.1", "::ffff:10.0.0.0/104"])
    assert flt.ips == ("192.0.2.1", "10.0.0.0/8")
    assert flt.check(client("192.0.2.1"), P) is True
    assert flt.check(client("10.9.9.9"), P) is True


def test_ip_zone_ids_are_ignored() -> None:
    flt = Filters.Ip("fe80::1")
    assert flt.check(client("fe80::1%eth0"), P) is True


@pytest.mark.parametrize("address", ["", "/run/app.sock", "localhost", "999.0.0.1", "::g", None, 7])
def test_ip_non_ip_client_addresses_do_not_match(address: Any) -> None:
    flt = Filters.Ip(["0.0.0.0/0", "::/0"])
    assert flt.check(client(address), P) is False


@pytest.mark.parametrize(
    "entry", ["", "localhost", "256.0.0.1", "1.2.3", "::g", "10.0.0.0/33", "10.0.0.1/8", "10/8/8"]
)
def test_ip_invalid_entries_raise_value_error_naming_them(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        Filters.Ip(entry)
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        Filters.Ip(["127.0.0.1", entry])


def test_ip_refuses_non_str_entries() -> None:
    with pytest.raises(TypeError):
        Filters.Ip([2130706433])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        Filters.Ip(None)  # type: ignore[arg-type]


def test_ip_empty_list_matches_nothing_until_filled() -> None:
    flt = Filters.Ip([])
    assert flt.check(C, P) is False
    flt.add("127.0.0.0/8")
    assert flt.check(C, P) is True


def test_ip_runtime_add_and_remove() -> None:
    flt = Filters.Ip("192.0.2.7")
    assert flt.check(C, P) is False
    flt.add("127.0.0.1")
    assert flt.check(C, P) is True
    flt.add("127.0.0.1")  # already there: no duplicate
    assert flt.ips == ("192.0.2.7", "127.0.0.1")
    flt.remove("::ffff:127.0.0.1")  # any spelling of the entry
    assert flt.check(C, P) is False
    assert tuple(flt.ips) == ("192.0.2.7",)  # a call: mypy keeps no narrowing


def test_ip_runtime_networks() -> None:
    flt = Filters.Ip([])
    flt.add("127.0.0.0/8")
    assert flt.check(client("127.1.2.3"), P) is True
    flt.remove("127.0.0.0/8")
    assert flt.check(client("127.1.2.3"), P) is False


def test_ip_remove_errors() -> None:
    flt = Filters.Ip("127.0.0.1")
    with pytest.raises(KeyError):
        flt.remove("127.0.0.2")
    with pytest.raises(KeyError):
        flt.remove("127.0.0.0/8")
    with pytest.raises(ValueError, match="'nope'"):
        flt.remove("nope")
    with pytest.raises(ValueError, match="'nope'"):
        flt.add("nope")
    assert flt.ips == ("127.0.0.1",)


def test_ip_ips_can_be_assigned() -> None:
    flt = Filters.Ip("127.0.0.1")
    flt.ips = ["10.0.0.0/8", "::1"]
    assert flt.ips == ("10.0.0.0/8", "::1")
    assert flt.check(C, P) is False
    assert flt.check(client("10.0.0.1"), P) is True
    flt.ips = "127.0.0.1"
    assert flt.ips == ("127.0.0.1",)
    with pytest.raises(ValueError, match="'bad'"):
        flt.ips = ["192.0.2.1", "bad"]
    assert flt.ips == ("127.0.0.1",)  # unchanged after a failed assignment
    assert flt.check(C, P) is True


def test_ip_repr() -> None:
    assert (
        repr(Filters.Ip(["127.0.0.1", "10.0.0.0/8"])) == "Filters.Ip(['127.0.0.1', '10.0.0.0/8'])"
    )


# --- APIFactory ---------------------------------------------------------------------------


def test_api_factory_issued_and_revoked_keys() -> None:
    factory = APIKeyFactory()
    flt = Filters.APIFactory(factory, "api_key")
    key = factory.issue({"user": "alice"})
    assert flt.check(C, packet({"api_key": key})) is True
    assert flt.check(C, packet({"api_key": "x" * 32})) is False
    assert flt.check(C, packet({"other": key})) is False
    new_key = factory.reissue(key)
    assert flt.check(C, packet({"api_key": key})) is False
    assert flt.check(C, packet({"api_key": new_key})) is True
    factory.revoke(new_key)
    assert flt.check(C, packet({"api_key": new_key})) is False


@pytest.mark.parametrize("value", [None, 123, 1.5, True, ["k"], {"k": 1}, b"key"])
def test_api_factory_non_str_values_do_not_pass(value: Any) -> None:
    factory = APIKeyFactory()
    factory.issue()
    assert Filters.APIFactory(factory, "api_key").check(C, packet({"api_key": value})) is False


def test_api_factory_uses_a_subclass_get() -> None:
    class Fixed(APIKeyFactory):
        def get(self, key: str) -> dict[Any, Any]:
            if key != "letmein!":
                raise KeyError(key)
            return {}

    flt = Filters.APIFactory(Fixed(), "key")
    assert flt.check(C, packet({"key": "letmein!"})) is True
    assert flt.check(C, packet({"key": "nope"})) is False


def test_api_factory_propagates_other_errors() -> None:
    class Down(APIKeyFactory):
        def get(self, key: str) -> dict[Any, Any]:
            raise ConnectionError("storage down")

    with pytest.raises(ConnectionError):
        Filters.APIFactory(Down(), "key").check(C, packet({"key": "k"}))


def test_api_factory_field_name_must_be_str() -> None:
    with pytest.raises(TypeError):
        Filters.APIFactory(APIKeyFactory(), 1)  # type: ignore[arg-type]


def test_api_factory_repr() -> None:
    factory = APIKeyFactory()
    factory.issue()
    text = repr(Filters.APIFactory(factory, "api_key"))
    assert text == "Filters.APIFactory(APIKeyFactory(size=32), 'api_key')"


# -- Fields: literal patterns are compared as strings, with re.match's meaning

from hypothesis import given as _given  # noqa: E402
from hypothesis import settings as _settings  # noqa: E402
from hypothesis import strategies as _st  # noqa: E402

from asyncapy.filters import _literal_matcher  # noqa: E402


@pytest.mark.parametrize(
    ("pattern", "fast"),
    [
        ("^echo$", True),
        ("echo", True),
        (r"^echo\Z", True),
        (r"\Aecho", True),
        ("", True),
        (r"\d+", False),
        ("ab.c", False),
        ("(?i)echo", False),
        ("^a|b$", False),
    ],
)
def test_literal_patterns_skip_the_regex_engine(pattern: str, fast: bool) -> None:
    assert (_literal_matcher(re.compile(pattern)) is not None) is fast


@_settings(max_examples=300, deadline=None, derandomize=True)
@_given(
    literal=_st.text(alphabet="ab\n.", max_size=4),
    start=_st.sampled_from(["", "^", r"\A"]),
    end=_st.sampled_from(["", "$", r"\Z"]),
    value=_st.text(alphabet="ab\n.", max_size=6),
)
def test_literal_matchers_agree_with_re_match(
    literal: str, start: str, end: str, value: str
) -> None:
    pattern = re.compile(start + re.escape(literal) + end)
    fast = _literal_matcher(pattern)
    assert fast is not None
    assert bool(fast(value)) == bool(pattern.match(value))
    fields = Filters.Fields(key=pattern)
    assert fields.check(None, Packet({"key": value})) == bool(pattern.match(value))  # type: ignore[arg-type]


# --- checker(): what a handler calls, taken at registration ---------------------------------


def test_fields_checker_answers_as_check_does() -> None:
    flt = Filters.Fields(method="^echo$", id=None, n=r"\d")
    fast = flt.checker()
    assert fast is not flt.check
    cases: list[dict[Any, Any]] = [
        {"method": "echo", "id": 1, "n": 2},
        {"method": "echo\n", "id": None, "n": "3x"},
        {"method": "echoo", "id": 1, "n": 2},
        {"method": "echo", "n": 2},
        {"method": "echo", "id": 1, "n": "x"},
        {},
    ]
    for fields in cases:
        assert fast(C, packet(fields)) is flt.check(C, packet(fields)), fields


def test_a_fields_subclass_that_overrides_check_keeps_it() -> None:
    class Never(Filters.Fields):
        def check(self, client: Client, packet: Packet) -> bool:
            return False

    flt = Never(method=None)
    assert flt.checker() == flt.check
    assert flt.checker()(C, packet({"method": 1})) is False


def test_a_dynamic_filter_stays_dynamic_through_its_checker() -> None:
    ips = Filters.Ip("10.0.0.1")
    combined = ips & Filters.Fields(a=None)
    peer = client("10.0.0.2")
    assert combined.check(peer, packet({"a": 1})) is False
    ips.add("10.0.0.2")
    assert combined.check(peer, packet({"a": 1})) is True
    assert combined.check(peer, packet({"b": 1})) is False

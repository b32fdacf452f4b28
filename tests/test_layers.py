import pytest

from facekeys.errors import InvalidArgument
from facekeys.layers import format_layers, parse_layers


@pytest.mark.parametrize("spec,expected", [
    ("1", (0,)), ("18", (17,)), ("1-4", (0, 1, 2, 3)), ("1,2,5", (0, 1, 4)), ("high:1", (0,)),
    ("high:4", (0, 1, 2, 3)), ("low:1", (17,)), ("low:3", (15, 16, 17)), ("all", tuple(range(18))),
    ("high:18", tuple(range(18))), ("low:18", tuple(range(18))), ("3-3", (2,)), (" 2 , 1-2 ", (0, 1)),
    ([3, 1], (0, 2)), (7, (6,)),
])
def test_parse(spec, expected):
    assert parse_layers(spec) == expected


@pytest.mark.parametrize("spec", ["", "0", "19", "5-2", "0-3", "1-19", "high:0", "high:19", "low:0", "mid:2",
                                  "a", "1,,2", "1.5", [], [0], [19], "high:x", True])
def test_rejects(spec):
    with pytest.raises(InvalidArgument):
        parse_layers(spec)


def test_paper_families_match_their_definition():
    for k in range(1, 19):
        assert parse_layers(f"high:{k}") == tuple(n - 1 for n in range(1, k + 1))
        assert parse_layers(f"low:{k}") == tuple(n - 1 for n in range(19 - k, 19))


@pytest.mark.parametrize("indices,text", [((0, 1, 2, 3), "1-4"), ((0, 2, 4, 5), "1,3,5-6"), ((17,), "18")])
def test_format_round_trip(indices, text):
    assert format_layers(indices) == text
    assert parse_layers(text) == indices


def test_long_specs_are_refused_without_echo():
    from facekeys.limits import MAX_LAYERS_SPEC_LEN, QUOTE_CHARS

    for spec in ("1," * MAX_LAYERS_SPEC_LEN, "x" * (1 << 20), [1] * (MAX_LAYERS_SPEC_LEN + 1)):
        with pytest.raises(InvalidArgument) as e:
            parse_layers(spec)
        assert len(str(e.value)) < 100 and "x" * 10 not in str(e.value) and "1,1," not in str(e.value)
    assert parse_layers("1," * (MAX_LAYERS_SPEC_LEN // 2 - 1) + "1") == (0,)  # at the limit: fine
    for spec in ("1-2,q" + "y" * 200, "mid" + "z" * 200 + ":2", "9" * 200, "high:" + "9" * 200):
        with pytest.raises(InvalidArgument) as e:  # a bounded prefix of the caller's text, then '...'
            parse_layers(spec)
        assert len(str(e.value)) < 2 * (QUOTE_CHARS + 5) + 80 and "..." in str(e.value), str(e.value)


def test_quote_is_bounded_and_ascii():
    from facekeys.limits import QUOTE_CHARS, clip, quote

    assert quote("high:4") == "'high:4'" and quote(7) == "7" and quote([1, 2]) == "[1, 2]"
    assert quote("a" * 1000) == repr("a" * QUOTE_CHARS) + "..."
    assert quote("\u00e9\x00\n") == "'\\xe9\\x00\\n'"  # no control or non-ASCII characters in a status
    assert len(quote(list(range(10_000)))) == QUOTE_CHARS + 3
    assert clip("m" * 10_000, 512) == "m" * 509 + "..." and clip("short") == "short"

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

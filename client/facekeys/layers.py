"""Layer subsets in the paper's numbering.

Paper layer n (1..18) is W+ index n-1; layer 1 is the coarsest style. Accepted forms:

- an explicit list: ``"1,2,5"`` or ``[1, 2, 5]``
- a range: ``"1-4"`` (inclusive)
- the two families the paper sweeps: ``"high:k"`` = layers 1..k, ``"low:k"`` = layers (19-k)..18
- ``"all"`` = 1..18

`parse_layers` returns sorted, de-duplicated 0-based W+ indices as a tuple.
"""

from __future__ import annotations

from typing import Iterable, Union

from .dims import N_LAYERS
from .errors import InvalidArgument
from .limits import MAX_LAYERS_SPEC_LEN, quote

LayerSpec = Union[str, int, Iterable[int]]


def _layer(n: int, spec) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgument(f"layer subset {quote(spec)}: layer {quote(n)} is not an integer")
    if not 1 <= n <= N_LAYERS:
        raise InvalidArgument(f"layer subset {quote(spec)}: layer {quote(n)} is outside 1..{N_LAYERS}")
    return n - 1


def _int(text: str, spec) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidArgument(f"layer subset {quote(spec)}: {quote(text.strip())} is not a layer number") from None


def parse_layers(spec: LayerSpec) -> tuple[int, ...]:
    """Parse a layer subset (paper numbering, 1-based) into 0-based W+ indices."""
    if isinstance(spec, str):
        if len(spec) > MAX_LAYERS_SPEC_LEN:
            raise InvalidArgument(f"layer subset is {len(spec)} characters long, the limit is {MAX_LAYERS_SPEC_LEN}")
        text = spec.strip().lower()
        if not text:
            raise InvalidArgument("layer subset is empty")
        if text == "all":
            return tuple(range(N_LAYERS))
        if ":" in text:
            family, _, k_text = text.partition(":")
            k = _int(k_text, spec)
            if not 1 <= k <= N_LAYERS:
                raise InvalidArgument(f"layer subset {quote(spec)}: k must be in 1..{N_LAYERS}, got {quote(k)}")
            if family == "high":
                return tuple(range(k))
            if family == "low":
                return tuple(range(N_LAYERS - k, N_LAYERS))
            raise InvalidArgument(f"layer subset {quote(spec)}: unknown family {quote(family)} (use high:k or low:k)")
        out: set[int] = set()
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise InvalidArgument(f"layer subset {quote(spec)} has an empty element")
            if "-" in part[1:]:
                a_text, _, b_text = part.partition("-")
                a, b = _int(a_text, spec), _int(b_text, spec)
                if a > b:
                    raise InvalidArgument(f"layer subset {quote(spec)}: range {quote(a)}-{quote(b)} is reversed")
                lo, hi = _layer(a, spec), _layer(b, spec)
                out.update(range(lo, hi + 1))
            else:
                out.add(_layer(_int(part, spec), spec))
        return tuple(sorted(out))
    if isinstance(spec, int) and not isinstance(spec, bool):
        return (_layer(spec, spec),)
    try:
        items = list(spec)
    except TypeError:
        raise InvalidArgument(f"layer subset {quote(spec)} is not a string or a list of layer numbers") from None
    if not items:
        raise InvalidArgument("layer subset is empty")
    if len(items) > MAX_LAYERS_SPEC_LEN:
        raise InvalidArgument(f"layer subset has {len(items)} elements, the limit is {MAX_LAYERS_SPEC_LEN}")
    return tuple(sorted({_layer(n.__index__() if hasattr(n, "__index__") else n, spec) for n in items}))


def format_layers(indices: Iterable[int]) -> str:
    """0-based W+ indices -> compact paper-numbered text, e.g. (0,1,2,3) -> '1-4'."""
    nums = sorted(i + 1 for i in indices)
    parts, start, prev = [], None, None
    for n in nums:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = n
    if start is not None:
        parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)

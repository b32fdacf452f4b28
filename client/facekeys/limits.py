"""The one place for the size limits of request fields, and for quoting a caller's input in an error.

Every string field, list and tensor a caller sends is checked against these (by `facekeys.records`,
`facekeys.layers` and `facekeys.wire`) before anything else looks at it, and error messages quote at most
`QUOTE_CHARS` characters of what the caller sent, so no answer grows with the input.
"""

from __future__ import annotations

# -- strings (characters) -------------------------------------------------------------------------
MAX_ID_LEN = 256  # identity_id, encoder_id, camera_id, video_id, track_id, filter ids, ListIdentities.after
MAX_METHOD_LEN = 64  # Obfuscation.method ("mosaic", "gaussian", "fill", ...)
MAX_ATTRIBUTE_KEY_LEN = 256
MAX_ATTRIBUTE_VALUE_LEN = 4096
MAX_LAYERS_SPEC_LEN = 256  # a layer subset as text ("1,2,5", "1-4", "high:4", ...) or as a list of numbers

# -- counts ---------------------------------------------------------------------------------------
MAX_ATTRIBUTES = 64  # attributes per key
MAX_BOXES = 1 << 20  # per-frame boxes per key (a track of 9.7 hours at 30 fps)
MAX_FILTER_IDS = 10_000  # camera_ids, and identity_ids, in one Match filter

# -- tensors --------------------------------------------------------------------------------------
MAX_TENSOR_NDIM = 4  # [18, 512], [1, 18, 512] or [Q, 18, 512]
MAX_TENSOR_DIM = 1 << 24  # each dimension; checked before the shape is multiplied out
MAX_LATENT_ABS = 65504.0  # |value| of a latent or probe (the largest float16: every accepted key fits the float16
#                           modes, and no sum of squares overflows float32; W+ latents lie within about +-50)

# -- error messages -------------------------------------------------------------------------------
QUOTE_CHARS = 64  # characters of a caller's input an error message may quote
MAX_DETAILS_CHARS = 512  # the status details of any error (a last bound, in the one exception -> status place)


def quote(value, limit: int = QUOTE_CHARS) -> str:
    """`value` for an error message: repr-like, ASCII only, at most `limit` characters of it, then '...'."""
    if isinstance(value, str):
        return ascii(value) if len(value) <= limit else ascii(value[:limit]) + "..."
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


def clip(message: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """A message cut to `limit` characters (marked with '...')."""
    return message if len(message) <= limit else message[:limit - 3] + "..."

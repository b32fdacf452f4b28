"""facekeys subpackage."""

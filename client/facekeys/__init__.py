"""facekeys: privacy-preserving face key store."""

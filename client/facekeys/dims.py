"""The one source of the key's dimensions: a feature key is a StyleGAN2 W+ latent of shape (18, 512)."""

N_LAYERS = 18  # W+ styles of a 1024x1024 StyleGAN2 generator (paper layers 1..18 = W+ index 0..17)
DIM = 512  # width of each style vector
KEY_SHAPE = (N_LAYERS, DIM)

"""Sample quality: streaming feature statistics and distances between distributions (FID, KID, energy distance),
and the networks that give the features. Nothing here imports the training loop."""

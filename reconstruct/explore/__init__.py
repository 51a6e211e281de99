"""The latent space for people: morph two cars, new cars from the prior, sliders, sharing, a map of my cars."""

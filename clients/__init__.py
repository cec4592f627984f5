"""fedforget's Flower ClientApp."""
